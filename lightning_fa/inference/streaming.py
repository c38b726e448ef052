"""Batched streaming inference: many video streams through one model, one state per stream.

A server with hundreds of camera streams (or a tracker with several faces) steps every stream
that has a new frame in one batched forward: the backbone, the temporal-stage step and PDC run once for
all of them, and each stream's state rows are gathered before the step and scattered back after.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_fa.inference.state import (
    flatten_state,
    gather_rows,
    scatter_rows,
    state_sizes,
    unflatten_state,
)
from lightning_fa.inference.step import FrameOutput, FrameStep
from lightning_fa.systems.finetune import StableAlignmentModule

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class CompiledStep:
    """A per-frame step under `torch.compile(fullgraph=True, dynamic=False)`, with an eager
    fallback; build it with `compile_step`.

    fullgraph: a graph break in the per-frame step is a host sync on the GPU, so it counts as a
    failure here rather than a silently slower step. Static shapes: keep the batch size fixed
    (each new size compiles once more). When compiling fails (no C++ toolchain, an op the
    backend lacks, a graph break), one warning line says why and the step runs eagerly from
    then on. The step must be a pure function of its inputs (state in, state out), so that a
    failed compiled call can be repeated eagerly.
    """

    def __init__(self, step: Callable, mode: str | None = None, backend: str = "inductor") -> None:
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {COMPILE_MODES}; got {mode!r}")
        self.eager = step
        self.compiled: Callable | None = None
        options = {} if mode is None else {"mode": mode}
        try:
            self.compiled = torch.compile(
                step, fullgraph=True, dynamic=False, backend=backend, **options
            )
        except Exception as error:  # no compiler toolchain / unsupported platform
            self._fall_back(error)

    def _fall_back(self, error: Exception) -> None:
        lines = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
        warnings.warn(f"torch.compile unavailable, running eagerly: {reason}", stacklevel=3)
        self.compiled = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as error:
            # Bad input fails eagerly too and raises its own error here, leaving compilation on;
            # only a step that then runs means that compiling it was what failed.
            result = self.eager(*args, **kwargs)
            self._fall_back(error)
            return result


def compile_step(
    step: Callable, mode: str | None = None, backend: str = "inductor"
) -> CompiledStep:
    """`step` (e.g. `lightning_fa.inference.onnx.StreamingStep`, or `MultiStreamInference`'s batched
    step with bf16 autocast and channels_last) compiled whole, with an eager fallback
    (`CompiledStep`). ``mode``: torch.compile's; "reduce-overhead" adds CUDA graphs, whose
    outputs are overwritten by the next call (copy what you keep). ``backend``: "inductor", or
    "aot_eager" to check for graph breaks without generating code."""
    return CompiledStep(step, mode=mode, backend=backend)


class MultiStreamInference:
    """Steps any subset of many streams in one batch; a stream starts fresh on first sight.

    Args:
        module: a fine-tuned `StableAlignmentModule` (frozen backbone + temporal stage + decoder).
        precision: "32" or "bf16" (autocast on the module's device; state and decode in fp32).
        channels_last: run the backbone on NHWC memory (faster convolutions on GPU and recent CPUs).
        compile: compile the whole per-frame step (`compile_step`: static shapes, so keep the
            batch size fixed; eager fallback).
        compile_backend: torch.compile's backend ("aot_eager" checks for graph breaks
            without generating code).
    """

    def __init__(
        self,
        module: StableAlignmentModule,
        precision: str = "32",
        channels_last: bool = False,
        compile: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        frame_step = FrameStep(
            module.backbone,
            module.temporal,
            module.codec,
            channels_last=channels_last,
            precision=precision,
        )
        self.module = module.eval()
        self.device = next(module.temporal.parameters()).device
        self.precision = precision
        self.channels_last = channels_last
        if channels_last:
            self.module.backbone.to(memory_format=torch.channels_last)
        self._step: Callable[..., FrameOutput] = (
            compile_step(frame_step, backend=compile_backend) if compile else frame_step
        )
        # Each stream's flat state (batch 1 in every tensor).
        self._states: dict[Hashable, list[Tensor]] = {}

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
        rows = [self._states.get(i, flatten_state(fresh)) for i in stream_ids]
        state = unflatten_state(gather_rows(rows), state_sizes(fresh))
        out = self._step(frames, state)
        new_rows = scatter_rows(flatten_state(out.state), len(stream_ids))
        self._states.update(zip(stream_ids, new_rows))
        return out.coords, out.raw_coords

    def end(self, stream_id: Hashable) -> None:
        """Forget a stream (its next frame starts a new sequence)."""
        self._states.pop(stream_id, None)

    @property
    def active_streams(self) -> list[Hashable]:
        return list(self._states)
