"""Heatmap losses: the paper's Jitter loss (Eq. 2, 3, 7) and pixel-loss baselines (SPEC 4).

Pixel losses take (..., H, W) prediction / target heatmaps and return a scalar mean. The Jitter
loss is the one sequence-aware loss: it needs (B, T, L, H, W) heatmaps and the ground-truth
coordinates; systems call the pixel baselines on frames flattened into the batch.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_fa.heatmaps import PDC_THRESHOLD, pdc


def _check_pair(
    pred: Tensor, target: Tensor, layout: str = "(..., H, W)", ndim: int | None = None
) -> None:
    """Same shape, at least 2 dims (H, W), exactly `ndim` when given; `layout` names it in errors."""
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape {layout}; "
            f"got pred {tuple(pred.shape)} and target {tuple(target.shape)}"
        )
    if pred.ndim < 2 or (ndim is not None and pred.ndim != ndim):
        raise ValueError(f"pred and target must have shape {layout}; got {tuple(pred.shape)}")


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive; got {value}")


def _check_theta(theta: float) -> None:
    # theta = 0 is the first point of the paper's Table 3: the loss has no gradient at all.
    if not theta >= 0:
        raise ValueError(f"theta must be >= 0; got {theta}")


# --------------------------------------------------------------------------------------------
# Elementwise pixel losses
# --------------------------------------------------------------------------------------------


def geman_mcclure(pred: Tensor, target: Tensor, theta: float) -> Tensor:
    """Elementwise Geman-McClure (paper Eq. 7): d^2 / (d^2 + theta^2), d = pred - target.

    theta = 0 gives the limit: 1 wherever d != 0, 0 where d == 0 (constant: no gradient).
    """
    _check_theta(theta)
    squared = (pred - target) ** 2
    if theta == 0:
        return (squared > 0).to(squared.dtype)
    return squared / (squared + theta**2)


def wing(pred: Tensor, target: Tensor, omega: float = 10.0, epsilon: float = 2.0) -> Tensor:
    """Elementwise Wing loss (Feng et al. 2018): log-shaped below omega, linear above."""
    _check_positive(omega=omega, epsilon=epsilon)
    delta = (pred - target).abs()
    # The constant joins the two pieces continuously at |d| = omega.
    joint = omega - omega * math.log1p(omega / epsilon)
    return torch.where(delta < omega, omega * torch.log1p(delta / epsilon), delta - joint)


def adaptive_wing(
    pred: Tensor,
    target: Tensor,
    alpha: float = 2.1,
    omega: float = 14.0,
    epsilon: float = 1.0,
    theta: float = 0.5,
) -> Tensor:
    """Elementwise Adaptive Wing loss (Wang et al. 2019); the exponent alpha - y adapts per pixel."""
    _check_positive(omega=omega, epsilon=epsilon, theta=theta)
    delta = (pred - target).abs()
    power = alpha - target
    ratio = theta / epsilon
    # Slope and offset make the linear piece meet the log piece with a continuous gradient.
    slope = omega / (1 + ratio**power) * power * ratio ** (power - 1) / epsilon
    offset = theta * slope - omega * torch.log1p(ratio**power)
    return torch.where(
        delta < theta, omega * torch.log1p((delta / epsilon) ** power), slope * delta - offset
    )


def awing_weight_map(target: Tensor, weight: float = 10.0, threshold: float = 0.2) -> Tensor:
    """AWing's W = 1 + weight * M, M = 3x3 dilation of (target > threshold); same shape as target."""
    if target.ndim < 2:
        raise ValueError(f"target must have shape (..., H, W); got {tuple(target.shape)}")
    maps = target.detach().reshape(-1, 1, *target.shape[-2:])
    # Grey dilation then threshold equals binary dilation of the thresholded map.
    dilated = F.max_pool2d(maps, kernel_size=3, stride=1, padding=1).reshape(target.shape)
    return 1 + weight * (dilated > threshold).to(target.dtype)


# --------------------------------------------------------------------------------------------
# Pixel-loss modules: forward(pred, target) -> scalar mean over every element
# --------------------------------------------------------------------------------------------


class PixelLoss(nn.Module):
    """The pixel baselines' base: `forward(pred, target) -> scalar` on (..., H, W) heatmaps,
    a loss that knows nothing of time. A system's own pixel loss subclasses it (the systems'
    configs accept its subclasses)."""

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError


class HeatmapMSELoss(PixelLoss):
    """Mean squared error over all heatmap pixels."""

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _check_pair(pred, target)
        return F.mse_loss(pred, target)


class WingLoss(PixelLoss):
    """Mean Wing loss over all heatmap pixels."""

    def __init__(self, omega: float = 10.0, epsilon: float = 2.0) -> None:
        super().__init__()
        _check_positive(omega=omega, epsilon=epsilon)
        self.omega = omega
        self.epsilon = epsilon

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _check_pair(pred, target)
        return wing(pred, target, self.omega, self.epsilon).mean()


