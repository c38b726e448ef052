"""The per-frame step, written once: frozen backbone -> temporal stage -> decode.

The LightningModule's streaming `forward`, the exported ONNX step, the batched multi-stream
server, the tracker (through the exported / PyTorch step) and the benchmarks all run this.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lightning_fa.heatmaps import HeatmapCodec
from lightning_fa.temporal import State

PRECISIONS = ("32", "bf16")


class FrameOutput(NamedTuple):
    """One step's result for B streams."""

    coords: Tensor  # (B, L, 2) crop pixels, decoded from the stabilised heatmaps
    raw_coords: Tensor  # (B, L, 2) crop pixels, the backbone alone
    raw_heatmaps: Tensor  # (B, L, h, w) float32, the backbone's maps
    state: State  # the stage's new state


class FrameStep:
    """Runs one frame of B streams: `step(images, state) -> FrameOutput`.

    A plain callable over modules owned elsewhere (no parameters of its own, so it adds nothing
    to a checkpoint), pure in its inputs (state in, state out) so that `compile_step` may
    compile it and repeat a failed compiled call eagerly.

    Args:
        backbone: a heatmap backbone (`preprocess` uint8 RGB, then `forward`).
        temporal: the stage, `temporal(heatmaps, state | None) -> (heatmaps, state)`.
        codec: how heatmaps become crop-pixel coordinates.
        channels_last: feed the backbone NHWC memory.
        precision: "32", or "bf16" (backbone and stage under autocast; decoding in float32).
    """

    def __init__(
        self,
        backbone: nn.Module,
        temporal: nn.Module,
        codec: HeatmapCodec,
        channels_last: bool = False,
        precision: str = "32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be '32' or 'bf16', got {precision!r}")
        self.backbone = backbone
        self.temporal = temporal
        self.codec = codec
        self.channels_last = channels_last
        self.precision = precision

    def backbone_heatmaps(self, images: Tensor) -> Tensor:
        """uint8 RGB (..., 3, H, W) -> float32 heatmaps (..., L, h, w)."""
        lead = images.shape[:-3]
        batched = images if len(lead) == 1 else images.flatten(0, len(lead) - 1)
        x = self.backbone.preprocess(batched)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        heatmaps = self.backbone(x).float()
        return heatmaps if len(lead) == 1 else heatmaps.unflatten(0, lead)

    def decode(self, heatmaps: Tensor) -> Tensor:
        """Heatmaps (..., L, h, w) -> crop-pixel coordinates (..., L, 2), decoded in float32."""
        return self.codec.decode(heatmaps.float())

    def _autocast(self, device_type: str):
        if self.precision == "bf16":
            return torch.autocast(device_type, dtype=torch.bfloat16)
        return nullcontext()

    def __call__(self, images: Tensor, state: State | None) -> FrameOutput:
        """images (B, 3, H, W) uint8 RGB crops, the stage's state (None: new sequences)."""
        with self._autocast(images.device.type):
            raw = self.backbone_heatmaps(images)
            stabilised, state = self.temporal(raw, state)
        return FrameOutput(self.decode(stabilised), self.decode(raw), raw, state)
