"""The paper's temporal stage (SPEC 3): a ConvLSTM over the frozen backbone's heatmaps,
``s_t = o_t + proj(h_t)``, with an optional 1x1 squeeze of the heatmaps before the cells."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_fa.checks import check_ints
from lightning_fa.temporal.cells import ResidualStage


class ConvLSTM(ResidualStage):
    """The paper's stage ``s_t = o_t + proj(h_t)``, one ConvLSTM state shared by all L maps.

    A 1x1 read-out of the top hidden state is added to the backbone's maps (zero at start: the
    identity).

    Args:
        num_landmarks: L, channels of the backbone heatmaps o_t.
        hidden_channels: channels of every layer's hidden and cell state.
        num_layers: stacked cells; layer k > 0 takes layer k-1's h as input.
        kernel_size: odd spatial kernel of the gate convolutions.
        peephole: per-channel peephole connections.
        input_proj: if set, a 1x1 conv first squeezes the L heatmap channels to this many
            before the cells (the residual still adds the raw o_t); ``None`` feeds o_t directly.
            The default keeps the step cheap (docs/temporal-stages.md).

    The state is one (h, c) pair per layer, each (B, hidden_channels, h, w).
    """

    def __init__(
        self,
        num_landmarks: int,
        hidden_channels: int = 16,
        num_layers: int = 1,
        kernel_size: int = 3,
        peephole: bool = False,
        input_proj: int | None = 16,
    ) -> None:
        super().__init__()
        check_ints(num_landmarks=num_landmarks, num_layers=num_layers)
        if input_proj is not None:
            check_ints(input_proj=input_proj)
        self.num_landmarks = num_landmarks
        self.hidden_channels = hidden_channels
        self.num_layers = num_layers
        self.config = {
            "num_landmarks": num_landmarks,
            "hidden_channels": hidden_channels,
            "num_layers": num_layers,
            "kernel_size": kernel_size,
            "peephole": peephole,
            "input_proj": input_proj,
        }
        self.input_proj = (
            nn.Conv2d(num_landmarks, input_proj, 1) if input_proj is not None else nn.Identity()
        )
        self._build_cells(
            in_channels=input_proj if input_proj is not None else num_landmarks,
            hidden_channels=hidden_channels,
            num_layers=num_layers,
            kernel_size=kernel_size,
            peephole=peephole,
            groups=1,
            out_channels=num_landmarks,
        )

    def _squeeze(self, heatmaps: Tensor) -> Tensor:
        return self.input_proj(heatmaps)
