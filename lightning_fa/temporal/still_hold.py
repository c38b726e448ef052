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
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_fa.checks import check_ints

_TINY = 1e-12


class HoldState(NamedTuple):
    """The hold's state: the window's first frame and its weighted sums over the frames since
    (exponential forgetting, weights w; ages a, offsets d from the anchor), then the anchor's
    prior weight, the frames in the window and whether the output holds. Batch first; all
    zeros is a new sequence."""

    anchor: Tensor  # (B, L, 2)
    weight: Tensor  # sum w, (B, 1)
    age: Tensor  # sum w a
    age_square: Tensor  # sum w a^2
    weight2: Tensor  # sum w^2, for the variance of a weighted fit
    age2: Tensor  # sum w^2 a
    age_square2: Tensor  # sum w^2 a^2
    offset: Tensor  # sum w d, (B, L, 2)
    age_offset: Tensor  # sum w a d, (B, L, 2)
    offset_square: Tensor  # sum w |d|^2 over all coordinates, (B, 1)
    prior: Tensor
    frames: Tensor
    active: Tensor


# The state tensors' names (the exported graph's inputs and outputs).
HOLD_STATE = tuple(f"hold_{name}" for name in HoldState._fields)


def _aged(weight: Tensor, age: Tensor, age_square: Tensor, decay: float):
    """The sums of weights, weight x age and weight x age^2 once every frame has aged by one
    (its weight times ``decay``) and a new frame has joined at age 0 with weight 1."""
    return (
        decay * weight + 1,
        decay * (age + weight),
        decay * (age_square + 2 * age + weight),
    )


def _where(mask: Tensor, value: Tensor, other: Tensor) -> Tensor:
    """``torch.where`` with a (B, 1) mask over a batch-first tensor of any rank."""
    return torch.where(mask.view(mask.shape[0], *[1] * (other.dim() - 1)), value, other)


def trend_statistic(window: HoldState) -> Tensor:
    """(B, 1): the mean squared slope of a weighted least-squares line per coordinate through a
    window's frames, over its variance when nothing moves, the noise pooled over all
    coordinates (about 1 when nothing moves; 0 for windows under 3 frames, which have no
    residual).

    The weights are not inverse variances (every frame is as noisy), so the slope's variance is
    sigma^2 sum w^2 (a - mean a)^2 / D^2 with D = sum w (a - mean a)^2, and the residual's
    expected weighted sum of squares is sigma^2 (sum w - tr(M^-1 N)), M and N the fit's moment
    matrices with w and w^2; without forgetting these are sigma^2 / D and sigma^2 (n - 2).
    """
    weight, age, age_square, weight2, age2, age_square2, offset, age_offset = window[1:9]
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
    residual = (window.offset_square - mean_square - spread * slope_square).clamp_min(_TINY)
    statistic = slope_square * spread.square() * dof / (residual * spread2.clamp_min(_TINY))
    return torch.where(window.frames >= 3, statistic, torch.zeros_like(statistic))


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
        """Decoded points and the tracked estimate (B, L, 2), the hold's state (`HoldState`
        order; all zeros: a new sequence) -> (the output points, the new state)."""
        old = HoldState(*state)
        new = old.frames == 0
        anchor = _where(new, points, old.anchor)
        prior = torch.where(new, torch.full_like(old.prior, self.initial_memory), old.prior)

        # Every frame in the window ages by one, then this frame joins at age 0.
        lam = self.forgetting
        step = points - anchor
        window = HoldState(
            anchor,
            *_aged(old.weight, old.age, old.age_square, lam),
            *_aged(old.weight2, old.age2, old.age_square2, lam * lam),
            offset=lam * old.offset + step,
            age_offset=lam * (old.age_offset + old.offset),
            offset_square=lam * old.offset_square + step.square().sum(dim=(-2, -1))[:, None],
            prior=lam * prior,
            frames=old.frames + 1,
            active=torch.where(new, torch.ones_like(old.active), old.active),
        )
        moving = trend_statistic(window) > self.threshold
        held = anchor + window.offset / (window.weight + window.prior)[..., None]

        # A detected move releases the hold and restarts the window at this frame: a window of
        # one frame, no prior.
        one, zero = torch.ones_like(window.weight), torch.zeros_like(window.weight)
        zeros = torch.zeros_like(window.offset)
        restart = HoldState(
            anchor=points,
            weight=one,
            age=zero,
            age_square=zero,
            weight2=one,
            age2=zero,
            age_square2=zero,
            offset=zeros,
            age_offset=zeros,
            offset_square=zero,
            prior=zero,
            frames=one,
            active=zero,
        )
        window = HoldState(*(_where(moving, a, b) for a, b in zip(restart, window)))
        if self.rehold_after is not None:
            window = window._replace(
                active=torch.where(window.frames >= self.rehold_after, one, window.active)
            )
        return _where(window.active > 0, held, tracked), tuple(window)
