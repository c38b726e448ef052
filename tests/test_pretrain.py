"""BackbonePretrainModule: targets, loss wiring, masking, validation NME, a short real fit."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from lightning_fa.backbones import (
    CoordinateDetectorBackbone,
    HRNet,
    ModuleBackbone,
    StackedHourglass,
)
from lightning_fa.losses import AdaptiveWingLoss, HeatmapMSELoss
from lightning_fa.systems import BackbonePretrainModule
from tests.conftest import TINY_HRNET

# Steps called directly, outside a Trainer, log into the void on purpose.
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`"),
]


def _batch(batch: int = 4, size: int = 32, num_landmarks: int = 5) -> dict[str, torch.Tensor]:
    margin = 4.0
    landmarks = torch.rand(batch, num_landmarks, 2) * (size - 2 * margin) + margin
    return {
        "image": torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8),
        "landmarks": landmarks,
        "visible": torch.ones(batch, num_landmarks, dtype=torch.bool),
        "norm_size": torch.full((batch,), float(size)),
    }


def _gaussians(landmarks: torch.Tensor, stride: int, size: int, sigma: float) -> np.ndarray:
    """Targets from the formula, by loops: centre (x + 0.5) / stride - 0.5, peak 1."""
    points = landmarks.numpy()
    out = np.zeros((*points.shape[:2], size, size))
    for b in range(points.shape[0]):
        for k in range(points.shape[1]):
            cx, cy = (points[b, k] + 0.5) / stride - 0.5
            for y in range(size):
                for x in range(size):
                    out[b, k, y, x] = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    return out


def test_targets_follow_the_coordinate_convention() -> None:
    module = BackbonePretrainModule(HRNet(5, TINY_HRNET), sigma=1.5)
    landmarks = _batch(2)["landmarks"]
    target = module.targets(landmarks, 8, 8)
    np.testing.assert_allclose(target.numpy(), _gaussians(landmarks, 4, 8, 1.5), atol=1e-6)


def test_training_step_sums_the_loss_of_every_stack() -> None:
    backbone = StackedHourglass(5, num_stacks=2, width=8, depth=2)
    module = BackbonePretrainModule(backbone, loss=HeatmapMSELoss(), sigma=1.0)
    batch = _batch()
    loss = module.training_step(batch, 0)
    target = torch.from_numpy(_gaussians(batch["landmarks"], 4, 8, 1.0)).float()
    outputs = backbone.forward_all(backbone.preprocess(batch["image"]))
    expected = sum(F.mse_loss(out, target) for out in outputs)
    torch.testing.assert_close(loss, expected)


class _LearnableMaps(nn.Module):
    """Heatmaps that are a parameter, so their gradient is directly visible."""

    def __init__(self, num_landmarks: int, size: int) -> None:
        super().__init__()
        self.maps = nn.Parameter(torch.rand(1, num_landmarks, size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maps.expand(x.shape[0], -1, -1, -1)


def test_hidden_landmarks_get_no_gradient_and_no_loss() -> None:
    backbone = ModuleBackbone(_LearnableMaps(5, 8), 5, stride=4)
    module = BackbonePretrainModule(backbone, loss=HeatmapMSELoss())
    batch = _batch()
    batch["visible"][:, 2] = False
    loss = module.training_step(batch, 0)
    loss.backward()
    grad = backbone.net.maps.grad
    assert torch.all(grad[:, 2] == 0) and torch.all(grad[:, [0, 1, 3, 4]].abs().sum((-2, -1)) > 0)
    moved = dict(batch, landmarks=batch["landmarks"].clone())
    moved["landmarks"][:, 2] += 7.0  # a hidden label may be anything
    torch.testing.assert_close(module.training_step(moved, 0), loss)


def test_validation_nme_matches_a_known_offset() -> None:
    """Predictions one heatmap pixel (4 crop px) right of the labels, on grid-aligned points
    (crop 4k + 1.5 is heatmap pixel k, where argmax_quarter is exact): NME = 4 / norm_size."""
    grid = torch.tensor([[[5.5, 9.5], [13.5, 17.5], [21.5, 5.5]]])  # heatmap (1, 2), (3, 4), (5, 1)
    shift = torch.tensor([4.0, 0.0])
    backbone = CoordinateDetectorBackbone(lambda x: grid.expand(x.shape[0], -1, -1) + shift, 3)
    module = BackbonePretrainModule(backbone)
    batch = {
        "image": torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
        "landmarks": grid.expand(2, -1, -1).clone(),
        "norm_size": torch.tensor([20.0, 40.0]),
    }
    nme = module.validation_step(batch, 0)
    assert nme.item() == pytest.approx(100 * (4 / 20 + 4 / 40) / 2, abs=1e-4)
    torch.testing.assert_close(module.predict_landmarks(batch["image"]), batch["landmarks"] + shift)


def test_validation_with_eye_corner_normalisation() -> None:
    points = torch.tensor([[[5.5, 9.5], [25.5, 9.5]]])  # 20 px apart
    backbone = CoordinateDetectorBackbone(lambda x: points + torch.tensor([4.0, 0.0]), 2)
    module = BackbonePretrainModule(backbone, norm_indices=(0, 1))
    batch = {"image": torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "landmarks": points.clone()}
    assert module.validation_step(batch, 0).item() == pytest.approx(100 * 4 / 20, abs=1e-4)


def test_loss_names_and_validation() -> None:
    assert isinstance(BackbonePretrainModule(HRNet(5, TINY_HRNET)).loss, HeatmapMSELoss)
    assert isinstance(BackbonePretrainModule(HRNet(5, TINY_HRNET), "awing").loss, AdaptiveWingLoss)
    by_path = BackbonePretrainModule(HRNet(5, TINY_HRNET), "lightning_fa.losses.WingLoss")
    assert type(by_path.loss).__name__ == "WingLoss"  # a bare class path from the command line
    with pytest.raises(ValueError, match="loss must be one of"):
        BackbonePretrainModule(HRNet(5, TINY_HRNET), loss="torch.nn.MSELoss")
    with pytest.raises(ValueError, match="loss must be one of"):
        BackbonePretrainModule(HRNet(5, TINY_HRNET), loss="l1")
    with pytest.raises(ValueError, match="lacks `preprocess`"):
        BackbonePretrainModule(nn.Conv2d(3, 5, 1))
    with pytest.raises(ValueError, match="sigma"):
        BackbonePretrainModule(HRNet(5, TINY_HRNET), sigma=0.0)


def test_optimizer_and_schedule() -> None:
    module = BackbonePretrainModule(HRNet(5, TINY_HRNET), lr=0.01, lr_milestones=[3])
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 0.01
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.001)


class _Losses(pl.Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(outputs["loss"]))


@pytest.mark.parametrize("loss", ["mse", "awing"])
def test_short_fit_reduces_the_loss_and_logs_nme(loss: str) -> None:
    batch = _batch()
    samples = [{k: v[i] for k, v in batch.items()} for i in range(4)]
    loader = DataLoader(samples, batch_size=4)
    module = BackbonePretrainModule(HRNet(5, TINY_HRNET), loss=loss, lr=3e-3, sigma=1.0)
    losses = _Losses()
    trainer = pl.Trainer(
        max_steps=40,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[losses],
        check_val_every_n_epoch=20,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, loader, loader)
    assert losses.values[-1] < 0.3 * losses.values[0]
    assert "val/nme" in trainer.callback_metrics
    assert torch.isfinite(trainer.callback_metrics["val/nme"])
