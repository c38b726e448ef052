"""HRNetV2 for face alignment, state_dict-compatible with the official release.

Keys and shapes match `HR18-300W.pth` / `HR18-WFLW.pth` / `HR18-COFW.pth` / `HR18-AFLW.pth` of
HRNet-Facial-Landmark-Detection (config w18), so those files load without renaming. Variants are
`HRNetConfig`s of the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone, init_heatmap_head, register_backbone

BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class HRNetConfig:
    """Widths and depths of an HRNetV2.

    Stage s (2, 3, 4) has s parallel branches with `widths[:s]` channels; each of its
    `stage_modules[s - 2]` modules holds `blocks_per_branch` BasicBlocks per branch.
    """

    stem_channels: int = 64
    layer1_planes: int = 64  # Bottleneck planes; layer1 outputs 4x as many channels
    layer1_blocks: int = 4
    widths: tuple[int, int, int, int] = (18, 36, 72, 144)
    stage_modules: tuple[int, int, int] = (1, 4, 3)
    blocks_per_branch: int = 4


HRNET_W18 = HRNetConfig()
# A CPU-sized variant for pretraining on synthetic faces at 128x128 in minutes.
HRNET_LITE = HRNetConfig(
    stem_channels=32,
    layer1_planes=16,
    layer1_blocks=1,
    widths=(12, 24, 48, 96),
    stage_modules=(1, 1, 1),
    blocks_per_branch=1,
)


HRNET_PRESETS = {"w18": HRNET_W18, "lite": HRNET_LITE}


def resolve_hrnet_config(config: HRNetConfig | str | dict) -> HRNetConfig:
    """A preset name ("w18", "lite"), a dict of fields (as saved in checkpoints) or a config."""
    if isinstance(config, HRNetConfig):
        return config
    if isinstance(config, str):
        if config not in HRNET_PRESETS:
            raise ValueError(f"unknown HRNet preset {config!r}; known: {sorted(HRNET_PRESETS)}")
        return HRNET_PRESETS[config]
    return HRNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _projection(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 conv + BN, the residual shortcut when the channel count changes."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), _bn(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(channels, channels)
        self.bn1 = _bn(channels)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = _bn(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (4x planes) with a residual connection."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = _bn(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            _projection(in_channels, out_channels) if in_channels != out_channels else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def _downsample_chain(in_channels: int, out_channels: int, steps: int) -> nn.Sequential:
    """`steps` 3x3 stride-2 conv + BN; ReLU after all but the last, which keeps `out_channels`."""
    links = []
    for step in range(steps):
        last = step == steps - 1
        layers: list[nn.Module] = [
            _conv3x3(in_channels, out_channels if last else in_channels, stride=2),
            _bn(out_channels if last else in_channels),
        ]
        if not last:
            layers.append(nn.ReLU(inplace=True))
        links.append(nn.Sequential(*layers))
    return nn.Sequential(*links)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks, then every branch receives the sum of all (fusion)."""

    def __init__(self, widths: tuple[int, ...], num_blocks: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(w) for _ in range(num_blocks))) for w in widths
        )
        # fuse_layers[i][j] brings branch j to branch i's resolution and width.
        self.fuse_layers = nn.ModuleList()
        for i, w_i in enumerate(widths):
            row = nn.ModuleList()
            for j, w_j in enumerate(widths):
                if j > i:  # lower resolution: 1x1 conv + BN here, bilinear upsampling in forward
                    row.append(_projection(w_j, w_i))
                elif j == i:
                    row.append(nn.Identity())
                else:  # higher resolution: strided 3x3 convs
                    row.append(_downsample_chain(w_j, w_i, i - j))
            self.fuse_layers.append(row)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        fused = []
        for i, row in enumerate(self.fuse_layers):
            size = xs[i].shape[-2:]
            # Summed in branch order, as the official code does, so float results match it.
            total: Tensor | None = None
            for j, layer in enumerate(row):
                if j < i:
                    term = layer(xs[j])
                elif j > i:
                    term = F.interpolate(
                        layer(xs[j]), size=size, mode="bilinear", align_corners=False
                    )
                else:
                    term = xs[j]
                total = term if total is None else total + term
            fused.append(self.relu(total))
        return fused


