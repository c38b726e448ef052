"""The gated blend (beyond the paper): each landmark's map blends its previous output in with a
weight that a landmark-wise ConvLSTM sets frame by frame."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_fa.checks import check_ints
from lightning_fa.heatmaps import pdc
from lightning_fa.temporal.base import State, StateLayout, StepwiseStage
from lightning_fa.temporal.cells import ConvLSTMStack


class GatedBlendConvLSTM(StepwiseStage):
    """The gated blend ``s_t = o_t + a_t (s_{t-1} - o_t)``, a_t set by a landmark-wise cell.

    A recurrent blend of whole maps is an exponential smoother whose memory the cell sets per
    landmark and per frame (long on a still face, short on a move).

    Each landmark's cell (weights shared by all landmarks) sees o_t, its previous output s_{t-1}
    and a motion cue: the length of the running average (``motion_smoothing``) of the offset
    between the centres of o_t and s_{t-1} (relative PDC), broadcast over the map. Its top
    hidden state gives one blend weight a_t per heatmap: a 1x1 read-out averaged under the mass
    of o_t (so a training patch and a full map give the same gate), through a sigmoid, times a
    learnable strength in [0, 1] that starts at 0 (the untrained stage is exactly the
    backbone), times ``max_blend`` (a scale, not a clip, so a gate near the cap still learns).

    Args:
        num_landmarks: L, channels of the backbone heatmaps o_t.
        hidden_channels: channels of every layer's hidden and cell state, per landmark.
        num_layers: stacked cells; layer k > 0 takes layer k-1's h as input.
        kernel_size: odd spatial kernel of the gate convolutions.
        peephole: per-channel peephole connections.
        max_blend: the largest share a_t of the previous output, in (0, 1]: every frame brings
            at least ``1 - max_blend`` of its own map, which bounds the memory of a still face.
        motion_smoothing: the weight of the newest offset in the motion cue's running average,
            in (0, 1] (as One Euro smooths its derivative); 1 is the instantaneous offset.

    The state is one (h, c) pair per layer, each (B, L * hidden_channels, h, w) landmark-major,
    then one (previous output (B, L, h, w), drift (B, L, 2), started (B, 1, 1, 1)) group; drift
    is the motion cue's running average.
    """

    landmark_wise = True

    def __init__(
        self,
        num_landmarks: int,
        hidden_channels: int = 16,
        num_layers: int = 1,
        kernel_size: int = 3,
        peephole: bool = False,
        max_blend: float = 0.95,
        motion_smoothing: float = 0.2,
    ) -> None:
        super().__init__()
        check_ints(num_landmarks=num_landmarks, num_layers=num_layers)
        if not 0.0 < max_blend <= 1.0:
            raise ValueError(f"max_blend must be in (0, 1], got {max_blend}")
        if not 0.0 < motion_smoothing <= 1.0:
            raise ValueError(f"motion_smoothing must be in (0, 1], got {motion_smoothing}")
        self.num_landmarks = num_landmarks
        self.hidden_channels = hidden_channels
        self.num_layers = num_layers
        self.max_blend = max_blend
        self.motion_smoothing = motion_smoothing
        self.config = {
            "num_landmarks": num_landmarks,
            "hidden_channels": hidden_channels,
            "num_layers": num_layers,
            "kernel_size": kernel_size,
            "peephole": peephole,
            "max_blend": max_blend,
            "motion_smoothing": motion_smoothing,
        }
        # Per landmark: its map o_t, its previous output s_{t-1} and the motion cue.
        self.cells = ConvLSTMStack(
            3, hidden_channels, num_layers, kernel_size, peephole, groups=num_landmarks
        )
        # The blend gate's logit, one per landmark; zero at start.
        self.proj = nn.Conv2d(hidden_channels, 1, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.blend_strength = nn.Parameter(torch.zeros(()))

    def state_names(self) -> list[str]:
        return [*self.cells.state_names(), "previous", "drift", "started"]

    def _state_layout(self, batch: int, height: int, width: int) -> tuple[StateLayout, str]:
        groups, what = self.cells.state_layout(batch, height, width)
        blend = {
            "previous": ((batch, self.num_landmarks, height, width), "batch, L, h, w"),
            "drift": ((batch, self.num_landmarks, 2), "batch, L, 2"),
            "started": ((batch, 1, 1, 1), "batch, 1, 1, 1"),
        }
        return [*groups, blend], f"{what} and the (previous, drift, started) group"

    def _step(self, heatmaps: Tensor, state: State) -> tuple[Tensor, State]:
        """One step on a checked state: s_t = o_t + a_t (s_{t-1} - o_t), a_t from the cell."""
        layers, (previous, drift, started) = state[:-1], state[-1]
        # A new sequence (started = 0) has no previous output: it blends with its own frame.
        previous = heatmaps + started * (previous - heatmaps)
        # The motion cue: the running average of how far the new map's centre lies from the
        # previous output's (heatmap pixels; relative PDC: the same on a training patch and on
        # a full map). Averaged like One Euro's derivative, so that one noisy frame far from the
        # output does not open the gate and pass its noise through, while a move that persists
        # does. Only an input: no gradient flows back through the decoder.
        offset = (pdc(heatmaps, relative=True) - pdc(previous, relative=True)).detach()
        drift = started[..., 0] * drift  # (B, 1, 1) * (B, L, 2): zero on a new sequence
        drift = drift + self.motion_smoothing * (offset.to(drift.dtype) - drift)
        motion = drift.norm(dim=-1)[..., None, None].expand_as(heatmaps).to(heatmaps.dtype)
        cell_input = torch.stack([heatmaps, previous, motion], dim=2).flatten(1, 2)
        top, layers = self.cells(cell_input, layers)
        logit = self.proj(self.cells.to_cells(top)).reshape(heatmaps.shape)
        mass = heatmaps.clamp_min(0)
        pooled = (logit * mass).sum((-2, -1), keepdim=True) / mass.sum(
            (-2, -1), keepdim=True
        ).clamp_min(1e-6)
        # Scaled, not clamped, to max_blend: a clamp has no gradient, so a gate that once
        # overshot it would stay there for the rest of training.
        gate = self.max_blend * self.blend_strength.clamp(0, 1) * torch.sigmoid(pooled)
        out = heatmaps + gate * (previous - heatmaps)
        return out, (*layers, (out, drift, torch.ones_like(started)))
