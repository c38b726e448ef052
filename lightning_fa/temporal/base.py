"""The protocol every temporal stage implements, and the state it carries.

A stage maps the frozen backbone's heatmaps o_t (B, L, h, w) to stabilised heatmaps s_t of the
same shape. Its state is passed in and returned, never stored on the module, so that truncated
BPTT (`detach_state`), streaming inference, the tracker and export (jit.trace / torch.export /
ONNX, the state as plain tensors in and out) all work without knowing what the stage is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

State = tuple[tuple[Tensor, ...], ...]
"""A tuple of groups of tensors (a stage's `state_names` name them, flattened in order). Every
tensor is batch first and all zeros means a new sequence."""

StateLayout = list[dict[str, tuple[tuple[int, ...], str]]]
"""Per state group: tensor name -> (expected shape, its layout in words)."""


def detach_state(state: State | None) -> State | None:
    """Cut the autograd graph behind ``state`` (truncated BPTT); ``None`` stays ``None``."""
    if state is None:
        return None
    return tuple(tuple(tensor.detach() for tensor in group) for group in state)


class TemporalStage(nn.Module, ABC):
    """Base class of temporal stages: ``forward(heatmaps, state)``, ``forward_sequence``,
    ``init_state``, ``state_names`` and ``config`` (the constructor arguments, which checkpoints
    record beside the stage's registered name to rebuild it).

    Subclasses set ``num_landmarks`` and ``config`` and describe their state in
    ``_state_layout``; the shape checks of heatmaps and state live here.
    """

    # Whether every landmark's map is processed on its own (so the stage can train on
    # per-landmark heatmap patches, and permuting landmarks permutes the outputs).
    landmark_wise: bool = False
    num_landmarks: int
    config: dict[str, Any]

    detach_state = staticmethod(detach_state)

    def init_state(
        self,
        batch: int,
        height: int,
        width: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> State:
        """Zero state for a new sequence (what ``state=None`` means), for exporters that need
        the state as explicit tensors: zeros in every tensor of `_state_layout`."""
        groups, _ = self._state_layout(batch, height, width)
        return tuple(
            tuple(torch.zeros(shape, device=device, dtype=dtype) for shape, _ in group.values())
            for group in groups
        )

    @abstractmethod
    def state_names(self) -> list[str]:
        """Names of the flattened state tensors, in order (the exported graph's inputs)."""

    @abstractmethod
    def _state_layout(self, batch: int, height: int, width: int) -> tuple[StateLayout, str]:
        """The expected state groups and how to describe them in an error message."""

    @abstractmethod
    def forward(self, heatmaps: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """One step: heatmaps o_t (B, L, h, w), state or ``None`` (new sequence) ->
        (stabilised s_t (B, L, h, w), new state)."""

    @abstractmethod
    def forward_sequence(
        self, heatmaps: Tensor, state: State | None = None
    ) -> tuple[Tensor, State]:
        """A clip: heatmaps (B, T, L, h, w) -> (outputs (B, T, L, h, w), state after the last
        frame)."""

    def _check_heatmaps(self, heatmaps: Tensor, ndim: int, layout: str) -> None:
        # A trace fixes the shapes anyway; checking them there only emits TracerWarnings.
        if torch.jit.is_tracing():
            return
        if heatmaps.ndim != ndim or heatmaps.shape[-3] != self.num_landmarks:
            raise ValueError(
                f"heatmaps must be {layout} with L={self.num_landmarks}, "
                f"got shape {tuple(heatmaps.shape)}"
            )

    def _check_sequence(self, heatmaps: Tensor) -> None:
        self._check_heatmaps(heatmaps, 5, "(B, T, L, h, w)")
        if heatmaps.shape[1] == 0:
            raise ValueError("heatmaps must hold at least one frame (T >= 1), got T=0")

    def _check_state(self, state: State, batch: int, height: int, width: int) -> None:
        if torch.jit.is_tracing():
            return
        groups, what = self._state_layout(batch, height, width)
        if not isinstance(state, (tuple, list)) or len(state) != len(groups):
            raise ValueError(
                f"state must be a tuple of {what}, got {type(state).__name__}"
                f" of length {len(state) if isinstance(state, (tuple, list)) else 'n/a'}"
            )
        for k, (group, named) in enumerate(zip(state, groups)):
            if len(group) != len(named):
                raise ValueError(
                    f"state[{k}] must hold {len(named)} tensors ({', '.join(named)}), "
                    f"got {len(group)}"
                )
            for (name, (expected, layout)), tensor in zip(named.items(), group):
                if tuple(tensor.shape) != expected:
                    raise ValueError(
                        f"state[{k}] {name} must have shape {expected} ({layout}), "
                        f"got {tuple(tensor.shape)}"
                    )

    def _start(self, heatmaps: Tensor, state: State | None) -> State:
        """The given state after checking it, or zeros for a new sequence. Zeros take the dtype
        of the heatmaps, not of a (possibly bf16 autocast) squeezed input, so that the cell
        memory keeps full precision."""
        batch, height, width = heatmaps.shape[0], heatmaps.shape[-2], heatmaps.shape[-1]
        if state is None:
            return self.init_state(batch, height, width, heatmaps.device, heatmaps.dtype)
        self._check_state(state, batch, height, width)
        return state


class StepwiseStage(TemporalStage):
    """A stage whose clip is its frames one after another: subclasses write ``_step`` (one frame
    on a checked state) and inherit ``forward`` and ``forward_sequence``."""

    @abstractmethod
    def _step(self, heatmaps: Tensor, state: State) -> tuple[Tensor, State]:
        """One frame (B, L, h, w) on a checked state -> (output, new state)."""

    def forward(self, heatmaps: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        self._check_heatmaps(heatmaps, 4, "(B, L, h, w)")
        return self._step(heatmaps, self._start(heatmaps, state))

    def forward_sequence(
        self, heatmaps: Tensor, state: State | None = None
    ) -> tuple[Tensor, State]:
        self._check_sequence(heatmaps)
        state = self._start(heatmaps, state)
        outs = []
        for t in range(heatmaps.shape[1]):
            out, state = self._step(heatmaps[:, t], state)
            outs.append(out)
        return torch.stack(outs, dim=1), state
