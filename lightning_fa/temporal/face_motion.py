"""A face-level motion filter (beyond the paper, issue #18): the whole face's similarity motion
and each landmark's own residual are smoothed separately, with gains a small network sets from
how the face moves.

Why (docs/stabiliser-analysis.md): on moving faces the truth moves as one similarity (89 % of
its frame-to-frame energy) while 55-68 % of the backbone's jitter is per landmark. A filter that
sees each landmark alone must choose one time constant for both; this stage follows the head
with one gain and smooths the per-landmark part with another.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_fa.checks import check_ints
from lightning_fa.heatmaps import PDC_THRESHOLD, pdc
from lightning_fa.temporal.base import State, StateLayout, StepwiseStage
from lightning_fa.temporal.still_hold import StillHold

# Dimensionless inputs of the gates span decades (a still face's innovation is 1e-3 of its
# size, a head turn's 1e-1): they enter as logarithms, floored here.
_LOG_FLOOR = 1e-4
_EPS = 1e-6


def similarity_basis(shape: Tensor) -> tuple[Tensor, Tensor]:
    """The centred shape c = shape - mean (B, L, 2) and its squared norm per face (B, 1, 1)."""
    centred = shape - shape.mean(dim=-2, keepdim=True)
    return centred, centred.square().sum(dim=(-2, -1), keepdim=True).clamp_min(_EPS)


def split_similarity(step: Tensor, shape: Tensor) -> tuple[Tensor, Tensor]:
    """Least-squares split of a per-landmark step (B, L, 2) into the similarity motion of
    ``shape`` it contains and the rest.

    The similarity motions of a centred shape c are the translations (1, 0), (0, 1), the scaling
    c and the rotation perp(c) = (-c_y, c_x): mutually orthogonal, so each coefficient is a
    projection. Returns (coefficients (B, 4): tx, ty in the step's unit, scale and rotation
    dimensionless; residual (B, L, 2), orthogonal to all four).
    """
    centred, norm = similarity_basis(shape)
    translation = step.mean(dim=-2)  # (B, 2)
    perp = torch.stack((-centred[..., 1], centred[..., 0]), dim=-1)
    scale = (step * centred).sum(dim=(-2, -1)) / norm[..., 0, 0]
    rotation = (step * perp).sum(dim=(-2, -1)) / norm[..., 0, 0]
    coefficients = torch.cat((translation, scale[:, None], rotation[:, None]), dim=-1)
    return coefficients, step - apply_similarity(coefficients, shape)


def apply_similarity(coefficients: Tensor, shape: Tensor) -> Tensor:
    """The per-landmark step (B, L, 2) of the similarity motion ``coefficients`` (B, 4) of
    ``shape`` (the inverse of `split_similarity`'s projection)."""
    centred, _ = similarity_basis(shape)
    perp = torch.stack((-centred[..., 1], centred[..., 0]), dim=-1)
    translation = coefficients[:, None, :2]
    return translation + coefficients[:, None, 2:3] * centred + coefficients[:, None, 3:4] * perp


def _axis_weights(position: Tensor, size: int) -> Tensor:
    """(..., ) positions -> (..., size) weights on three pixels whose centroid is the position.

    Around the nearest pixel n, the weights 1 - 1.5 f, 1, 1 + 1.5 f (f = position - n in
    [-0.5, 0.5]) have their centroid at n + f exactly and are at least 0.25. Positions closer
    than one pixel to the border are clamped to it.
    """
    position = position.clamp(1, size - 2)
    nearest = position.round()
    fraction = position - nearest
    pixels = torch.arange(size, device=position.device, dtype=position.dtype)
    offset = pixels - nearest[..., None]
    return (
        (offset == -1) * (1 - 1.5 * fraction[..., None])
        + (offset == 0) * 1.0
        + (offset == 1) * (1 + 1.5 * fraction[..., None])
    ).to(position.dtype)


def render_points(points: Tensor, height: int, width: int, threshold: float) -> Tensor:
    """Maps (B, L, h, w) that PDC with ``threshold`` decodes exactly to ``points`` (B, L, 2).

    Each map is a separable 3x3 patch (`_axis_weights` per axis) scaled so that its smallest
    value exceeds the threshold by 0.1: PDC keeps all nine pixels, and their centroid is the
    point, with a gradient of exactly one. (Moving the backbone's map instead, by a bilinear
    shift, decodes 0.02-0.06 heatmap px away from the intended point: more than the jitter the
    stage removes.)
    """
    amplitude = (threshold + 0.1) / 0.25**2
    wx = _axis_weights(points[..., 0], width)
    wy = _axis_weights(points[..., 1], height)
    return amplitude * wy[..., :, None] * wx[..., None, :]


def _log_feature(value: Tensor) -> Tensor:
    return value.clamp_min(_LOG_FLOOR).log()


class FaceMotionStage(StepwiseStage):
    """A two-part alpha-beta filter on the decoded landmarks, applied back to the heatmaps.

    Per frame: the landmarks p_t are decoded from o_t (PDC); the estimate q is predicted one
    frame ahead by its face-level velocity u (a similarity motion: translation, scale,
    rotation); the innovation p_t - prediction is split into its similarity part and the
    per-landmark residual; the estimate takes ``alpha_face`` of the first and ``alpha_landmark``
    of the second, and the velocity ``beta`` of the first. Each alpha is 1 / n, n a fading
    memory of the frames averaged so far (n_t = 1 + keep_t * n_{t-1}): a still face held whole
    gets the running mean, a constant keep k is the fixed gain 1 - k. Linear gates on
    dimensionless motion features set each keep and beta per frame: the innovation and velocity
    relative to the face size, their running averages, and the drift (how much of the recent
    innovation keeps one direction), so one setting serves a still face and a head turn, as
    One Euro's speed-dependent cutoff does.

    The output maps are rendered at the estimate (`render_points`) so that PDC decodes them to it
    exactly; they carry no shape of the backbone's maps, so train this stage with the Jitter
    loss's coordinate terms only (``pixel_weight: 0``) and read confidences from the raw maps
    (as `inference.FrameStep` does). Decode with PDC at an absolute threshold no higher than the
    stage's ``threshold``.

    At initialisation every gain strength is zero: keep = 0 (alpha = 1), beta = 0, the output is
    exactly the backbone's PDC point (the identity on the decoded track).

    Args:
        num_landmarks: L.
        threshold: the PDC threshold of the decoding inside the stage (the system's decoder).
        max_smoothing: the largest share of its memory a gain may keep per frame, in (0, 1)
            (a memory of at most 1 / (1 - max_smoothing) frames).
        activity_smoothing: weight of the newest frame in the running averages of the motion
            features, in (0, 1] (as One Euro smooths its derivative).
        initial_memory: the frames a new sequence's first frame stands for beyond itself, >= 0:
            each memory starts at 1 + keep * initial_memory instead of 1. A new face is taken as
            still, as a low-cutoff filter takes it, until the gates let its memory fade; 0 starts
            from the first frame alone (a running mean of a still face).
        hold_threshold: with a number, a new face is held still until a trend test on its
            decoded frames exceeds it, and the output is the filter's estimate from then on
            (`StillHold`; about 1 when nothing moves); None (the default): no hold, and the
            untrained stage is the identity.
        hold_initial_memory: the extra weight of a sequence's first frame in the held mean.
        hold_memory: frames of the hold's forgetting (the longest window it tests).
        rehold_after: frames without a detected trend after which a face that moved is held
            again; None: only new sequences are held.
        hold_in_training: False shows the filter's estimate while the module trains (the hold
            still runs, and holds in eval mode): the hold learns nothing, and held frames would
            carry no gradient, so the filter then learns from every frame.

    The state is one group: estimate (B, L, 2) heatmap pixels, velocity (B, 4), face and
    landmark activity (B, 1), (B, L), face and landmark drift (B, 4), (B, L, 2), face and
    landmark memory (B, 1), (B, L), started (B, 1); with a hold, a second group (`StillHold`'s
    sums). All zeros is a new sequence.
    """

    landmark_wise = False

    def __init__(
        self,
        num_landmarks: int,
        threshold: float = PDC_THRESHOLD,
        max_smoothing: float = 0.95,
        activity_smoothing: float = 0.2,
        initial_memory: float = 0.0,
        hold_threshold: float | None = None,
        hold_initial_memory: float = 8.0,
        hold_memory: float = 256.0,
        rehold_after: int | None = None,
        hold_in_training: bool = True,
    ) -> None:
        super().__init__()
        check_ints(num_landmarks=num_landmarks)
        if not 0.0 < max_smoothing < 1.0:
            raise ValueError(f"max_smoothing must be in (0, 1), got {max_smoothing}")
        if not 0.0 < activity_smoothing <= 1.0:
            raise ValueError(f"activity_smoothing must be in (0, 1], got {activity_smoothing}")
        if not (math.isfinite(initial_memory) and initial_memory >= 0.0):
            raise ValueError(f"initial_memory must be a finite number >= 0, got {initial_memory}")
        self.num_landmarks = num_landmarks
        self.threshold = threshold
        self.max_smoothing = max_smoothing
        self.activity_smoothing = activity_smoothing
        self.initial_memory = initial_memory
        self.hold = (
            None
            if hold_threshold is None
            else StillHold(hold_threshold, hold_initial_memory, hold_memory, rehold_after)
        )
        if not isinstance(hold_in_training, bool):
            raise ValueError(f"hold_in_training must be true or false, got {hold_in_training!r}")
        self.hold_in_training = hold_in_training
        self.config = {
            "num_landmarks": num_landmarks,
            "threshold": threshold,
            "max_smoothing": max_smoothing,
            "activity_smoothing": activity_smoothing,
            "initial_memory": initial_memory,
        }
        if self.hold is not None:
            self.config.update(
                hold_threshold=hold_threshold,
                hold_initial_memory=hold_initial_memory,
                hold_memory=hold_memory,
                rehold_after=rehold_after,
                hold_in_training=self.hold_in_training,
            )
        # Face gates: (innovation, velocity, face activity, face drift) -> (keep_face, beta)
        # logits.
        self.face_gate = nn.Linear(4, 2)
        # Landmark gate: (its residual, its activity, face activity, its drift) -> keep logit.
        self.landmark_gate = nn.Linear(4, 1)
        for gate in (self.face_gate, self.landmark_gate):
            nn.init.zeros_(gate.weight)
            nn.init.zeros_(gate.bias)
        # Strengths of (face smoothing, velocity, landmark smoothing); zero: the identity.
        self.strength = nn.Parameter(torch.zeros(3))

    def state_names(self) -> list[str]:
        return [name for group in self._state_layout(1, 1, 1)[0] for name in group]

    def _state_layout(self, batch: int, height: int, width: int) -> tuple[StateLayout, str]:
        landmarks = self.num_landmarks
        group = {
            "estimate": ((batch, landmarks, 2), "batch, L, 2"),
            "velocity": ((batch, 4), "batch, 4"),
            "face_activity": ((batch, 1), "batch, 1"),
            "landmark_activity": ((batch, landmarks), "batch, L"),
            "face_drift": ((batch, 4), "batch, 4"),
            "landmark_drift": ((batch, landmarks, 2), "batch, L, 2"),
            "face_memory": ((batch, 1), "batch, 1"),
            "landmark_memory": ((batch, landmarks), "batch, L"),
            "started": ((batch, 1), "batch, 1"),
        }
        if self.hold is None:
            return [group], f"one ({', '.join(group)}) group"
        hold = self.hold.layout(batch, landmarks)
        return [group, hold], f"two groups, ({', '.join(group)}) and ({', '.join(hold)})"

    def _step(self, heatmaps: Tensor, state: State) -> tuple[Tensor, State]:
        (
            estimate,
            velocity,
            face_activity,
            landmark_activity,
            face_drift,
            landmark_drift,
            face_memory,
            landmark_memory,
            started,
        ) = state[0]
        points = pdc(heatmaps, threshold=self.threshold).to(estimate.dtype)
        # A new sequence starts from its first frame, still: every running quantity restarts.
        estimate = points + started[..., None] * (estimate - points)
        fresh = (1 - started) * self.initial_memory
        velocity, face_memory, landmark_memory = (
            started * velocity,
            started * face_memory + fresh,
            started * landmark_memory + fresh,
        )
        predicted = estimate + apply_similarity(velocity, estimate)
        coefficients, residual = split_similarity(points - predicted, predicted)

        # Motion features relative to the face's size, so the gates do not depend on it.
        _, norm = similarity_basis(predicted)
        size = (norm[..., 0] / self.num_landmarks).sqrt()  # (B, 1) rms distance to the centre
        relative = torch.cat((coefficients[:, :2] / size, coefficients[:, 2:]), dim=-1)
        innovation = relative.norm(dim=-1, keepdim=True)
        motion = torch.cat((velocity[:, :2] / size, velocity[:, 2:]), dim=-1)
        speed = motion.norm(dim=-1, keepdim=True)
        own_step = residual / size[..., None]  # (B, L, 2)
        own = own_step.norm(dim=-1)  # (B, L)

        def running(average: Tensor, value: Tensor) -> Tensor:
            average = started.view(-1, *[1] * (average.dim() - 1)) * average
            return average + self.activity_smoothing * (value - average)

        face_activity = running(face_activity, innovation)
        landmark_activity = running(landmark_activity, own)
        face_drift = running(face_drift, relative)
        landmark_drift = running(landmark_drift, own_step)
        # Drift: how much of the innovation keeps one direction (the averaged signed innovation
        # over the averaged size, in [0, 1]). Noise around a followed track averages out (about
        # 0.3 at activity_smoothing 0.2) whatever its level; an unfollowed move does not. It is
        # what tells a noisy still face from a moving one, which the innovation's size cannot.
        face_consistency = face_drift.norm(dim=-1, keepdim=True) / (face_activity + _EPS)
        landmark_consistency = landmark_drift.norm(dim=-1) / (landmark_activity + _EPS)

        face_features = (innovation, speed, face_activity, face_consistency)
        face_logits = self.face_gate(torch.cat([_log_feature(v) for v in face_features], dim=-1))
        landmark_features = (
            own,
            landmark_activity,
            face_activity.expand_as(own),
            landmark_consistency,
        )
        landmark_logit = self.landmark_gate(
            torch.stack([_log_feature(v) for v in landmark_features], dim=-1)
        )[..., 0]  # (B, L)
        # Clamped to [0, 1] going forward, but the gradient passes as if unclamped: a strength
        # the optimiser once pushed below 0 would otherwise never come back (the velocity's did).
        strength = self.strength + (self.strength.clamp(0, 1) - self.strength).detach()
        # Each gain is 1 / n, n the frames its average holds: the gate sets the share of that
        # memory kept (n_t = 1 + keep * n_{t-1}). Kept whole, the estimate is the running mean
        # of a still face (the best a causal estimate of a constant can do); a constant keep k
        # is a fixed gain 1 - k, as an exponential average.
        keep_face = self.max_smoothing * strength[0] * torch.sigmoid(face_logits[:, :1])
        keep_landmark = self.max_smoothing * strength[2] * torch.sigmoid(landmark_logit)
        face_memory = 1 + keep_face * face_memory
        landmark_memory = 1 + keep_landmark * landmark_memory
        beta = strength[1] * torch.sigmoid(face_logits[:, 1:])

        estimate = (
            predicted
            + apply_similarity(coefficients / face_memory, predicted)
            + residual / landmark_memory[..., None]
        )
        velocity = velocity + beta * coefficients
        shown, held = estimate, ()
        if self.hold is not None:
            held_points, hold_state = self.hold.step(points, estimate, state[1])
            held = (hold_state,)
            if self.hold_in_training or not self.training:
                shown = held_points
        out = render_points(shown, *heatmaps.shape[-2:], self.threshold).to(heatmaps.dtype)
        state = (
            (
                estimate,
                velocity,
                face_activity,
                landmark_activity,
                face_drift,
                landmark_drift,
                face_memory,
                landmark_memory,
                torch.ones_like(started),
            ),
            *held,
        )
        return out, state
