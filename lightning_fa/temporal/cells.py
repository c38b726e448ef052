"""The ConvLSTM cell, the stack of cells every ConvLSTM stage runs on explicit state, and the
residual read-out the paper's stage and the landmark-wise one share."""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor, nn

from lightning_fa.checks import check_ints
from lightning_fa.temporal.base import State, StateLayout, TemporalStage

LayerState = tuple[Tensor, Tensor]
"""(h, c) of one layer, each (B, hidden, h, w)."""


class ConvLSTMCell(nn.Module):
    """One ConvLSTM cell (Shi et al. 2015): the gates (i, f, g, o) come from a single fused
    convolution over ``concat(x, h_prev)``; optional per-channel peepholes (i and f see c_{t-1},
    o sees c_t)."""

    def __init__(
        self, in_channels: int, hidden_channels: int, kernel_size: int = 3, peephole: bool = False
    ) -> None:
        super().__init__()
        check_ints(
            in_channels=in_channels, hidden_channels=hidden_channels, kernel_size=kernel_size
        )
        if kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be odd so that padding k//2 keeps the size, got {kernel_size}"
            )
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(
            in_channels + hidden_channels,
            4 * hidden_channels,
            kernel_size,
            padding=kernel_size // 2,
        )
        with torch.no_grad():
            # Gate order (i, f, g, o): a forget bias of 1 keeps the memory open at the start.
            self.gates.bias[hidden_channels : 2 * hidden_channels].fill_(1.0)
        self.peephole = peephole
        if peephole:
            shape = (1, hidden_channels, 1, 1)
            self.peephole_i = nn.Parameter(torch.zeros(shape))
            self.peephole_f = nn.Parameter(torch.zeros(shape))
            self.peephole_o = nn.Parameter(torch.zeros(shape))

    def init_state(
        self,
        batch: int,
        height: int,
        width: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> LayerState:
        """Zero (h, c) for a new sequence."""
        shape = (batch, self.hidden_channels, height, width)
        return (
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
        )

    def forward(self, x: Tensor, state: LayerState | None = None) -> LayerState:
        """x (B, in_channels, h, w), state (h, c) or ``None`` (zeros) -> new (h, c)."""
        if state is None:
            state = self.init_state(x.shape[0], x.shape[2], x.shape[3], x.device, x.dtype)
        h_prev, c_prev = state
        z = self.gates(torch.cat([x, h_prev], dim=1))
        i, f, g, o = z.chunk(4, dim=1)
        if self.peephole:
            i = i + self.peephole_i * c_prev
            f = f + self.peephole_f * c_prev
        c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        if self.peephole:
            o = o + self.peephole_o * c
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class ConvLSTMStack(nn.ModuleList):
    """``num_layers`` stacked cells (layer k > 0 takes layer k-1's h), run one frame at a time
    on explicit state: one (h, c) pair per layer, bottom layer first.

    With ``groups`` > 1 the cells run grouped: an input (N, groups * c, h, w) is seen by the
    cells as groups separate samples (N * groups, c, h, w) that share the weights (one small
    ConvLSTM per landmark), while everything outside, the state included, keeps the batch
    first: (N, groups * c, h, w), group-major.

    A ModuleList, so that the stage that holds it as ``cells`` keeps the parameter names
    ``cells.<k>.gates.weight``.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        num_layers: int,
        kernel_size: int,
        peephole: bool,
        groups: int = 1,
    ) -> None:
        check_ints(num_layers=num_layers)
        super().__init__(
            ConvLSTMCell(
                in_channels if k == 0 else hidden_channels, hidden_channels, kernel_size, peephole
            )
            for k in range(num_layers)
        )
        self.hidden_channels = hidden_channels
        self.groups = groups

    def to_cells(self, x: Tensor) -> Tensor:
        """(N, groups * c, h, w) -> (N * groups, c, h, w); unchanged without groups."""
        if self.groups == 1:
            return x
        return x.reshape(-1, x.shape[1] // self.groups, x.shape[2], x.shape[3])

    def from_cells(self, x: Tensor) -> Tensor:
        """Inverse of `to_cells`."""
        if self.groups == 1:
            return x
        return x.reshape(-1, x.shape[1] * self.groups, x.shape[2], x.shape[3])

    def state_names(self) -> list[str]:
        return [f"{kind}{k}" for k in range(len(self)) for kind in ("h", "c")]

    def state_layout(self, batch: int, height: int, width: int) -> tuple[StateLayout, str]:
        """The expected (h, c) groups, for `TemporalStage._check_state`."""
        hidden = (
            (batch, self.hidden_channels * self.groups, height, width),
            "batch, hidden, h, w",
        )
        return [{"h": hidden, "c": hidden}] * len(self), f"{len(self)} (h, c) pairs"

    def forward(
        self, x: Tensor, state: tuple[LayerState, ...]
    ) -> tuple[Tensor, tuple[LayerState, ...]]:
        """One frame x (N, groups * c, h, w) -> (top layer's h (N, groups * hidden, h, w), new
        state)."""
        new_state = []
        x = self.to_cells(x)
        for cell, (h, c) in zip(self, state):
            h, c = cell(x, (self.to_cells(h), self.to_cells(c)))
            new_state.append((self.from_cells(h), self.from_cells(c)))
            x = h
        return self.from_cells(x), tuple(new_state)


class ResidualStage(TemporalStage):
    """A stage whose output is the backbone's map plus a read-out of the top hidden state:
    ``s_t = o_t + proj(h_top)``. The 1x1 read-out starts at zero, so an untrained stage returns
    the backbone's heatmaps exactly and fine-tuning starts from the backbone's quality.

    Subclasses build ``cells`` and ``proj`` with `_build_cells` and say in `_squeeze` what the
    cells see of the heatmaps.
    """

    cells: ConvLSTMStack
    proj: nn.Conv2d

    def _build_cells(
        self,
        in_channels: int,
        hidden_channels: int,
        num_layers: int,
        kernel_size: int,
        peephole: bool,
        groups: int,
        out_channels: int,
    ) -> None:
        """The cell stack, then the zero read-out (hidden -> out_channels per group)."""
        self.cells = ConvLSTMStack(
            in_channels, hidden_channels, num_layers, kernel_size, peephole, groups
        )
        self.proj = nn.Conv2d(hidden_channels, out_channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    @abstractmethod
    def _squeeze(self, heatmaps: Tensor) -> Tensor:
        """Heatmaps (N, L, h, w) -> the cells' input for those frames."""

    def state_names(self) -> list[str]:
        return self.cells.state_names()

    def _state_layout(self, batch: int, height: int, width: int) -> tuple[StateLayout, str]:
        return self.cells.state_layout(batch, height, width)

    def _readout(self, top: Tensor) -> Tensor:
        """Top hidden state (N, hidden [* L], h, w) -> heatmap residual (N, L, h, w)."""
        return self.cells.from_cells(self.proj(self.cells.to_cells(top)))

    def forward(self, heatmaps: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        self._check_heatmaps(heatmaps, 4, "(B, L, h, w)")
        state = self._start(heatmaps, state)
        top, state = self.cells(self._squeeze(heatmaps), state)
        return heatmaps + self._readout(top), state

    def forward_sequence(
        self, heatmaps: Tensor, state: State | None = None
    ) -> tuple[Tensor, State]:
        """As `TemporalStage.forward_sequence`; the 1x1 convolutions at both ends run once over
        all frames."""
        self._check_sequence(heatmaps)
        batch, steps = heatmaps.shape[:2]
        state = self._start(heatmaps, state)
        frames = heatmaps.flatten(0, 1)
        x = self._squeeze(frames).unflatten(0, (batch, steps))
        tops = []
        for t in range(steps):
            top, state = self.cells(x[:, t], state)
            tops.append(top)
        out = frames + self._readout(torch.stack(tops, dim=1).flatten(0, 1))
        return out.unflatten(0, (batch, steps)), state
