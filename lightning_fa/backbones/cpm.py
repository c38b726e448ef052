"""Convolutional Pose Machine (Wei et al. 2016) in the style of the SBR face backbone.

A VGG-like stem extracts features at stride 4; stage 1 predicts beliefs from the features alone,
every later stage refines from features + the previous stage's beliefs. The last stage is final;
`forward_all` returns every stage for intermediate supervision.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone, init_heatmap_head, register_backbone


def _conv_relu(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)
    # He init keeps activations alive through the BN-free VGG stack (PyTorch's default shrinks them).
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    return [conv, nn.ReLU(inplace=True)]


def _vgg_stem(widths: tuple[int, int, int], features: int) -> nn.Sequential:
    """VGG blocks (2, 2, 4 convs) with a max-pool after the first two: stride 4."""
    layers: list[nn.Module] = []
    in_channels = 3
    for block, (width, convs) in enumerate(zip(widths, (2, 2, 4))):
        for _ in range(convs):
            layers += _conv_relu(in_channels, width, 3)
            in_channels = width
        if block < 2:
            layers.append(nn.MaxPool2d(2))
    layers += _conv_relu(in_channels, features, 3)
    return nn.Sequential(*layers)


def _stage(
    in_channels: int, width: int, num_landmarks: int, kernel: int, convs: int
) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(convs):
        layers += _conv_relu(channels, width, kernel)
        channels = width
    layers += _conv_relu(width, width, 1)
    head = nn.Conv2d(width, num_landmarks, 1)
    init_heatmap_head(head)
    return nn.Sequential(*layers, head)


class CPM(Backbone):
    """CPM with `num_stages` stages of `stage_convs` convs (`kernel` wide) at `width` channels."""

    def __init__(
        self,
        num_landmarks: int,
        num_stages: int = 3,
        width: int = 128,
        stem_widths: tuple[int, int, int] = (64, 128, 256),
        kernel: int = 7,
        stage_convs: int = 5,
        input_size: tuple[int, int] = (256, 256),
    ) -> None:
        super().__init__(
            num_landmarks,
            stride=4,
            input_size=input_size,
            input_mean=IMAGENET_MEAN,
            input_std=IMAGENET_STD,
        )
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {num_stages}")
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd to keep the size, got {kernel}")
        self.stem = _vgg_stem(tuple(stem_widths), width)
        # Stage 1 sees features only; refinement stages also see the previous beliefs.
        self.stages = nn.ModuleList(
            _stage(
                width if s == 0 else width + num_landmarks,
                width,
                num_landmarks,
                kernel,
                stage_convs,
            )
            for s in range(num_stages)
        )

    def forward_all(self, x: Tensor) -> list[Tensor]:
        features = self.stem(x)
        beliefs = [self.stages[0](features)]
        for stage in self.stages[1:]:
            beliefs.append(stage(torch.cat([features, beliefs[-1]], dim=1)))
        return beliefs

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_all(x)[-1]


register_backbone("cpm")(CPM)
