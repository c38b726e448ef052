"""StableAlignmentModule: truncated BPTT, the frozen backbone, side-by-side metrics, checkpoints."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_fa.backbones import create_backbone
from lightning_fa.losses import JitterLoss
from lightning_fa.systems.finetune import StableAlignmentModule
from lightning_fa.temporal.convlstm import ConvLSTM

SIZE = 32  # input pixels; heatmaps 8x8 for the stride-4 backbone
L = 68


class RandomSequences(Dataset):
    """Sequence-mode samples (docs/architecture.md) with random frames and smooth landmarks."""

    def __init__(self, num: int, frames: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.frames = torch.randint(0, 256, (num, frames, 3, SIZE, SIZE), generator=generator)
        base = 6 + 20 * torch.rand(num, 1, L, 2, generator=generator)
        drift = torch.linspace(0, 1, frames).view(1, frames, 1, 1)
        self.landmarks = base + drift * torch.randn(num, 1, 1, 2, generator=generator)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        frames = self.frames.shape[1]
        affine = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(frames, 2, 3)
        # A similarity frame->crop map with scale 2, so frame metrics differ from crop ones.
        affine = affine * torch.tensor([[2.0, 2.0, 1.0], [2.0, 2.0, 1.0]])
        return {
            "frames": self.frames[i].to(torch.uint8),
            "landmarks": self.landmarks[i].float(),
            "affine": affine.clone(),
            "valid": torch.ones(frames, dtype=torch.bool),
            "norm_size": torch.full((frames,), 10.0),
            "video_id": torch.tensor(i),
            "frame_index": torch.arange(frames),
        }


def make_module(**kwargs) -> StableAlignmentModule:
    torch.manual_seed(0)
    backbone = create_backbone("hrnet_lite", L, input_size=(SIZE, SIZE))
    return StableAlignmentModule(backbone, ConvLSTM(L, hidden_channels=4, input_proj=4), **kwargs)


def trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return pl.Trainer(**{**defaults, **kwargs})


def loader(num: int = 2, frames: int = 7, batch_size: int = 2) -> DataLoader:
    return DataLoader(RandomSequences(num, frames), batch_size=batch_size)


def test_optimizer_steps_per_batch_is_ceil_t_over_k() -> None:
    module = make_module(tbptt_chunk=3)
    fit = trainer(max_steps=-1, limit_train_batches=1, max_epochs=1)
    fit.fit(module, train_dataloaders=loader(frames=7))
    assert fit.global_step == math.ceil(7 / 3)


def test_only_the_temporal_stage_changes_during_fit() -> None:
    module = make_module(lr=1e-2)
    backbone_before = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    temporal_before = {k: v.clone() for k, v in module.temporal.state_dict().items()}
    trainer(max_epochs=2).fit(module, train_dataloaders=loader(num=4))
    for key, value in module.backbone.state_dict().items():  # weights and BN buffers
        assert torch.equal(value, backbone_before[key]), key
    changed = [
        k for k, v in module.temporal.state_dict().items() if not torch.equal(v, temporal_before[k])
    ]
    assert changed, "the ConvLSTM did not train"
    assert not module.backbone.training, "the backbone must stay in eval mode"


def _chunk_gradients(module: StableAlignmentModule, batch: dict) -> list[list[torch.Tensor]]:
    """Gradients the module applies at each TBPTT step (lr 0: the weights never move)."""
    captured: list[list[torch.Tensor]] = []
    original = module.on_before_optimizer_step

    def capture(optimizer: torch.optim.Optimizer) -> None:
        captured.append([p.grad.clone() for p in module.temporal.parameters()])
        original(optimizer)

    module.on_before_optimizer_step = capture
    trainer(max_epochs=1, limit_train_batches=1).fit(
        module, train_dataloaders=DataLoader([batch], batch_size=1)
    )
    return captured


def _reference_gradients(
    module: StableAlignmentModule,
    batch: dict,
    chunk: int,
    detach_between: bool,
    burn_in: int = 0,
) -> list[list[torch.Tensor]]:
    """Literal TBPTT in plain autograd: per chunk loss, optional state detach between chunks;
    the first ``burn_in`` frames only advance the state and the previous frame."""
    frames, landmarks = batch["frames"][None], batch["landmarks"][None]
    raw = module.backbone_heatmaps(frames)
    loss_fn, state, prev, grads = module.loss, None, None, []
    if burn_in:
        target, target_coords = module.codec.encode(landmarks[:, :burn_in], *raw.shape[-2:])
        with torch.no_grad():
            out, state = module.temporal.forward_sequence(raw[:, :burn_in], None)
        _, last = loss_fn(out, target, target_coords, return_last_coords=True)
        prev = (last, target_coords[:, -1])
    for start in range(burn_in, frames.shape[1], chunk):
        sl = slice(start, start + chunk)
        target, target_coords = module.codec.encode(landmarks[:, sl], *raw.shape[-2:])
        out, state = module.temporal.forward_sequence(raw[:, sl], state)
        loss, last = loss_fn(
            out,
            target,
            target_coords,
            prev_pred_coords=None if prev is None else prev[0],
            prev_target_coords=None if prev is None else prev[1],
            return_last_coords=True,
        )
        params = list(module.temporal.parameters())
        grads.append(list(torch.autograd.grad(loss, params, retain_graph=not detach_between)))
        if detach_between:
            state = tuple((h.detach(), c.detach()) for h, c in state)
        prev = (last.detach(), target_coords[:, -1])
    return grads


def test_gradients_stop_at_chunk_boundaries_and_flow_within_chunks() -> None:
    torch.manual_seed(1)
    batch = {k: v for k, v in RandomSequences(1, 6, seed=3)[0].items()}
    module = make_module(tbptt_chunk=3, lr=0.0, gradient_clip_val=None)
    # A trained-looking head, so the recurrence actually shapes the output.
    for p in module.temporal.parameters():
        torch.nn.init.normal_(p, std=0.3)
    module.loss = JitterLoss(theta=1.0, threshold=0.0)

    applied = _chunk_gradients(module, batch)
    truncated = _reference_gradients(module, batch, chunk=3, detach_between=True)
    assert len(applied) == 2
    for got, want in zip(applied, truncated):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)

    # Control 1: without the detach, chunk 2 would receive gradient through chunk 1's frames.
    untruncated = _reference_gradients(module, batch, chunk=3, detach_between=False)
    assert any(not torch.allclose(g, w, atol=1e-6) for g, w in zip(applied[1], untruncated[1]))
    # Control 2: within a chunk gradients flow through time: detaching every frame differs.
    per_frame = _reference_gradients(module, batch, chunk=1, detach_between=True)
    summed = [sum(grads[i] for grads in per_frame[:3]) for i in range(len(per_frame[0]))]
    assert any(not torch.allclose(g, s, atol=1e-6) for g, s in zip(applied[0], summed))


def test_burn_in_frames_advance_the_state_and_train_nothing() -> None:
    batch = {k: v for k, v in RandomSequences(1, 7, seed=4)[0].items()}
    module = make_module(tbptt_chunk=2, burn_in=3, lr=0.0, gradient_clip_val=None)
    for p in module.temporal.parameters():
        torch.nn.init.normal_(p, std=0.3)
    module.loss = JitterLoss(theta=1.0, threshold=0.0)

    applied = _chunk_gradients(module, batch)
    assert len(applied) == 2  # frames 3..6 in chunks of 2; the first 3 frames take no step
    warm = _reference_gradients(module, batch, chunk=2, detach_between=True, burn_in=3)
    for got, want in zip(applied, warm):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    # Control: the same frames trained from a fresh state get other gradients.
    fresh = _reference_gradients(
        module,
        {k: v[3:] if k in ("frames", "landmarks") else v for k, v in batch.items()},
        chunk=2,
        detach_between=True,
    )
    assert any(not torch.allclose(g, f, atol=1e-6) for g, f in zip(applied[0], fresh[0]))


def test_burn_in_must_leave_frames_to_train() -> None:
    module = make_module(burn_in=7)
    with pytest.raises(
        ValueError, match=r"burn_in \(7\) must be shorter than the training windows \(7 frames\)"
    ):
        trainer(max_epochs=1, limit_train_batches=1).fit(module, train_dataloaders=loader(frames=7))


def _logged(trainer_: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer_.callback_metrics.items()}


def test_untrained_module_reports_exactly_the_backbone_metrics() -> None:
    module = make_module()
    evaluator = trainer()
    evaluator.validate(module, dataloaders=DataLoader(RandomSequences(3, 5), batch_size=1))
    metrics = _logged(evaluator)
    backbone = {k.replace("/backbone/", "/"): v for k, v in metrics.items() if "/backbone/" in k}
    finetuned = {k.replace("/finetuned/", "/"): v for k, v in metrics.items() if "/finetuned/" in k}
    assert backbone and backbone.keys() == finetuned.keys()
    for key, value in backbone.items():
        assert finetuned[key] == value or (math.isnan(value) and math.isnan(finetuned[key])), key


def test_video_metrics_are_in_frame_pixels() -> None:
    """MAV scales with the square of the crop->frame scale (the affine has scale 2)."""
    from lightning_fa.metrics.functional import mav

    module = make_module()
    evaluator = trainer()
    data = RandomSequences(2, 5)
    evaluator.validate(module, dataloaders=DataLoader(data, batch_size=1))
    predictions = []
    with torch.no_grad():
        for i in range(len(data)):
            coords, _, _ = zip(*[module(frame[None]) for frame in data[i]["frames"]])
            predictions.append(torch.cat(coords) / 2.0)  # crop -> frame: inverse of scale 2
    assert _logged(evaluator)["val/set0/backbone/mav"] == pytest.approx(
        float(mav(predictions)), rel=1e-4
    )


def test_checkpoint_round_trip_without_training_config(tmp_path) -> None:
    backbone_path = tmp_path / "backbone.pth"
    module = make_module()
    torch.save(module.backbone.state_dict(), backbone_path)
    module = StableAlignmentModule(
        create_backbone("hrnet_lite", L, input_size=(SIZE, SIZE)),
        ConvLSTM(L, hidden_channels=4, input_proj=4),
        backbone_checkpoint=str(backbone_path),
    )
    for p in module.temporal.parameters():
        torch.nn.init.normal_(p, std=0.1)
    fit = trainer(max_epochs=1, limit_train_batches=1, enable_checkpointing=False)
    fit.fit(module, train_dataloaders=loader())
    ckpt = tmp_path / "finetuned.ckpt"
    fit.save_checkpoint(ckpt)

    saved = torch.load(ckpt, weights_only=True)
    assert not any(k.startswith("backbone.") for k in saved["state_dict"]), (
        "weights stored by default"
    )
    reference = saved["backbone_reference"]
    assert reference["class_path"] == "lightning_fa.backbones.hrnet.HRNet"
    assert reference["init_args"]["config"] == "lite"
    assert len(reference["sha256"]) == 64

    # Evaluating it with a backbone that lacks those weights must not silently use random ones.
    unloaded = StableAlignmentModule(create_backbone("hrnet_lite", L, input_size=(SIZE, SIZE)))
    with pytest.raises(ValueError, match="backbone_checkpoint"):
        unloaded.on_load_checkpoint(torch.load(ckpt, weights_only=True))

    restored = StableAlignmentModule.from_checkpoint(ckpt)
    frames = RandomSequences(1, 1)[0]["frames"]
    with torch.no_grad():
        torch.testing.assert_close(restored(frames)[0], module.eval()(frames)[0])


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="tbptt_chunk"):
        make_module(tbptt_chunk=0)
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        StableAlignmentModule.from_checkpoint("missing.ckpt")


class WithCachedHeatmaps(Dataset):
    """The same samples, plus the frozen backbone's heatmaps precomputed by the data side."""

    def __init__(self, data: Dataset, module: StableAlignmentModule) -> None:
        self.data, self.module = data, module

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = dict(self.data[i])
        sample["backbone_heatmaps"] = self.module.backbone_heatmaps(sample["frames"][None])[0]
        return sample


