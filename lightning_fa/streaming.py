"""Batched streaming inference: many video streams through one model, one state per stream.

A server with hundreds of camera streams (or a tracker with several faces) steps every stream
that has a new frame in one batched forward: the backbone, the ConvLSTM step and PDC run once for
all of them, and each stream's state rows are gathered before the step and scattered back after.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from contextlib import nullcontext

import torch
from torch import Tensor

from lightning_fa.systems.finetune import StableAlignmentModule
from lightning_fa.temporal.convlstm import State


def maybe_compile(function, enabled: bool):
    """`torch.compile(function)` when asked and available; the eager function otherwise."""
    if not enabled:
        return function
    try:
        return torch.compile(function, dynamic=False)
    except Exception as error:  # no compiler toolchain / unsupported platform
        import warnings

        warnings.warn(f"torch.compile unavailable, running eagerly: {error}", stacklevel=2)
        return function


class MultiStreamInference:
    """Steps any subset of many streams in one batch; a stream starts fresh on first sight.

    Args:
        module: a fine-tuned `StableAlignmentModule` (frozen backbone + ConvLSTM + decoder).
        precision: "32" or "bf16" (autocast on the module's device; state and decode in fp32).
        channels_last: run the backbone on NHWC memory (faster convolutions on GPU and recent CPUs).
        compile: `torch.compile` the per-frame step (static shapes: keep the batch size fixed).
    """

    def __init__(
        self,
        module: StableAlignmentModule,
        precision: str = "32",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        if precision not in ("32", "bf16"):
            raise ValueError(f"precision must be '32' or 'bf16', got {precision!r}")
        self.module = module.eval()
        self.device = next(module.temporal.parameters()).device
        self.precision = precision
        self.channels_last = channels_last
        if channels_last:
            self.module.backbone.to(memory_format=torch.channels_last)
        self._step = maybe_compile(self._forward, compile)
        self._states: dict[Hashable, State] = {}

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _forward(self, images: Tensor, state: State) -> tuple[Tensor, Tensor, State]:
        with self._autocast():
            x = self.module.backbone.preprocess(images)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            raw = self.module.backbone(x).float()
            stabilised, state = self.module.temporal(raw, state)
        return self.module.decode(stabilised), self.module.decode(raw), state

    @torch.inference_mode()
    def step(self, frames: Tensor, stream_ids: Sequence[Hashable]) -> tuple[Tensor, Tensor]:
        """frames (N, 3, H, W) uint8 crops of N distinct streams -> (stabilised, raw) (N, L, 2)
        in crop pixels. Streams absent from this call keep their state untouched."""
        if frames.ndim != 4 or frames.shape[0] != len(stream_ids):
            raise ValueError(
                f"expected frames (N, 3, H, W) with N = len(stream_ids) = {len(stream_ids)}, "
                f"got {tuple(frames.shape)}"
            )
        if len(set(stream_ids)) != len(stream_ids):
            raise ValueError("each stream may appear once per step")
        frames = frames.to(self.device, non_blocking=True)
        height, width = (s // self.module.backbone.stride for s in frames.shape[-2:])
        fresh = self.module.temporal.init_state(1, height, width, self.device)
        rows = [self._states.get(i, fresh) for i in stream_ids]
        state = tuple(
            tuple(torch.cat([r[k][j] for r in rows]) for j in range(len(group)))
            for k, group in enumerate(fresh)
        )
        coords, raw, state = self._step(frames, state)
        for n, stream in enumerate(stream_ids):
            self._states[stream] = tuple(tuple(t[n : n + 1] for t in group) for group in state)
        return coords, raw

    def end(self, stream_id: Hashable) -> None:
        """Forget a stream (its next frame starts a new sequence)."""
        self._states.pop(stream_id, None)

    @property
    def active_streams(self) -> list[Hashable]:
        return list(self._states)
