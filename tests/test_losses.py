"""Losses: Jitter loss against a literal transcription of paper Eq. 2/3/7, baselines vs formulas."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_fa.heatmaps import pdc, render_gaussian
from lightning_fa.losses import (
    AdaptiveWingLoss,
    GemanMcClureLoss,
    HeatmapMSELoss,
    JitterLoss,
    WingLoss,
    adaptive_wing,
    geman_mcclure,
    jitter_modulation,
    wing,
)


def literal_psi(u_t, u_prev, gt_t, gt_prev, theta: float, xi: float) -> float:
    """Eq. 3 for one landmark, on plain floats."""
    ex = (u_t[0] - gt_t[0]) - (u_prev[0] - gt_prev[0])
    ey = (u_t[1] - gt_t[1]) - (u_prev[1] - gt_prev[1])
    cx, cy = gt_t[0] - gt_prev[0], gt_t[1] - gt_prev[1]
    return min(math.hypot(ex, ey) / (math.hypot(cx, cy) + xi), theta)


def literal_coordinate_rho(u, gt, coord_loss: str, coord_theta: float) -> float:
    """The coordinate term's rho for one landmark: distance, or Geman-McClure of it."""
    distance = math.hypot(u[0] - gt[0], u[1] - gt[1])
    if coord_loss == "l1":
        return distance
    return distance**2 / (distance**2 + coord_theta**2)


def literal_jitter_loss(
    pred,
    target,
    target_coords,
    theta,
    xi,
    threshold,
    prev=None,
    coord_weight=0.0,
    coord_loss="l1",
    coord_theta=1.0,
    pixel_weight=0.0,
    position_weight=0.0,
) -> float:
    """Eq. 2 with Eq. 7 pixel loss (+ coord_weight * Psi * rho(||u - g||), + pixel_weight * the
    pixel loss unmodulated, + position_weight * rho(||u - g||) unmodulated), as plain loops.

    Coordinates u_t come from `pdc`, which test_heatmaps checks against Algorithm 1.
    """
    batch, frames, landmarks, height, width = pred.shape
    coords = pdc(pred, threshold=threshold).tolist()
    gt = target_coords.tolist()
    total = 0.0
    for b in range(batch):
        for t in range(frames):
            for k in range(landmarks):
                pixel = 0.0
                for y in range(height):
                    for x in range(width):
                        d = float(pred[b, t, k, y, x] - target[b, t, k, y, x])
                        pixel += d * d / (d * d + theta * theta)
                pixel /= height * width
                if t > 0:
                    psi = literal_psi(
                        coords[b][t][k],
                        coords[b][t - 1][k],
                        gt[b][t][k],
                        gt[b][t - 1][k],
                        theta,
                        xi,
                    )
                elif prev is not None:
                    psi = literal_psi(
                        coords[b][0][k],
                        prev[0][b][k].tolist(),
                        gt[b][0][k],
                        prev[1][b][k].tolist(),
                        theta,
                        xi,
                    )
                else:
                    psi = 1.0
                rho = literal_coordinate_rho(coords[b][t][k], gt[b][t][k], coord_loss, coord_theta)
                total += psi * (pixel + coord_weight * rho) + pixel_weight * pixel
                total += position_weight * rho
    return total / (batch * frames * landmarks)


def _sequence(batch=2, frames=4, landmarks=3, size=8, dtype=torch.float64):
    """Predicted heatmaps near Gaussian targets that drift a little from frame to frame."""
    target_coords = torch.rand(batch, 1, landmarks, 2, dtype=dtype) * 3 + 2
    target_coords = target_coords + torch.randn(batch, frames, landmarks, 2, dtype=dtype) * 0.5
    target = render_gaussian(target_coords, size, size, sigma=1.0)
    pred_coords = target_coords + torch.randn_like(target_coords) * 0.3
    pred = render_gaussian(pred_coords, size, size, sigma=1.2) + 0.05 * torch.rand_like(target)
    return pred, target, target_coords


