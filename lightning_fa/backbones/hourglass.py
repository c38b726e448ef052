"""Stacked Hourglass (Newell et al. 2016), FAN-style face variant with plain residual blocks.

Stride 4: a strided stem brings 256x256 to 64x64; each stack predicts heatmaps there and feeds
them back into the next stack (intermediate supervision through `forward_all`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backbone, init_heatmap_head, register_backbone


class Residual(nn.Module):
    """Pre-activation bottleneck residual block (BN-ReLU-conv x3)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = max(out_channels // 2, 1)
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1, bias=False),
        )
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        # The body's first ReLU is in place on BN's output, never on x itself.
        return self.body(x) + self.skip(x)


class Hourglass(nn.Module):
    """Recursive encoder-decoder: skip at this scale + (pool -> deeper hourglass -> upsample)."""

    def __init__(self, depth: int, channels: int) -> None:
        super().__init__()
        self.skip = Residual(channels, channels)
        self.down = Residual(channels, channels)
        self.inner = Hourglass(depth - 1, channels) if depth > 1 else Residual(channels, channels)
        self.up = Residual(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        low = self.up(self.inner(self.down(F.max_pool2d(x, 2))))
        # Upsample to the skip's exact size so odd feature sizes work too.
        return self.skip(x) + F.interpolate(low, size=x.shape[-2:], mode="nearest")


class StackedHourglass(Backbone):
    """`num_stacks` hourglasses of `depth` levels at `width` channels; the last stack is final."""

    def __init__(
        self,
        num_landmarks: int,
        num_stacks: int = 2,
        width: int = 128,
        depth: int = 4,
        input_size: tuple[int, int] = (256, 256),
    ) -> None:
        super().__init__(num_landmarks, stride=4, input_size=input_size)
        if not 1 <= num_stacks <= 8:
            raise ValueError(f"num_stacks must be in 1..8, got {num_stacks}")
        if depth < 1 or width < 2:
            raise ValueError(f"depth must be >= 1 and width >= 2, got depth={depth}, width={width}")
        self.num_stacks = num_stacks
        half = max(width // 2, 1)
        self.stem = nn.Sequential(
            nn.Conv2d(3, half, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            Residual(half, width),
            nn.MaxPool2d(2),
            Residual(width, width),
            Residual(width, width),
        )
        self.hourglasses = nn.ModuleList(Hourglass(depth, width) for _ in range(num_stacks))
        self.features = nn.ModuleList(
            nn.Sequential(
                Residual(width, width),
                nn.Conv2d(width, width, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
            for _ in range(num_stacks)
        )
        self.heads = nn.ModuleList(nn.Conv2d(width, num_landmarks, 1) for _ in range(num_stacks))
        for head in self.heads:
            init_heatmap_head(head)
        # Re-inject features and predictions into the next stack's input.
        self.merge_features = nn.ModuleList(
            nn.Conv2d(width, width, 1) for _ in range(num_stacks - 1)
        )
        self.merge_heatmaps = nn.ModuleList(
            nn.Conv2d(num_landmarks, width, 1) for _ in range(num_stacks - 1)
        )

    def forward_all(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        outputs = []
        for stack in range(self.num_stacks):
            features = self.features[stack](self.hourglasses[stack](x))
            heatmaps = self.heads[stack](features)
            outputs.append(heatmaps)
            if stack < self.num_stacks - 1:
                x = x + self.merge_features[stack](features) + self.merge_heatmaps[stack](heatmaps)
        return outputs

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_all(x)[-1]


register_backbone("hourglass")(StackedHourglass)