def test_precomputed_backbone_heatmaps_train_like_the_backbone() -> None:
    data = RandomSequences(2, 5)
    plain, cached = make_module(lr=1e-2), make_module(lr=1e-2)
    trainer(max_epochs=1).fit(plain, train_dataloaders=DataLoader(data, batch_size=2))
    cached.backbone_heatmaps = _refuse_backbone  # only the cached heatmaps may be used
    trainer(max_epochs=1).fit(
        cached, train_dataloaders=DataLoader(WithCachedHeatmaps(data, plain), batch_size=2)
    )
    for key, value in plain.temporal.state_dict().items():
        torch.testing.assert_close(cached.temporal.state_dict()[key], value)


def _refuse_backbone(images: torch.Tensor) -> torch.Tensor:
    raise AssertionError("the backbone ran although heatmaps were precomputed")


def test_weightless_backbone_rebuilds_from_its_constructor(tmp_path) -> None:
    pytest.importorskip("dlib")
    from lightning_fa.backbones import DlibBackbone

    module = StableAlignmentModule(DlibBackbone(), ConvLSTM(L, hidden_channels=4, input_proj=4))
    torch.nn.init.normal_(module.temporal.proj.weight, std=0.1)
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "dlib.ckpt")
    restored = StableAlignmentModule.from_checkpoint(tmp_path / "dlib.ckpt")
    torch.testing.assert_close(restored.temporal.proj.weight, module.temporal.proj.weight)
    assert type(restored.backbone) is DlibBackbone


def test_predict_on_still_images_starts_each_from_the_initial_state() -> None:
    module = make_module().eval()
    for p in module.temporal.parameters():
        torch.nn.init.normal_(p, std=0.2)
    images = RandomSequences(3, 1)[0]["frames"][:1].expand(2, -1, -1, -1).clone()
    affine = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]).expand(2, 2, 3)
    with torch.no_grad():
        out = module.predict_step({"image": images, "affine": affine}, 0)["predictions"]
        coords, raw, _ = module(images, None)
    assert [item["video_id"] for item in out] == [-1, -1]
    for i, item in enumerate(out):  # identical images, no state carried: identical outputs
        torch.testing.assert_close(item["finetuned"][0], coords[i] / 2.0)
        torch.testing.assert_close(item["backbone"][0], raw[i] / 2.0)