@pytest.mark.parametrize(("theta", "xi"), [(1.0, 1e-3), (0.3, 0.1)])
def test_jitter_loss_matches_literal_equations(theta: float, xi: float) -> None:
    pred, target, target_coords = _sequence()
    loss = JitterLoss(theta=theta, xi=xi, threshold=0.2)(pred, target, target_coords)
    expected = literal_jitter_loss(pred, target, target_coords, theta, xi, threshold=0.2)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_single_frame_has_weight_one() -> None:
    pred, target, target_coords = _sequence(frames=1)
    loss = JitterLoss(theta=0.7)(pred, target, target_coords)
    d2 = (pred - target) ** 2
    assert loss.item() == pytest.approx((d2 / (d2 + 0.49)).mean().item(), rel=1e-12)


def test_chunk_continuation_equals_whole_sequence() -> None:
    pred, target, target_coords = _sequence(frames=6)
    loss_fn = JitterLoss()
    whole = loss_fn(pred, target, target_coords)
    first, last_coords = loss_fn(
        pred[:, :2], target[:, :2], target_coords[:, :2], return_last_coords=True
    )
    torch.testing.assert_close(last_coords, pdc(pred[:, 1]))
    second = loss_fn(
        pred[:, 2:],
        target[:, 2:],
        target_coords[:, 2:],
        prev_pred_coords=last_coords,
        prev_target_coords=target_coords[:, 1],
    )
    torch.testing.assert_close((2 * first + 4 * second) / 6, whole)
    prev = (last_coords, target_coords[:, 1])
    expected = literal_jitter_loss(
        pred[:, 2:], target[:, 2:], target_coords[:, 2:], 1.0, 1e-3, 0.2, prev
    )
    assert second.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(
    ("coord_weight", "coord_loss", "coord_theta"),
    [(1.0, "l1", 1.0), (5.0, "geman_mcclure", 0.5), (0.3, "geman_mcclure", 2.0)],
)
@pytest.mark.parametrize("continued", [False, True])
def test_coordinate_term_matches_literal_loop(
    coord_weight: float, coord_loss: str, coord_theta: float, continued: bool
) -> None:
    pred, target, target_coords = _sequence(frames=3)
    prev = (target_coords[:, 0] + 0.3, target_coords[:, 0] - 0.2) if continued else None
    loss_fn = JitterLoss(
        theta=1.0, coord_weight=coord_weight, coord_loss=coord_loss, coord_theta=coord_theta
    )
    loss = loss_fn(pred, target, target_coords, *(prev or ()))
    expected = literal_jitter_loss(
        pred, target, target_coords, 1.0, 1e-3, 0.2, prev, coord_weight, coord_loss, coord_theta
    )
    assert loss.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("pixel_weight", [0.5, 2.0])
@pytest.mark.parametrize("continued", [False, True])
def test_pixel_weight_matches_literal_loop(pixel_weight: float, continued: bool) -> None:
    pred, target, target_coords = _sequence(frames=3)
    prev = (target_coords[:, 0] + 0.3, target_coords[:, 0] - 0.2) if continued else None
    loss = JitterLoss(theta=0.8, xi=0.01, pixel_weight=pixel_weight)(
        pred, target, target_coords, *(prev or ())
    )
    expected = literal_jitter_loss(
        pred, target, target_coords, 0.8, 0.01, 0.2, prev, pixel_weight=pixel_weight
    )
    assert loss.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("coord_loss", ["l1", "geman_mcclure"])
def test_position_weight_matches_literal_loop(coord_loss: str) -> None:
    pred, target, target_coords = _sequence(frames=3)
    loss = JitterLoss(theta=0.8, xi=0.01, position_weight=0.7, coord_loss=coord_loss)(
        pred, target, target_coords
    )
    expected = literal_jitter_loss(
        pred, target, target_coords, 0.8, 0.01, 0.2, position_weight=0.7, coord_loss=coord_loss
    )
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_psi_is_at_its_cap_on_a_still_face_where_it_has_no_gradient() -> None:
    """On a still face any jitter above theta * xi puts Psi at theta, where Eq. 2 has no
    gradient to make the face steadier (docs/stabiliser-analysis.md (g))."""
    truth = torch.full((1, 2, 1, 2), 4.0, dtype=torch.float64)
    track = (
        truth + torch.tensor([[[[0.0, 0.0]]], [[[0.05, 0.0]]]]).view(1, 2, 1, 2)
    ).requires_grad_()
    psi = jitter_modulation(track[:, 1], track[:, 0], truth[:, 1], truth[:, 0], 1.0, 1e-3)
    assert psi.item() == 1.0
    (gradient,) = torch.autograd.grad(psi.sum(), track)
    assert torch.count_nonzero(gradient) == 0