class AdaptiveWingLoss(PixelLoss):
    """Mean Adaptive Wing loss, optionally weighted by the dilated-foreground map of the target."""

    def __init__(
        self,
        alpha: float = 2.1,
        omega: float = 14.0,
        epsilon: float = 1.0,
        theta: float = 0.5,
        weight_map: bool = False,
        weight: float = 10.0,
    ) -> None:
        super().__init__()
        _check_positive(omega=omega, epsilon=epsilon, theta=theta)
        self.alpha = alpha
        self.omega = omega
        self.epsilon = epsilon
        self.theta = theta
        self.weight_map = weight_map
        self.weight = weight

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _check_pair(pred, target)
        loss = adaptive_wing(pred, target, self.alpha, self.omega, self.epsilon, self.theta)
        if self.weight_map:
            loss = loss * awing_weight_map(target, self.weight)
        return loss.mean()


class GemanMcClureLoss(PixelLoss):
    """Mean Geman-McClure loss over all heatmap pixels (the Jitter loss without modulation)."""

    def __init__(self, theta: float = 1.0) -> None:
        super().__init__()
        _check_theta(theta)
        self.theta = theta

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _check_pair(pred, target)
        return geman_mcclure(pred, target, self.theta).mean()


# --------------------------------------------------------------------------------------------
# Jitter loss
# --------------------------------------------------------------------------------------------


def _safe_norm(vectors: Tensor) -> Tensor:
    """Euclidean norm over the last dim whose gradient at the zero vector is 0, not NaN."""
    squared = (vectors**2).sum(-1)
    nonzero = squared > 0
    # The inner where keeps sqrt away from 0, so its infinite derivative never meets a 0 grad.
    return torch.where(nonzero, torch.where(nonzero, squared, 1.0).sqrt(), 0.0)


def jitter_modulation(
    u_t: Tensor,
    u_prev: Tensor,
    gt_t: Tensor,
    gt_prev: Tensor,
    theta: float = 1.0,
    xi: float = 1e-3,
) -> Tensor:
    """Psi (paper Eq. 3/4): min(||e_t - e_prev|| / (||gt_t - gt_prev|| + xi), theta), e = u - gt.

    All inputs are (..., L, 2) coordinates in heatmap pixels; returns (..., L).
    """
    shapes = {tuple(t.shape) for t in (u_t, u_prev, gt_t, gt_prev)}
    if len(shapes) != 1 or u_t.ndim < 2 or u_t.shape[-1] != 2:
        raise ValueError(
            "u_t, u_prev, gt_t, gt_prev must share one shape (..., L, 2); got "
            f"{tuple(u_t.shape)}, {tuple(u_prev.shape)}, {tuple(gt_t.shape)}, {tuple(gt_prev.shape)}"
        )
    _check_theta(theta)
    _check_positive(xi=xi)
    inconsistency = _safe_norm((u_t - gt_t) - (u_prev - gt_prev))
    gt_offset = _safe_norm(gt_t - gt_prev)
    return torch.clamp(inconsistency / (gt_offset + xi), max=theta)


