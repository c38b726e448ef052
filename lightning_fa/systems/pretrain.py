"""Train a heatmap backbone from scratch on image batches (before the temporal fine-tuning)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lightning_fa.backbones import Backbone
from lightning_fa.heatmaps import HeatmapCodec
from lightning_fa.losses import (
    AdaptiveWingLoss,
    GemanMcClureLoss,
    HeatmapMSELoss,
    PixelLoss,
    WingLoss,
)
from lightning_fa.metrics.functional import nme

# Loss names -> pixel losses of lightning_fa.losses, called as loss(pred, target) -> scalar.
LOSSES: dict[str, type[PixelLoss]] = {"mse": HeatmapMSELoss, "awing": AdaptiveWingLoss}
# A bare class path on the command line (`--model.loss lightning_fa.losses.WingLoss`) arrives as
# a string: these are the ones it may name, with their default arguments.
LOSS_CLASS_PATHS: dict[str, type[PixelLoss]] = {
    f"lightning_fa.losses.{cls.__name__}": cls
    for cls in (HeatmapMSELoss, WingLoss, AdaptiveWingLoss, GemanMcClureLoss)
}


def build_loss(loss: str | nn.Module) -> nn.Module:
    """A loss module by name (see LOSSES) or class path, or the given module itself."""
    if isinstance(loss, nn.Module):
        return loss
    known = {**LOSSES, **LOSS_CLASS_PATHS}
    if loss not in known:
        raise ValueError(
            f"loss must be one of {sorted(known)} or a loss module (a lightning_fa.losses."
            f"PixelLoss), got {loss!r}"
        )
    return known[loss]()


class BackbonePretrainModule(pl.LightningModule):
    """Supervise a backbone's heatmaps with Gaussians at the labelled landmarks.

    Batches follow the image-mode contract: `image` uint8 (B, 3, H, W), `landmarks` (B, L, 2)
    crop pixels, optional `visible` (B, L) and `norm_size` (B,). Every output of
    `backbone.forward_all` (stacks / stages) is supervised and the losses are summed. Validation
    logs NME (%) of the last output decoded with `decoder`.
    """

    def __init__(
        self,
        backbone: Backbone,
        loss: str | PixelLoss = "mse",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        sigma: float = 1.5,
        lr_milestones: list[int] | None = None,
        lr_gamma: float = 0.1,
        decoder: str = "argmax_quarter",
        norm_indices: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        for attribute in ("preprocess", "stride", "num_landmarks"):
            if not hasattr(backbone, attribute):
                raise ValueError(
                    f"backbone {type(backbone).__name__} lacks `{attribute}`; "
                    "use a lightning_fa.backbones.Backbone (or wrap it in ModuleBackbone)"
                )
        if not sigma > 0:
            raise ValueError(f"sigma must be positive (heatmap pixels), got {sigma}")
        self.save_hyperparameters(ignore=["backbone", "loss"])
        self.hparams["loss"] = loss if isinstance(loss, str) else type(loss).__name__
        self.backbone = backbone
        self.loss = build_loss(loss)
        self.codec = HeatmapCodec(stride=backbone.stride, sigma=sigma, decoder=decoder)

    def forward(self, images: Tensor) -> Tensor:
        """uint8 / [0, 1] RGB images -> final heatmaps."""
        return self.backbone(self.backbone.preprocess(images))

    def _outputs(self, images: Tensor) -> list[Tensor]:
        x = self.backbone.preprocess(images)
        if hasattr(self.backbone, "forward_all"):
            return list(self.backbone.forward_all(x))
        return [self.backbone(x)]

    def targets(self, landmarks: Tensor, height: int, width: int) -> Tensor:
        """Gaussian heatmaps (B, L, height, width) at crop-pixel landmarks (B, L, 2)."""
        return self.codec.encode(landmarks.float(), height, width)[0]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        outputs = self._outputs(batch["image"])
        target = self.targets(batch["landmarks"], *outputs[-1].shape[-2:])
        visible = batch.get("visible")
        if visible is not None:
            # Hidden landmarks get no gradient: their prediction and target are both zeroed.
            mask = visible[..., None, None].to(target.dtype)
            target = target * mask
            outputs = [out * mask for out in outputs]
        loss = sum(self.loss(out, target) for out in outputs)
        self.log("train/loss", loss, prog_bar=True, batch_size=target.shape[0])
        return loss

    def predict_landmarks(self, images: Tensor) -> Tensor:
        """Images -> (B, L, 2) crop-pixel landmarks decoded from the final heatmaps."""
        return self.codec.decode(self(images))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        landmarks = batch["landmarks"].float()
        pred = self.predict_landmarks(batch["image"])
        norm_size = batch.get("norm_size")
        per_sample = nme(
            pred.to(landmarks.dtype),
            landmarks,
            norm_indices=self.hparams.norm_indices,
            box_size=None if self.hparams.norm_indices is not None else norm_size,
            visible=batch.get("visible"),
        )
        value = 100.0 * per_sample.mean()
        self.log("val/nme", value, prog_bar=True, batch_size=landmarks.shape[0], sync_dist=True)
        return value

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(
            self.backbone.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        if not self.hparams.lr_milestones:
            return optimizer
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(self.hparams.lr_milestones), gamma=self.hparams.lr_gamma
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