def test_pixel_weight_charges_a_steady_lag_that_psi_ignores() -> None:
    """A prediction that trails a fast move by a constant offset: its error does not change, so
    Psi is 0 on every frame after the first and Eq. 2 barely sees the lag; the floor does."""
    frames, size = 6, 24
    # Whole-pixel centres well inside the map: PDC decodes each Gaussian exactly.
    truth = torch.stack([torch.tensor([5.0 + 2.0 * t, 12.0]) for t in range(frames)])
    truth = truth.view(1, frames, 1, 2).double()
    lagging = truth - torch.tensor([2.0, 0.0], dtype=torch.float64)
    target = render_gaussian(truth, size, size, sigma=1.0)
    pred = render_gaussian(lagging, size, size, sigma=1.0)
    paper = JitterLoss()(pred, target, truth)
    floored = JitterLoss(pixel_weight=1.0)(pred, target, truth)
    frame_loss = geman_mcclure(pred, target, 1.0).mean((-2, -1))  # (1, T, 1), equal over t
    assert paper.item() == pytest.approx(frame_loss.mean().item() / frames, rel=1e-6)
    assert floored.item() == pytest.approx(paper.item() + frame_loss.mean().item(), rel=1e-9)


def test_zero_coordinate_weight_is_the_paper_loss_bit_for_bit() -> None:
    pred, target, target_coords = _sequence(frames=4, dtype=torch.float32)
    prev = (target_coords[:, 0] + 0.3, target_coords[:, 0] - 0.2)
    pred.requires_grad_(True)
    for extra in ((), prev):
        paper, zero = (
            JitterLoss(**kwargs)(pred, target, target_coords, *extra)
            for kwargs in ({}, {"coord_weight": 0.0, "coord_loss": "geman_mcclure"})
        )
        assert torch.equal(paper, zero)
        assert torch.equal(*(torch.autograd.grad(v, pred)[0] for v in (paper, zero)))


def test_coordinate_term_gradcheck() -> None:
    pred, target, target_coords = _sequence(batch=1, frames=3, landmarks=2, size=6)
    pred.requires_grad_(True)
    prev = (target_coords[:, 0] + 0.4, target_coords[:, 0] - 0.1)
    for coord_loss in ("l1", "geman_mcclure"):
        loss_fn = JitterLoss(theta=5.0, coord_weight=2.0, coord_loss=coord_loss, coord_theta=0.7)
        assert torch.autograd.gradcheck(lambda p, f=loss_fn: f(p, target, target_coords), (pred,))
        assert torch.autograd.gradcheck(
            lambda p, f=loss_fn: f(p, target, target_coords, *prev), (pred,)
        )


def test_coordinate_term_pulls_decoded_points_to_the_targets() -> None:
    """Target map = prediction (no pixel gradient), target point 0.5 px off, one frame (Psi = 1):
    a gradient step moves the decoded point toward the target point."""
    target_coords = torch.tensor([[[[3.0, 3.0]]]], dtype=torch.float64)
    shifted = target_coords + torch.tensor([0.4, -0.3], dtype=torch.float64)
    target = render_gaussian(shifted, 8, 8, sigma=1.0)
    pred = target.clone().requires_grad_(True)
    loss_fn = JitterLoss(theta=1.0, coord_weight=10.0)
    (grad,) = torch.autograd.grad(loss_fn(pred, target, target_coords), pred)
    stepped = (pred - 0.05 * grad).detach()
    before = (pdc(pred.detach()) - target_coords).norm(dim=-1)
    after = (pdc(stepped) - target_coords).norm(dim=-1)
    assert (after < before).all()