class JitterLoss(nn.Module):
    """Jitter loss (paper Eq. 2): mean over (sample, frame, landmark) of Psi * Geman-McClure.

    The pixel loss uses the same theta as the cap on Psi (paper Eq. 7); theta = 0 (paper Table 3)
    leaves no gradient, so the ConvLSTM stays the identity, i.e. the backbone. Predicted coordinates
    come from PDC (threshold / relative as in `lightning_fa.heatmaps.pdc`). Frame 0 of a
    sequence has weight 1; a TBPTT chunk that continues a sequence passes the previous chunk's
    last predicted and ground-truth coordinates so that its frame 0 is modulated too.

    Beyond the paper: `coord_weight` > 0 adds `coord_weight * mean(Psi * rho(||u_t - g_t||))`,
    the same modulation on the distance between decoded and target coordinates (heatmap pixels).
    With targets a fraction of a pixel from the backbone's, the heatmap loss is dominated by map
    shape, not position; this term acts on the position itself. `coord_loss` picks rho: "l1" (the
    distance) or "geman_mcclure" (d^2 / (d^2 + coord_theta^2)). coord_weight = 0 is the paper's loss.

    Beyond the paper: `pixel_weight` > 0 weights every frame's pixel loss by `Psi + pixel_weight`.
    Psi is small wherever the truth moves much more than the error changes, so in Eq. 2 a steady
    lag behind a fast move costs almost nothing; the floor makes a stage that smooths by
    remembering past frames pay for that lag. pixel_weight = 0 is the paper's loss.

    Beyond the paper: `position_weight` > 0 adds `position_weight * mean(rho(||u_t - g_t||))`,
    unmodulated: the lag cost for a stage whose output maps carry only a position (a stage that
    renders its estimate, such as `FaceMotionStage`, has no meaningful pixel loss).
    position_weight = 0 is the paper's loss.
    """

    def __init__(
        self,
        theta: float = 1.0,
        xi: float = 1e-3,
        threshold: float = PDC_THRESHOLD,
        relative: bool = False,
        detach_modulation: bool = False,
        coord_weight: float = 0.0,
        coord_loss: Literal["l1", "geman_mcclure"] = "l1",
        coord_theta: float = 1.0,
        pixel_weight: float = 0.0,
        position_weight: float = 0.0,
    ) -> None:
        super().__init__()
        settings = {
            "theta": theta,
            "xi": xi,
            "threshold": threshold,
            "coord_weight": coord_weight,
            "coord_theta": coord_theta,
            "pixel_weight": pixel_weight,
            "position_weight": position_weight,
        }
        for name, value in settings.items():
            if not math.isfinite(value):  # plain floats: no tensor op, no device sync
                raise ValueError(f"JitterLoss: {name} must be a finite number; got {value!r}")
        _check_theta(theta)
        _check_positive(xi=xi, coord_theta=coord_theta)
        weights = (
            ("coord_weight", coord_weight),
            ("pixel_weight", pixel_weight),
            ("position_weight", position_weight),
        )
        for name, weight in weights:
            if not weight >= 0:
                raise ValueError(f"{name} must be >= 0; got {weight}")
        if coord_loss not in ("l1", "geman_mcclure"):
            raise ValueError(f"coord_loss must be 'l1' or 'geman_mcclure'; got {coord_loss!r}")
        self.theta = theta
        self.xi = xi
        self.threshold = threshold
        self.relative = relative
        self.detach_modulation = detach_modulation
        self.coord_weight = coord_weight
        self.coord_loss = coord_loss
        self.coord_theta = coord_theta
        self.pixel_weight = pixel_weight
        self.position_weight = position_weight

    def _coordinate_loss(self, coords: Tensor, target_coords: Tensor) -> Tensor:
        """rho of the decoded-to-target distance, (B, T, L, 2) -> (B, T, L)."""
        if self.coord_loss == "l1":
            return _safe_norm(coords - target_coords)
        squared = ((coords - target_coords) ** 2).sum(-1)
        return squared / (squared + self.coord_theta**2)

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        target_coords: Tensor,
        prev_pred_coords: Tensor | None = None,
        prev_target_coords: Tensor | None = None,
        return_last_coords: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """pred / target (B, T, L, H, W), target_coords (B, T, L, 2) in heatmap pixels.

        prev_pred_coords / prev_target_coords (B, L, 2): the frame before this chunk (both or
        neither). return_last_coords=True also returns the last frame's decoded coordinates
        (B, L, 2), detached, to pass as prev_pred_coords for the next chunk.
        """
        _check_pair(pred, target, "(B, T, L, H, W)", ndim=5)
        if tuple(target_coords.shape) != (*pred.shape[:3], 2):
            raise ValueError(
                f"target_coords must have shape (B, T, L, 2) = {(*pred.shape[:3], 2)} to match "
                f"pred {tuple(pred.shape)}; got {tuple(target_coords.shape)}"
            )
        if (prev_pred_coords is None) != (prev_target_coords is None):
            raise ValueError("prev_pred_coords and prev_target_coords must be given together")

        pixel = geman_mcclure(pred, target, self.theta).mean((-2, -1))  # (B, T, L)
        coords = pdc(pred, threshold=self.threshold, relative=self.relative)  # (B, T, L, 2)
        target_coords = target_coords.to(coords.dtype)
        if prev_pred_coords is None:
            first = torch.ones_like(pixel[:, :1])
        else:
            first = jitter_modulation(
                coords[:, 0],
                prev_pred_coords.to(coords.dtype),
                target_coords[:, 0],
                prev_target_coords.to(coords.dtype),
                self.theta,
                self.xi,
            ).unsqueeze(1)
        rest = jitter_modulation(
            coords[:, 1:],
            coords[:, :-1],
            target_coords[:, 1:],
            target_coords[:, :-1],
            self.theta,
            self.xi,
        )
        psi = torch.cat((first, rest), 1)
        if self.detach_modulation:
            psi = psi.detach()
        loss = (psi * pixel).mean()
        if self.pixel_weight > 0:  # skipped at 0 so the paper's loss stays bit-identical
            loss = loss + self.pixel_weight * pixel.mean()
        if self.coord_weight > 0:  # skipped at 0 so the paper's loss stays bit-identical
            loss = (
                loss
                + self.coord_weight * (psi * self._coordinate_loss(coords, target_coords)).mean()
            )
        if self.position_weight > 0:  # skipped at 0 so the paper's loss stays bit-identical
            distance = self._coordinate_loss(coords, target_coords)
            loss = loss + self.position_weight * distance.mean()
        return (loss, coords[:, -1].detach()) if return_last_coords else loss
