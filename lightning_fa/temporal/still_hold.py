"""Holding a new face still until its raw track shows motion (issue #18; a part of
`FaceMotionStage`, not a stage of its own).

Why (docs/stabiliser-analysis.md (i)): a frozen face and the degraded-slow set's head look the
same to the learned gates (their per-frame motion is below the noise), so a stage that holds
one holds the other. The information that tells them apart is a trend over many frames, which a
statistical test reads directly: the running mean of a new face is held while a pooled
least-squares line through its frames has no slope beyond the noise, and the stage's tracked
estimate takes over from the first frame where it has.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_fa.checks import check_ints

_TINY = 1e-12

# The hold's state, in order: the window's first frame (B, L, 2) and its weighted sums over
# the frames since (exponential forgetting, weights w): w, w x age, w x age^2 (B, 1); the same
# with w^2, for the variance of a weighted fit (B, 1); w x offset from the anchor and
# w x age x offset (B, L, 2); w x squared offset (B, 1); the anchor's prior weight, the frames in
# the window and whether the output holds (B, 1).
HOLD_STATE = (
    "hold_anchor",
    "hold_weight",
    "hold_age",
    "hold_age_square",
    "hold_weight2",
    "hold_age2",
    "hold_age_square2",
    "hold_offset",
    "hold_age_offset",
    "hold_offset_square",
    "hold_prior",
    "hold_frames",
    "holding",
)


def trend_statistic(sums: tuple[Tensor, ...], frames: Tensor) -> Tensor:
    """(B, 1): the mean squared slope of a weighted least-squares line per coordinate through a
    window's frames, over its variance when nothing moves, the noise pooled over all
    coordinates (about 1 when nothing moves; 0 for windows under 3 frames, which have no
    residual).

    ``sums`` are the window's weighted sums over its frames (weights w, ages a, offsets d from
    its first frame, (B, L, 2)), in `HOLD_STATE` order: sum w, sum w a, sum w a^2, sum w^2,
    sum w^2 a, sum w^2 a^2 (B, 1), sum w d, sum w a d (B, L, 2), sum w |d|^2 over all
    coordinates (B, 1). The weights are not inverse variances (every frame is as noisy), so the
    slope's variance is sigma^2 sum w^2 (a - mean a)^2 / D^2 with D = sum w (a - mean a)^2, and
    the residual's expected weighted sum of squares is sigma^2 (sum w - tr(M^-1 N)), M and N
    the fit's moment matrices with w and w^2; without forgetting these are sigma^2 / D and
    sigma^2 (n - 2).
    """
    weight, age, age_square, weight2, age2, age_square2, offset, age_offset, offset_square = sums
    weight = weight.clamp_min(_TINY)
    mean_age = age / weight
    spread = (age_square - age * mean_age).clamp_min(_TINY)  # D, (B, 1)
    spread2 = (
        age_square2 - 2 * mean_age * age2 + mean_age.square() * weight2
    )  # sum w^2 (a - mean)^2
    determinant = (weight * age_square - age.square()).clamp_min(_TINY)
    fitted = (age_square * weight2 - 2 * age * age2 + weight * age_square2) / determinant
    dof = (weight - fitted).clamp_min(0)
    slope_square = (
        ((age_offset - mean_age[..., None] * offset) / spread[..., None]).square().sum(dim=(-2, -1))
    )[:, None]
    mean_square = offset.square().sum(dim=(-2, -1))[:, None] / weight
    residual = (offset_square - mean_square - spread * slope_square).clamp_min(_TINY)
    statistic = slope_square * spread.square() * dof / (residual * spread2.clamp_min(_TINY))
    return torch.where(frames >= 3, statistic, torch.zeros_like(statistic))


class StillHold:
    """The test and the held estimate, on the decoded points of each frame (no parameters).

    A new sequence is held: the output is the weighted mean of its frames, the first counted
    ``1 + initial_memory`` times (a face taken as still, as a low-cutoff filter takes it). Each
    frame `trend_statistic` tests the frames since the window began; above ``threshold`` the
    face is moving: the hold is released (the output becomes the tracked estimate) and the
    window restarts at that frame. With ``rehold_after`` = K, a face whose window reaches K
    frames without a detected trend is held again (its mean over the window); None holds only
    new sequences.

    Args:
        threshold: the statistic above which the face moves (about 1 when still).
        initial_memory: the extra weight of a sequence's first frame in the held mean, >= 0.
        memory: frames of the exponential forgetting of the window's sums (a window of about
            this length; bounds the sums of a long still stream).
        rehold_after: frames without a detected trend after which a face is held again, >= 3,
            or None.
    """

    def __init__(
        self,
        threshold: float,
        initial_memory: float,
        memory: float,
        rehold_after: int | None,
    ) -> None:
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"hold_threshold must be a finite number > 0, got {threshold}")
        if not (math.isfinite(initial_memory) and initial_memory >= 0):
            raise ValueError(
                f"hold_initial_memory must be a finite number >= 0, got {initial_memory}"
            )
        if not (math.isfinite(memory) and memory > 1):
            raise ValueError(f"hold_memory must be a finite number > 1, got {memory}")
        if rehold_after is not None:
            check_ints(rehold_after=rehold_after)
            if rehold_after < 3:
                raise ValueError(f"rehold_after must be >= 3 or None, got {rehold_after}")
        self.threshold = threshold
        self.initial_memory = initial_memory
        self.forgetting = 1 - 1 / memory
        self.rehold_after = rehold_after

    @staticmethod
    def layout(batch: int, landmarks: int) -> dict[str, tuple[tuple[int, ...], str]]:
        points = ((batch, landmarks, 2), "batch, L, 2")
        scalar = ((batch, 1), "batch, 1")
        shapes = (points, *[scalar] * 6, points, points, *[scalar] * 4)
        return dict(zip(HOLD_STATE, shapes))

    def step(
        self, points: Tensor, tracked: Tensor, state: tuple[Tensor, ...]
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Decoded points and the tracked estimate (B, L, 2), the hold's state (all zeros: a new
        sequence) -> (the output points, the new state)."""
        (
            anchor,
            weight,
            age,
            age_square,
            weight2,
            age2,
            age_square2,
            offset,
            age_offset,
            offset_square,
            prior,
            frames,
            holding,
        ) = state
        new = frames == 0
        anchor = torch.where(new[..., None], points, anchor)
        prior = torch.where(new, torch.full_like(prior, self.initial_memory), prior)
        holding = torch.where(new, torch.ones_like(holding), holding)

        # Every frame in the window ages by one, then this frame joins at age 0.
        lam = self.forgetting
        age_square = lam * (age_square + 2 * age + weight)
        age_offset = lam * (age_offset + offset)
        age = lam * (age + weight)
        weight = lam * weight + 1
        lam2 = lam * lam
        age_square2 = lam2 * (age_square2 + 2 * age2 + weight2)
        age2 = lam2 * (age2 + weight2)
        weight2 = lam2 * weight2 + 1
        step = points - anchor
        offset = lam * offset + step
        offset_square = lam * offset_square + step.square().sum(dim=(-2, -1))[:, None]
        prior = lam * prior
        frames = frames + 1

        sums = (weight, age, age_square, weight2, age2, age_square2, offset, age_offset)
        statistic = trend_statistic((*sums, offset_square), frames)
        moving = statistic > self.threshold
        held = anchor + offset / (weight + prior)[..., None]

        # A detected move releases the hold and restarts the window at this frame.
        zero = torch.zeros_like(weight)
        anchor = torch.where(moving[..., None], points, anchor)
        weight, weight2 = (torch.where(moving, torch.ones_like(v), v) for v in (weight, weight2))
        age, age_square, age2, age_square2, offset_square, prior = (
            torch.where(moving, zero, value)
            for value in (age, age_square, age2, age_square2, offset_square, prior)
        )
        offset, age_offset = (
            torch.where(moving[..., None], torch.zeros_like(value), value)
            for value in (offset, age_offset)
        )
        frames = torch.where(moving, torch.ones_like(frames), frames)
        holding = torch.where(moving, zero, holding)
        if self.rehold_after is not None:
            holding = torch.where(frames >= self.rehold_after, torch.ones_like(holding), holding)

        out = torch.where(holding[..., None] > 0, held, tracked)
        state = (
            anchor,
            weight,
            age,
            age_square,
            weight2,
            age2,
            age_square2,
            offset,
            age_offset,
            offset_square,
            prior,
            frames,
            holding,
        )
        return out, state