def test_modulation_closed_form_and_cap() -> None:
    gt_prev = torch.tensor([[[1.0, 1.0], [2.0, 2.0]]])
    gt_t = torch.tensor([[[11.0, 1.0], [2.0, 2.0]]])  # landmark 0 moves by 10, landmark 1 stays
    u_prev = gt_prev.clone()
    u_t = gt_t + torch.tensor([[[3.0, 4.0], [0.5, 0.0]]])  # error changes by 5 and 0.5
    psi = jitter_modulation(u_t, u_prev, gt_t, gt_prev, theta=1.0, xi=1e-3)
    assert psi.shape == (1, 2)
    assert psi[0, 0].item() == pytest.approx(5 / (10 + 1e-3))
    assert psi[0, 1].item() == 1.0  # 0.5 / 1e-3 capped at theta
    assert jitter_modulation(u_t, u_prev, gt_t, gt_prev, theta=0.2)[0, 0].item() == pytest.approx(
        0.2
    )


def test_modulation_gradient_is_finite_at_zero_inconsistency() -> None:
    u = torch.rand(2, 3, 2, dtype=torch.float64, requires_grad=True)
    gt = torch.rand(2, 3, 2, dtype=torch.float64)
    psi = jitter_modulation(u, u.detach().clone(), gt, gt.clone())
    assert (psi == 0).all()
    (grad,) = torch.autograd.grad(psi.sum(), u)
    assert torch.isfinite(grad).all()


def test_modulation_gradcheck() -> None:
    inputs = [torch.rand(2, 3, 2, dtype=torch.float64, requires_grad=True) * 5 for _ in range(4)]
    inputs = [x.detach().requires_grad_(True) for x in inputs]
    assert torch.autograd.gradcheck(lambda *x: jitter_modulation(*x, theta=10.0, xi=1e-3), inputs)


def test_jitter_loss_gradcheck() -> None:
    pred, target, target_coords = _sequence(batch=1, frames=3, landmarks=2, size=6)
    pred.requires_grad_(True)
    prev = (target_coords[:, 0] + 0.4, target_coords[:, 0] - 0.1)
    # theta=5 leaves every Psi below its cap; theta=0.5 caps some (their gradient is then 0).
    for loss_fn in (JitterLoss(theta=5.0), JitterLoss(theta=0.5)):
        assert torch.autograd.gradcheck(lambda p, f=loss_fn: f(p, target, target_coords), (pred,))
        assert torch.autograd.gradcheck(
            lambda p, f=loss_fn: f(p, target, target_coords, *prev), (pred,)
        )


def test_detach_modulation_changes_gradient_not_value() -> None:
    pred, target, target_coords = _sequence(frames=3)
    pred.requires_grad_(True)
    grads, values = [], []
    for detach in (False, True):
        loss = JitterLoss(theta=5.0, detach_modulation=detach)(pred, target, target_coords)
        values.append(loss.detach())
        grads.append(torch.autograd.grad(loss, pred)[0])
    torch.testing.assert_close(values[0], values[1])
    assert not torch.allclose(grads[0], grads[1])


def test_geman_mcclure_formula() -> None:
    pred, target = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    d = pred - target
    torch.testing.assert_close(geman_mcclure(pred, target, 0.5), d**2 / (d**2 + 0.25))
    torch.testing.assert_close(GemanMcClureLoss(0.5)(pred, target), (d**2 / (d**2 + 0.25)).mean())


