"""StillHold (FaceMotionStage's hold of a new still face): its trend statistic against a
literal weighted least-squares fit, the held mean, the release and the hold again, and the
stage with a hold: streaming, gradients, its record."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_fa.heatmaps import pdc
from lightning_fa.temporal import FaceMotionStage, build_temporal_stage
from lightning_fa.temporal.face_motion import render_points
from lightning_fa.temporal.still_hold import HoldState, StillHold, trend_statistic

L = 68


def _shape(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, L, 2, generator=generator) * 16 + 8


def _frames(moves: list[torch.Tensor], noise: float, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = _shape()
    return [shape + move + noise * torch.randn(shape.shape, generator=generator) for move in moves]


def _run(hold: StillHold, frames: list[torch.Tensor], tracked: list[torch.Tensor] | None = None):
    """The hold's output and state after each frame (``tracked``: the filter's estimates,
    default the points themselves)."""
    layout = hold.layout(1, L)
    state = tuple(torch.zeros(shape) for shape, _ in layout.values())
    outputs, states = [], []
    for t, points in enumerate(frames):
        estimate = points if tracked is None else tracked[t]
        out, state = hold.step(points, estimate, state)
        outputs.append(out)
        states.append(state)
    return outputs, states


def _literal_statistic(frames: list[torch.Tensor], forgetting: float) -> float:
    """The pooled slope test from the weighted least-squares fit per coordinate, in matrix
    form: the slope's variance and the residual's degrees of freedom of a fit whose weights are
    not inverse variances (frames equally noisy), as the hat matrix gives them."""
    x = np.stack([f.reshape(-1).double().numpy() for f in frames])  # (n, 136)
    n = len(x)
    ages = np.arange(n)[::-1].astype(float)  # the newest frame has age 0
    design = np.stack([np.ones(n), ages], axis=1)
    weights = np.diag(forgetting**ages)
    solve = np.linalg.solve(design.T @ weights @ design, design.T @ weights)  # (2, n)
    coefficients = solve @ x  # (2, 136): intercept and slope per coordinate
    residual = x - design @ coefficients
    hat = design @ solve
    dof = np.trace(weights @ (np.eye(n) - hat))
    noise = np.einsum("ic,ij,jc->", residual, weights, residual) / (x.shape[1] * dof)
    slope_variance = noise * (solve[1] @ solve[1])  # sigma^2 per unit of the slope's weights
    return float(np.mean(coefficients[1] ** 2) / slope_variance)


def _statistic(state: tuple[torch.Tensor, ...]) -> float:
    """`trend_statistic` of a hold state (its sums, and the frames in its window)."""
    return float(trend_statistic(HoldState(*state)))


@pytest.mark.parametrize("memory", [1e9, 16.0])
def test_the_statistic_is_a_literal_weighted_least_squares_slope_test(memory: float):
    hold = StillHold(threshold=1e9, initial_memory=0.0, memory=memory, rehold_after=None)
    moves = [torch.tensor([0.05 * t, -0.02 * t]) for t in range(9)]
    frames = _frames(moves, noise=0.3)
    _, states = _run(hold, frames)
    for n in (3, 5, 9):
        expected = _literal_statistic(frames[:n], hold.forgetting)
        assert _statistic(states[n - 1]) == pytest.approx(expected, rel=1e-3)
    # Under three frames there is no residual to measure the noise by: no test.
    assert _statistic(states[1]) == 0


def test_a_still_face_is_held_at_its_mean_with_the_first_frame_counted_more():
    hold = StillHold(threshold=6.0, initial_memory=8.0, memory=1e9, rehold_after=None)
    frames = _frames([torch.zeros(2)] * 30, noise=0.3)
    tracked = [torch.full_like(frames[0], -100.0)] * 30  # never shown while held
    outputs, _ = _run(hold, frames, tracked)
    for t, out in enumerate(outputs):
        expected = (8 * frames[0] + torch.stack(frames[: t + 1]).sum(0)) / (8 + t + 1)
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_a_move_releases_the_hold_within_frames_and_the_tracker_takes_over():
    hold = StillHold(threshold=4.0, initial_memory=8.0, memory=256.0, rehold_after=None)
    moves = [torch.zeros(2)] * 10 + [torch.tensor([0.5 * t, 0.0]) for t in range(1, 21)]
    frames = _frames(moves, noise=0.1)
    outputs, _ = _run(hold, frames)
    # (The first frame's held mean is the frame itself.)
    moved = [t for t, out in enumerate(outputs) if t and torch.equal(out, frames[t])]
    # Held through the still part, released within three frames of the move's start, and not
    # held again (rehold_after None).
    assert moved and 10 <= moved[0] <= 13
    assert moved == list(range(moved[0], 30))
    # A still face of the same noise is held throughout.
    still = _frames([torch.zeros(2)] * 30, noise=0.3, seed=2)
    outputs, _ = _run(hold, still)
    assert not any(torch.equal(out, frame) for out, frame in zip(outputs[1:], still[1:]))


def test_a_face_that_stops_is_held_again_after_rehold_after_frames():
    hold = StillHold(threshold=4.0, initial_memory=0.0, memory=1e9, rehold_after=6)
    moves = [torch.tensor([0.8 * t, 0.0]) for t in range(8)] + [torch.tensor([5.6, 0.0])] * 16
    frames = _frames(moves, noise=0.05)
    outputs, states = _run(hold, frames)
    holding = [bool(state[-1]) for state in states]
    assert holding[0] and not any(holding[3:8])
    start = holding.index(True, 3)
    assert start <= 8 + 6
    count = int(states[start][11])  # the frames in the window that is held
    torch.testing.assert_close(
        outputs[start],
        torch.stack(frames[start - count + 1 : start + 1]).mean(0),
        atol=1e-4,
        rtol=0,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 0.0}, "hold_threshold must be a finite number > 0"),
        ({"threshold": float("inf")}, "hold_threshold must be a finite number > 0"),
        ({"initial_memory": -1.0}, "hold_initial_memory must be a finite number >= 0"),
        ({"memory": 1.0}, "hold_memory must be a finite number > 1"),
        ({"rehold_after": 2}, "rehold_after must be >= 3"),
    ],
)
def test_bad_hold_settings_are_refused(kwargs, message):
    arguments = {"threshold": 4.0, "initial_memory": 8.0, "memory": 256.0, "rehold_after": None}
    with pytest.raises(ValueError, match=message):
        StillHold(**{**arguments, **kwargs})


def _maps(frames: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([render_points(f, 32, 32, 0.2) for f in frames], dim=1)


def test_the_stage_holds_a_still_face_and_follows_a_moving_one():
    # Untrained, its filter is the identity; no forgetting, so the held mean is a plain one.
    stage = FaceMotionStage(L, hold_threshold=4.0, hold_memory=1e9)
    still = _frames([torch.zeros(2)] * 20, noise=0.3)
    out, _ = stage.forward_sequence(_maps(still))
    expected = (8 * still[0] + torch.stack(still).sum(0)) / 28
    torch.testing.assert_close(pdc(out)[:, -1], expected, atol=1e-4, rtol=0)
    moving = _frames([torch.tensor([0.3 * t, 0.15 * t]) for t in range(20)], noise=0.1)
    out, _ = stage.forward_sequence(_maps(moving))
    torch.testing.assert_close(pdc(out)[0, 4:], torch.cat(moving[4:]), atol=1e-4, rtol=0)


def test_the_stage_with_a_hold_streams_and_rebuilds_from_its_record():
    stage = FaceMotionStage(L, hold_threshold=4.0, rehold_after=5)
    with torch.no_grad():
        stage.strength.copy_(torch.tensor([0.5, 0.2, 0.7]))
    moves = [torch.zeros(2)] * 5 + [torch.tensor([0.5 * t, 0.0]) for t in range(7)]
    heatmaps = _maps(_frames(moves, noise=0.2))
    whole, last = stage.forward_sequence(heatmaps)
    first, state = stage.forward_sequence(heatmaps[:, :4])
    second, state = stage.forward_sequence(heatmaps[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)
    for group_a, group_b in zip(last, state):
        for a, b in zip(group_a, group_b):
            torch.testing.assert_close(a, b)
    zeros = stage.init_state(1, 32, 32)
    assert len(zeros) == 2 and len(stage.state_names()) == sum(len(g) for g in zeros)
    rebuilt = build_temporal_stage("FaceMotionStage", stage.config, "test.ckpt")
    rebuilt.load_state_dict(stage.state_dict())
    torch.testing.assert_close(rebuilt.forward_sequence(heatmaps)[0], whole)
    assert rebuilt.config["hold_threshold"] == 4.0 and rebuilt.config["rehold_after"] == 5


def test_without_the_hold_in_training_the_filter_trains_on_every_frame_and_eval_holds():
    # A still face: held in eval mode; while training the output is the hold-free filter's,
    # frame for frame, with a gradient from every frame (none would reach it through the hold).
    kwargs = dict(hold_threshold=4.0, hold_initial_memory=4.0)
    stage = FaceMotionStage(L, **kwargs, hold_in_training=False).double()
    free = FaceMotionStage(L).double()
    held = FaceMotionStage(L, **kwargs).double()
    with torch.no_grad():
        for s in (stage, free, held):
            s.strength.copy_(torch.tensor([0.4, 0.2, 0.6]))
    heatmaps = _maps(_frames([torch.zeros(2)] * 12, noise=0.3)).double()
    stage.train()
    training, _ = stage.forward_sequence(heatmaps)
    torch.testing.assert_close(training, free.forward_sequence(heatmaps)[0])
    pdc(training).diff(dim=1).square().sum().backward()
    assert stage.strength.grad[0] != 0
    held.train()
    through = held.forward_sequence(heatmaps)[0]
    jitter = pdc(through).diff(dim=1).square().sum()
    assert jitter > 0  # the held mean moves with 1 / n, yet none of it reaches the filter
    jitter.backward()
    assert held.strength.grad is None or bool((held.strength.grad == 0).all())
    stage.eval()
    with torch.no_grad():
        torch.testing.assert_close(stage.forward_sequence(heatmaps)[0], through.detach())
    rebuilt = build_temporal_stage("FaceMotionStage", stage.config, "test.ckpt")
    assert rebuilt.hold_in_training is False
    with pytest.raises(ValueError, match=r"test\.ckpt.*hold_in_training must be true or false"):
        build_temporal_stage(
            "FaceMotionStage", {**stage.config, "hold_in_training": "no"}, "test.ckpt"
        )


def test_the_tracker_still_gets_its_gradient_once_released():
    stage = FaceMotionStage(L, hold_threshold=4.0).double()
    with torch.no_grad():
        stage.strength.copy_(torch.tensor([0.4, 0.2, 0.6]))
    moving = _frames([torch.tensor([0.6 * t, 0.3 * t]) for t in range(8)], noise=0.2)
    heatmaps = _maps(moving).double()

    def loss() -> torch.Tensor:
        return pdc(stage.forward_sequence(heatmaps)[0]).diff(dim=1).square().sum()

    loss().backward()
    analytic = stage.strength.grad[0].item()
    with torch.no_grad():
        stage.strength[0] += 1e-6
        plus = loss().item()
        stage.strength[0] -= 2e-6
        minus = loss().item()
        stage.strength[0] += 1e-6
    assert analytic != 0
    assert analytic == pytest.approx((plus - minus) / 2e-6, rel=1e-3)


def test_a_long_still_stream_stays_held_and_its_statistic_stays_near_one():
    # Forgetting bounds the sums (weight -> memory) on a stream far longer than the memory; the
    # statistic, normalised for the forgetting's weights, stays about 1 and the face stays held.
    hold = StillHold(threshold=4.0, initial_memory=4.0, memory=64.0, rehold_after=None)
    generator = torch.Generator().manual_seed(7)
    shape = _shape() + 40.0  # far from the origin, as frame pixels are
    state = tuple(torch.zeros(size) for size, _ in hold.layout(1, L).values())
    statistics = []
    for _ in range(2000):
        points = shape + 0.3 * torch.randn(shape.shape, generator=generator)
        out, state = hold.step(points, torch.full_like(points, -1.0), state)
        statistics.append(_statistic(state))
    assert bool(state[-1]) and float(state[1]) == pytest.approx(64.0, rel=1e-3)
    assert (out - shape).abs().max() < 0.3  # the held mean, not the tracked -1s
    assert 0.7 < float(np.median(statistics[200:])) < 1.3
