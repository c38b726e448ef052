"""Temporal stage (SPEC 3): a ConvLSTM over the frozen backbone's heatmaps with explicit state.

``s_t = o_t + proj(h_t)``: the 1x1 output projection starts at zero, so an untrained head returns
the backbone's heatmaps exactly and fine-tuning starts from the backbone's quality. The state is
passed in and returned (never stored on the module) so that truncated BPTT, streaming inference
and export (jit.trace / torch.export / ONNX, state as plain tensors in and out) all work.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_fa.checks import check_ints
from lightning_fa.heatmaps import pdc

LayerState = tuple[Tensor, Tensor]
"""(h, c) of one layer, each (B, hidden, h, w)."""
State = tuple[tuple[Tensor, ...], ...]
"""One (h, c) pair per layer, bottom layer first; with ``gated_blend`` one more group
(previous output (B, L, h, w), drift (B, L, 2), started (B, 1, 1, 1)). Every tensor is batch
first and all zeros means a new sequence."""


def detach_state(state: State | None) -> State | None:
    """Cut the autograd graph behind ``state`` (truncated BPTT); ``None`` stays ``None``."""
    if state is None:
        return None
    return tuple(tuple(tensor.detach() for tensor in group) for group in state)


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


class ConvLSTM(nn.Module):
    """The temporal stage: stabilised heatmaps ``s_t = o_t + proj(h_top)``.

    Args:
        num_landmarks: L, channels of the backbone heatmaps o_t.
        hidden_channels: channels of every layer's hidden and cell state.
        num_layers: stacked cells; layer k > 0 takes layer k-1's h as input.
        kernel_size: odd spatial kernel of the gate convolutions.
        peephole: per-channel peephole connections.
        input_proj: if set, a 1x1 conv first squeezes the L heatmap channels to this many
            before the cells (the skip connection still adds the raw o_t). ``None`` feeds o_t
            directly. The default 16 keeps the step cheap: at L=68, 64x64, batch 1 the default
            step is about 84 MMAC (2 ms on one CPU thread) against 203 MMAC (8 ms) without it,
            for a backbone of about 4.7 GMAC.
        landmark_wise: run one small ConvLSTM per landmark, its weights shared by all landmarks:
            each heatmap is its own sample with ``hidden_channels`` state channels and a 1x1
            read-out back to its own map, so the stage can smooth every landmark on its own
            (the squeezed default mixes all maps in a shared state). Needs ``input_proj=None``.
            The state keeps the batch first: (B, L * hidden_channels, h, w), landmark-major.
            Costlier per frame (every map runs the cell): at L=68, 64x64, batch 1,
            hidden 4, kernel 3 it is about 200 MMAC (measured 84 ms against 420 ms for the
            HRNet-W18 forward, one loaded CPU thread); at 32x32 about 50 MMAC.
        gated_blend: beyond the paper, needs ``landmark_wise``. The output becomes
            ``s_t = o_t + a_t (s_{t-1} - o_t)``: each landmark's cell sees o_t, its previous
            output s_{t-1} and a motion cue (the length of the running average, see
            ``motion_smoothing``, of the offset between the centres of o_t and s_{t-1}, relative
            PDC, broadcast over the map); its top hidden state gives one blend
            weight a_t per heatmap (a 1x1 read-out averaged under the mass of o_t, so a 12x12
            training patch and a full map give the same gate), times a learnable strength in
            [0, 1] that starts at 0 so the untrained stage is still exactly the backbone, times
            ``max_blend`` (a scale, not a clip, so a gate near the cap still learns).
            A recurrent blend of whole maps is an exponential smoother whose memory the cell sets
            frame by frame (long on a still face, short on a move); the residual read-out would
            have to rebuild the smoothed map from a few bounded channels instead.
        max_blend: the largest share a_t of the previous output (``gated_blend`` only). At 0.95
            every frame brings at least 5 % of its own map, so the memory of a still face stays
            within about 20 frames (the embedded run uses 0.98, with a smoothed motion cue);
            uncapped, the embedded run's stage learned to freeze still faces on an early
            estimate (MCV down, NRMSE up; docs/embedded-default.md).
        motion_smoothing: the weight of the newest offset in the motion cue's running average
            (``gated_blend`` only), as One Euro smooths its derivative. 1 is the instantaneous
            offset, which opens the gate on the noisiest frames and lets their noise through.
            With 0.2 (about a 5-frame average) the gate stays closed on still faces, so the
            cap binds there; the embedded run raises it to 0.98 and its slow-set MCV cut went
            from 35 to 41 % (docs/embedded-default.md).
    """

    def __init__(
        self,
        num_landmarks: int,
        hidden_channels: int = 16,
        num_layers: int = 1,
        kernel_size: int = 3,
        peephole: bool = False,
        input_proj: int | None = 16,
        landmark_wise: bool = False,
        gated_blend: bool = False,
        max_blend: float = 0.95,
        motion_smoothing: float = 0.2,
    ) -> None:
        super().__init__()
        check_ints(num_landmarks=num_landmarks, num_layers=num_layers)
        if input_proj is not None:
            check_ints(input_proj=input_proj)
        if landmark_wise and input_proj is not None:
            raise ValueError(
                "landmark_wise=True feeds every heatmap to its own cell, so there is nothing to "
                f"squeeze: pass input_proj=None (got input_proj={input_proj})"
            )
        if not 0.0 < max_blend <= 1.0:
            raise ValueError(f"max_blend must be in (0, 1], got {max_blend}")
        if not 0.0 < motion_smoothing <= 1.0:
            raise ValueError(f"motion_smoothing must be in (0, 1], got {motion_smoothing}")
        if gated_blend and not landmark_wise:
            raise ValueError(
                "gated_blend=True gates each landmark's own heatmap, so it needs landmark_wise=True"
            )
        self.num_landmarks = num_landmarks
        self.hidden_channels = hidden_channels
        self.num_layers = num_layers
        self.landmark_wise = landmark_wise
        self.gated_blend = gated_blend
        self.max_blend = max_blend
        self.motion_smoothing = motion_smoothing
        # Landmark-wise cells run on (B * L, c, h, w); everything outside them sees (B, L * c, h, w).
        self._groups = num_landmarks if landmark_wise else 1
        # Constructor arguments, saved with fine-tuned checkpoints to rebuild the stage.
        self.config = {
            "num_landmarks": num_landmarks,
            "hidden_channels": hidden_channels,
            "num_layers": num_layers,
            "kernel_size": kernel_size,
            "peephole": peephole,
            "input_proj": input_proj,
            "landmark_wise": landmark_wise,
            "gated_blend": gated_blend,
            "max_blend": max_blend,
            "motion_smoothing": motion_smoothing,
        }
        self.input_proj = (
            nn.Conv2d(num_landmarks, input_proj, 1) if input_proj is not None else nn.Identity()
        )
        first_in = input_proj if input_proj is not None else num_landmarks // self._groups
        if gated_blend:
            first_in += 2  # the previous output s_{t-1} and the motion cue
        self.cells = nn.ModuleList(
            ConvLSTMCell(
                first_in if k == 0 else hidden_channels, hidden_channels, kernel_size, peephole
            )
            for k in range(num_layers)
        )
        # The read-out: the heatmap residual, or the blend gate's logit (one per landmark).
        self.proj = nn.Conv2d(
            hidden_channels, 1 if gated_blend else num_landmarks // self._groups, 1
        )
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        if gated_blend:
            self.blend_strength = nn.Parameter(torch.zeros(()))

    detach_state = staticmethod(detach_state)

    def _to_cells(self, x: Tensor) -> Tensor:
        """(N, L * c, h, w) -> (N * L, c, h, w) for landmark-wise cells; otherwise unchanged."""
        if self._groups == 1:
            return x
        return x.reshape(-1, x.shape[1] // self._groups, x.shape[2], x.shape[3])

    def _from_cells(self, x: Tensor) -> Tensor:
        """Inverse of `_to_cells`."""
        if self._groups == 1:
            return x
        return x.reshape(-1, x.shape[1] * self._groups, x.shape[2], x.shape[3])

    def init_state(
        self,
        batch: int,
        height: int,
        width: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> State:
        """Zero state for a new sequence (what ``state=None`` means), for exporters that need
        the state as explicit tensors."""
        layers = tuple(
            tuple(
                self._from_cells(t)
                for t in cell.init_state(batch * self._groups, height, width, device, dtype)
            )
            for cell in self.cells
        )
        if not self.gated_blend:
            return layers
        previous = torch.zeros(batch, self.num_landmarks, height, width, device=device, dtype=dtype)
        drift = torch.zeros(batch, self.num_landmarks, 2, device=device, dtype=dtype)
        started = torch.zeros(batch, 1, 1, 1, device=device, dtype=dtype)
        return (*layers, (previous, drift, started))

    def state_names(self) -> list[str]:
        """Names of the flattened state tensors, in order (the exported graph's inputs)."""
        names = [f"{kind}{k}" for k in range(self.num_layers) for kind in ("h", "c")]
        return [*names, "previous", "drift", "started"] if self.gated_blend else names

    def _check_heatmaps(self, heatmaps: Tensor, ndim: int, layout: str) -> None:
        # A trace fixes the shapes anyway; checking them there only emits TracerWarnings.
        if torch.jit.is_tracing():
            return
        if heatmaps.ndim != ndim or heatmaps.shape[-3] != self.num_landmarks:
            raise ValueError(
                f"heatmaps must be {layout} with L={self.num_landmarks}, "
                f"got shape {tuple(heatmaps.shape)}"
            )

    def _check_state(self, state: State, batch: int, height: int, width: int) -> None:
        if torch.jit.is_tracing():
            return
        hidden = (
            (batch, self.hidden_channels * self._groups, height, width),
            "batch, hidden, h, w",
        )
        # Expected (name: (shape, layout)) of each group, bottom layer first.
        groups = [{"h": hidden, "c": hidden}] * self.num_layers
        what = f"{self.num_layers} (h, c) pairs"
        if self.gated_blend:
            groups.append(
                {
                    "previous": ((batch, self.num_landmarks, height, width), "batch, L, h, w"),
                    "drift": ((batch, self.num_landmarks, 2), "batch, L, 2"),
                    "started": ((batch, 1, 1, 1), "batch, 1, 1, 1"),
                }
            )
            what += " and the (previous, drift, started) group"
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
        of the heatmaps, not of the (possibly bf16 autocast) squeezed input, so that the cell
        memory keeps full precision."""
        batch, height, width = heatmaps.shape[0], heatmaps.shape[-2], heatmaps.shape[-1]
        if state is None:
            return self.init_state(batch, height, width, heatmaps.device, heatmaps.dtype)
        self._check_state(state, batch, height, width)
        return state

    def _recur(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """Run the cell stack on one (already squeezed) frame; returns the top h and new state."""
        new_state = []
        x = self._to_cells(x)
        for cell, (h, c) in zip(self.cells, state):
            h, c = cell(x, (self._to_cells(h), self._to_cells(c)))
            new_state.append((self._from_cells(h), self._from_cells(c)))
            x = h
        return self._from_cells(x), tuple(new_state)

    def _readout(self, top: Tensor) -> Tensor:
        """Top hidden state (N, hidden [* L], h, w) -> heatmap residual (N, L, h, w)."""
        return self._from_cells(self.proj(self._to_cells(top)))

    def _blend_step(self, heatmaps: Tensor, state: State) -> tuple[Tensor, State]:
        """One ``gated_blend`` step: s_t = o_t + a_t (s_{t-1} - o_t), a_t from the cell."""
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
        top, layers = self._recur(cell_input, layers)
        logit = self.proj(self._to_cells(top)).reshape(heatmaps.shape)
        mass = heatmaps.clamp_min(0)
        pooled = (logit * mass).sum((-2, -1), keepdim=True) / mass.sum(
            (-2, -1), keepdim=True
        ).clamp_min(1e-6)
        # Scaled, not clamped, to max_blend: a clamp has no gradient, so a gate that once
        # overshot it would stay there for the rest of training.
        gate = self.max_blend * self.blend_strength.clamp(0, 1) * torch.sigmoid(pooled)
        out = heatmaps + gate * (previous - heatmaps)
        return out, (*layers, (out, drift, torch.ones_like(started)))

    def forward(self, heatmaps: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """One step: heatmaps o_t (B, L, h, w), state or ``None`` (new sequence) ->
        (stabilised s_t (B, L, h, w), new state)."""
        self._check_heatmaps(heatmaps, 4, "(B, L, h, w)")
        state = self._start(heatmaps, state)
        if self.gated_blend:
            return self._blend_step(heatmaps, state)
        top, state = self._recur(self.input_proj(heatmaps), state)
        return heatmaps + self._readout(top), state

    def forward_sequence(
        self, heatmaps: Tensor, state: State | None = None
    ) -> tuple[Tensor, State]:
        """A clip: heatmaps (B, T, L, h, w) -> (outputs (B, T, L, h, w), state after the last
        frame). Without ``gated_blend`` the 1x1 convolutions at both ends run once over all
        frames."""
        self._check_heatmaps(heatmaps, 5, "(B, T, L, h, w)")
        batch, steps = heatmaps.shape[:2]
        if steps == 0:
            raise ValueError("heatmaps must hold at least one frame (T >= 1), got T=0")
        state = self._start(heatmaps, state)
        if self.gated_blend:
            outs = []
            for t in range(steps):
                out, state = self._blend_step(heatmaps[:, t], state)
                outs.append(out)
            return torch.stack(outs, dim=1), state
        frames = heatmaps.flatten(0, 1)
        x = self.input_proj(frames).unflatten(0, (batch, steps))
        tops = []
        for t in range(steps):
            top, state = self._recur(x[:, t], state)
            tops.append(top)
        out = frames + self._readout(torch.stack(tops, dim=1).flatten(0, 1))
        return out.unflatten(0, (batch, steps)), state