def test_mse_matches_torch() -> None:
    pred, target = torch.randn(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(HeatmapMSELoss()(pred, target), ((pred - target) ** 2).mean())


def test_wing_matches_piecewise_formula() -> None:
    pred = torch.linspace(-30, 30, 121, dtype=torch.float64).reshape(11, 11)
    target = torch.zeros_like(pred)
    omega, epsilon = 10.0, 2.0
    expected = torch.tensor(
        [
            omega * math.log(1 + abs(v) / epsilon)
            if abs(v) < omega
            else abs(v) - (omega - omega * math.log(1 + omega / epsilon))
            for v in pred.flatten().tolist()
        ],
        dtype=torch.float64,
    ).reshape(11, 11)
    torch.testing.assert_close(wing(pred, target, omega, epsilon), expected)
    torch.testing.assert_close(WingLoss(omega, epsilon)(pred, target), expected.mean())


def literal_awing(y_hat: float, y: float, alpha=2.1, omega=14.0, epsilon=1.0, theta=0.5) -> float:
    delta = abs(y - y_hat)
    if delta < theta:
        return omega * math.log(1 + (delta / epsilon) ** (alpha - y))
    a = (
        omega
        * (1 / (1 + (theta / epsilon) ** (alpha - y)))
        * (alpha - y)
        * (theta / epsilon) ** (alpha - y - 1)
        / epsilon
    )
    c = theta * a - omega * math.log(1 + (theta / epsilon) ** (alpha - y))
    return a * delta - c


def test_adaptive_wing_matches_piecewise_formula() -> None:
    target = render_gaussian(torch.tensor([[[3.3, 4.6]]], dtype=torch.float64), 9, 9, 1.5)
    pred = target + torch.randn_like(target) * 0.6
    expected = torch.tensor(
        [literal_awing(p, y) for p, y in zip(pred.flatten().tolist(), target.flatten().tolist())],
        dtype=torch.float64,
    ).reshape(target.shape)
    torch.testing.assert_close(adaptive_wing(pred, target), expected)
    torch.testing.assert_close(AdaptiveWingLoss()(pred, target), expected.mean())
    # Weight map: 1 + 10 on the 3x3 neighbourhood of any target pixel > 0.2, by loops.
    weights = torch.ones_like(target)
    for y in range(9):
        for x in range(9):
            window = target[0, 0, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
            if (window > 0.2).any():
                weights[0, 0, y, x] = 11.0
    assert 1 < (weights > 1).sum() < 81
    torch.testing.assert_close(
        AdaptiveWingLoss(weight_map=True)(pred, target), (weights * expected).mean()
    )


def test_adaptive_wing_is_continuous_at_theta() -> None:
    target = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    below = adaptive_wing(target + 0.5 - 1e-9, target)
    above = adaptive_wing(target + 0.5 + 1e-9, target)
    torch.testing.assert_close(below, above, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "loss_fn", [HeatmapMSELoss(), WingLoss(), AdaptiveWingLoss(), GemanMcClureLoss()]
)
def test_pixel_losses_reject_mismatched_shapes(loss_fn: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match=r"pred \(2, 3, 8, 8\) and target \(2, 4, 8, 8\)"):
        loss_fn(torch.zeros(2, 3, 8, 8), torch.zeros(2, 4, 8, 8))


def test_jitter_loss_rejects_bad_input() -> None:
    pred, target, target_coords = _sequence(frames=2)
    loss_fn = JitterLoss()
    with pytest.raises(ValueError, match=r"pred .* and target"):
        loss_fn(pred, target[:, :, :2], target_coords)
    with pytest.raises(ValueError, match=r"\(B, T, L, H, W\)"):
        loss_fn(pred[:, 0], target[:, 0], target_coords)
    with pytest.raises(ValueError, match="target_coords"):
        loss_fn(pred, target, target_coords[:, :, :2])
    with pytest.raises(ValueError, match="together"):
        loss_fn(pred, target, target_coords, prev_pred_coords=target_coords[:, 0])
    bad = pred.clone()
    bad[0, 1, 2, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        loss_fn(bad, target, target_coords)
    with pytest.raises(ValueError, match="theta"):
        JitterLoss(theta=-0.5)
    with pytest.raises(ValueError, match="coord_weight"):
        JitterLoss(coord_weight=-1.0)
    with pytest.raises(ValueError, match="pixel_weight"):
        JitterLoss(pixel_weight=-0.5)
    with pytest.raises(ValueError, match="position_weight"):
        JitterLoss(position_weight=-0.1)
    with pytest.raises(ValueError, match="coord_loss"):
        JitterLoss(coord_loss="l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="coord_theta"):
        JitterLoss(coord_theta=0.0)


def test_theta_zero_jitter_loss_has_no_gradient() -> None:
    """Paper Table 3 starts at Theta = 0: the loss is defined (finite) and leaves the model alone."""
    pred = torch.rand(1, 3, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    target = torch.rand(1, 3, 2, 8, 8, dtype=torch.float64)
    coords = torch.rand(1, 3, 2, 2, dtype=torch.float64) * 7
    loss = JitterLoss(theta=0.0, threshold=0.0)(pred, target, coords)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.count_nonzero(pred.grad) == 0
    with pytest.raises(ValueError, match="theta"):
        JitterLoss(theta=-1.0)