def _transition(previous: tuple[int, ...], current: tuple[int, ...]) -> nn.ModuleList:
    """Adapt existing branches' widths (3x3 conv) and spawn new branches from the lowest one."""
    layers = nn.ModuleList()
    for i, width in enumerate(current):
        if i < len(previous):
            if previous[i] == width:
                layers.append(nn.Identity())
            else:
                layers.append(
                    nn.Sequential(_conv3x3(previous[i], width), _bn(width), nn.ReLU(inplace=True))
                )
        else:
            steps = i + 1 - len(previous)
            chain = []
            for step in range(steps):
                out = width if step == steps - 1 else previous[-1]
                chain.append(
                    nn.Sequential(
                        _conv3x3(previous[-1], out, stride=2), _bn(out), nn.ReLU(inplace=True)
                    )
                )
            layers.append(nn.Sequential(*chain))
    return layers


class HRNet(Backbone):
    """HRNetV2 heatmap regressor (stride 4), official face-alignment layout."""

    def __init__(
        self,
        num_landmarks: int,
        config: HRNetConfig | str = "w18",
        input_size: tuple[int, int] = (256, 256),
    ) -> None:
        config = resolve_hrnet_config(config)
        super().__init__(
            num_landmarks,
            stride=4,
            input_size=input_size,
            input_mean=IMAGENET_MEAN,
            input_std=IMAGENET_STD,
            channel_order="RGB",
        )
        self.config = config
        stem = config.stem_channels
        self.conv1 = _conv3x3(3, stem, stride=2)
        self.bn1 = _bn(stem)
        self.conv2 = _conv3x3(stem, stem, stride=2)
        self.bn2 = _bn(stem)
        self.relu = nn.ReLU(inplace=True)
        layer1 = [Bottleneck(stem, config.layer1_planes)]
        layer1_out = config.layer1_planes * Bottleneck.expansion
        layer1 += [
            Bottleneck(layer1_out, config.layer1_planes) for _ in range(config.layer1_blocks - 1)
        ]
        self.layer1 = nn.Sequential(*layer1)

        previous: tuple[int, ...] = (layer1_out,)
        for stage, num_modules in enumerate(config.stage_modules, start=2):
            widths = tuple(config.widths[:stage])
            setattr(self, f"transition{stage - 1}", _transition(previous, widths))
            setattr(
                self,
                f"stage{stage}",
                nn.Sequential(
                    *(
                        HighResolutionModule(widths, config.blocks_per_branch)
                        for _ in range(num_modules)
                    )
                ),
            )
            previous = widths

        channels = sum(config.widths)
        self.head = nn.Sequential(
            nn.Conv2d(channels, channels, 1),
            _bn(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_landmarks, 1),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        init_heatmap_head(self.head[3])

    def _run_stages(self, x: Tensor) -> list[Tensor]:
        xs = [x]
        transitions = (self.transition1, self.transition2, self.transition3)
        stages = (self.stage2, self.stage3, self.stage4)
        for transition, stage in zip(transitions, stages):
            # Existing branches pass through (or adapt width); new ones grow from the lowest.
            inputs = [layer(xs[i] if i < len(xs) else xs[-1]) for i, layer in enumerate(transition)]
            xs = stage(inputs)
        return xs

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = self._run_stages(self.layer1(x))
        size = xs[0].shape[-2:]
        upsampled = [xs[0]] + [
            F.interpolate(b, size=size, mode="bilinear", align_corners=False) for b in xs[1:]
        ]
        return self.head(torch.cat(upsampled, dim=1))


@register_backbone("hrnet_w18")
def hrnet_w18(num_landmarks: int, input_size: tuple[int, int] = (256, 256)) -> HRNet:
    """HRNetV2-W18, the official face-alignment model (256x256 -> 64x64)."""
    return HRNet(num_landmarks, "w18", input_size)


@register_backbone("hrnet_lite")
def hrnet_lite(num_landmarks: int, input_size: tuple[int, int] = (128, 128)) -> HRNet:
    """A small HRNet for CPU pretraining (128x128 -> 32x32)."""
    return HRNet(num_landmarks, "lite", input_size)
