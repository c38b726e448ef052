"""The landmark-wise ConvLSTM: one small ConvLSTM per landmark, its weights shared by all."""

from __future__ import annotations

from torch import Tensor

from lightning_fa.checks import check_ints
from lightning_fa.temporal.cells import ResidualStage


class LandmarkWiseConvLSTM(ResidualStage):
    """``s_t = o_t + proj(h_t)`` per landmark: one small ConvLSTM per map, weights shared.

    Every heatmap is its own sample of the shared cells (``hidden_channels`` state channels per
    landmark) with a 1x1 read-out back to its own map, zero at start (the identity). The stage
    can so smooth every landmark on its own, where `ConvLSTM` mixes all maps in one shared
    state; it costs more per frame (every map runs the cell; docs/temporal-stages.md).

    Args:
        num_landmarks: L, channels of the backbone heatmaps o_t.
        hidden_channels: channels of every layer's hidden and cell state, per landmark.
        num_layers: stacked cells; layer k > 0 takes layer k-1's h as input.
        kernel_size: odd spatial kernel of the gate convolutions.
        peephole: per-channel peephole connections.

    The state is one (h, c) pair per layer, batch first: each (B, L * hidden_channels, h, w),
    landmark-major.
    """

    landmark_wise = True

    def __init__(
        self,
        num_landmarks: int,
        hidden_channels: int = 16,
        num_layers: int = 1,
        kernel_size: int = 3,
        peephole: bool = False,
    ) -> None:
        super().__init__()
        check_ints(num_landmarks=num_landmarks, num_layers=num_layers)
        self.num_landmarks = num_landmarks
        self.hidden_channels = hidden_channels
        self.num_layers = num_layers
        self.config = {
            "num_landmarks": num_landmarks,
            "hidden_channels": hidden_channels,
            "num_layers": num_layers,
            "kernel_size": kernel_size,
            "peephole": peephole,
        }
        self._build_cells(
            in_channels=1,
            hidden_channels=hidden_channels,
            num_layers=num_layers,
            kernel_size=kernel_size,
            peephole=peephole,
            groups=num_landmarks,
            out_channels=1,
        )

    def _squeeze(self, heatmaps: Tensor) -> Tensor:
        # Nothing to squeeze: every map is its own cell's input.
        return heatmaps
