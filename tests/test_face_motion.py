"""FaceMotionStage: the similarity split, the exact rendering, the identity at start, the
alpha-beta recursion it implements, streaming, gradients and checkpoints."""

from __future__ import annotations

import pytest
import torch

from lightning_fa.heatmaps import pdc
from lightning_fa.temporal import (
    TEMPORAL_STAGES,
    FaceMotionStage,
    build_temporal_stage,
    registered_name,
)
from lightning_fa.temporal.face_motion import apply_similarity, render_points, split_similarity

L = 68


def _shape(batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, L, 2, generator=generator, dtype=torch.float64) * 16 + 8


def test_split_is_the_least_squares_projection_on_the_similarity_motions():
    shape = _shape()
    step = torch.randn(2, L, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    coefficients, residual = split_similarity(step, shape)
    for b in range(2):
        # The four motions as explicit columns, solved by a generic least-squares routine.
        c = shape[b] - shape[b].mean(0)
        columns = [
            torch.stack([torch.ones(L), torch.zeros(L)], -1),
            torch.stack([torch.zeros(L), torch.ones(L)], -1),
            c,
            torch.stack([-c[:, 1], c[:, 0]], -1),
        ]
        basis = torch.stack([col.to(torch.float64).reshape(-1) for col in columns], -1)
        solution = torch.linalg.lstsq(basis, step[b].reshape(-1, 1)).solution[:, 0]
        torch.testing.assert_close(coefficients[b], solution)
        torch.testing.assert_close(residual[b].reshape(-1), step[b].reshape(-1) - basis @ solution)
        assert basis.T @ residual[b].reshape(-1) == pytest.approx(torch.zeros(4), abs=1e-9)
    torch.testing.assert_close(apply_similarity(coefficients, shape) + residual, step)


def test_rendered_maps_decode_exactly_to_their_points():
    points = torch.rand(3, L, 2, generator=torch.Generator().manual_seed(2)) * 28 + 2
    maps = render_points(points, 32, 32, threshold=0.2)
    torch.testing.assert_close(pdc(maps, threshold=0.2), points, atol=1e-5, rtol=0)
    # The centroid of the pixels above the threshold, as a literal loop, for one map.
    total = cx = cy = 0.0
    for y in range(32):
        for x in range(32):
            value = float(maps[1, 5, y, x])
            if value > 0.2:
                total, cx, cy = total + value, cx + value * x, cy + value * y
    assert (cx / total, cy / total) == pytest.approx(points[1, 5].tolist(), abs=1e-5)
    assert int((maps[1, 5] > 0.2).sum()) == 9  # every pixel of the patch is kept


def _heatmaps(frames: int, seed: int = 3) -> torch.Tensor:
    """(1, T, L, 32, 32) Gaussian maps at a jittering, translating face."""
    generator = torch.Generator().manual_seed(seed)
    shape = _shape(1, seed).float()
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    maps = []
    for t in range(frames):
        points = shape + 0.2 * t + 0.3 * torch.randn(shape.shape, generator=generator)
        d2 = (xs - points[..., 0, None, None]) ** 2 + (ys - points[..., 1, None, None]) ** 2
        maps.append(torch.exp(-d2 / (2 * 1.5**2)))
    return torch.stack(maps, dim=1)


@pytest.mark.parametrize("initial_memory", [0.0, 20.0])
def test_the_untrained_stage_is_the_identity_on_the_decoded_track(initial_memory: float):
    heatmaps = _heatmaps(6)
    out, _ = FaceMotionStage(L, initial_memory=initial_memory).forward_sequence(heatmaps)
    torch.testing.assert_close(pdc(out), pdc(heatmaps), atol=1e-4, rtol=0)


def _constant_gates(stage: FaceMotionStage, face: float, velocity: float, landmark: float):
    """Gates saturated open, so each memory keeps max_smoothing * its strength a frame and the
    velocity gain is its strength."""
    with torch.no_grad():
        for gate in (stage.face_gate, stage.landmark_gate):
            gate.weight.zero_()
            gate.bias.fill_(40.0)
        stage.strength.copy_(torch.tensor([face, velocity, landmark]))


@pytest.mark.parametrize("initial_memory", [0.0, 5.0])
def test_a_pure_translation_follows_the_alpha_beta_recursion(initial_memory: float):
    stage = FaceMotionStage(L, max_smoothing=0.95, initial_memory=initial_memory)
    _constant_gates(stage, face=0.6, velocity=0.3, landmark=0.0)
    keep, beta = 0.95 * 0.6, 0.3
    shape = _shape(1).float()
    moves = [0.0, 0.5, 1.4, 1.9, 3.0, 3.2, 4.5]
    state, track = None, []
    for move in moves:
        points = shape + torch.tensor([move, -0.5 * move])
        out, state = stage(render_points(points, 32, 32, 0.2), state)
        track.append(pdc(out)[0, 0] - shape[0, 0])
    # The textbook alpha-beta filter on the face's translation, one axis at a time, with the
    # position gain 1 / n of a fading memory n = 1 + keep * n (n = 1 + keep * initial_memory at
    # the first frame).
    x, v, n = torch.tensor([moves[0], -0.5 * moves[0]]), torch.zeros(2), 1 + keep * initial_memory
    for t, move in enumerate(moves):
        if t:
            n = 1 + keep * n
            predicted = x + v
            innovation = torch.tensor([move, -0.5 * move]) - predicted
            x, v = predicted + innovation / n, v + beta * innovation
        torch.testing.assert_close(track[t], x, atol=2e-4, rtol=0)


def test_a_still_face_held_whole_is_its_running_mean():
    stage = FaceMotionStage(L, max_smoothing=0.999)
    _constant_gates(stage, face=1.0, velocity=0.0, landmark=1.0)
    generator = torch.Generator().manual_seed(4)
    shape = _shape(1).float()
    noisy = [shape + 0.3 * torch.randn(shape.shape, generator=generator) for _ in range(12)]
    state = None
    for t, points in enumerate(noisy):
        out, state = stage(render_points(points, 32, 32, 0.2), state)
        # keep = 0.999: within a few thousandths of the plain mean of the frames so far.
        mean = torch.stack(noisy[: t + 1]).mean(0)
        torch.testing.assert_close(pdc(out), mean, atol=0.01, rtol=0)
    assert (pdc(out) - shape).norm() < 0.5 * (noisy[-1] - shape).norm()


def _face_track(stage: FaceMotionStage, offsets: list[torch.Tensor]) -> torch.Tensor:
    """The decoded translation of the face (T, 2) for a face moved by ``offsets`` (T, 2)."""
    shape, state, track = _shape(1).float(), None, []
    for offset in offsets:
        out, state = stage(render_points(shape + offset, 32, 32, 0.2), state)
        track.append((pdc(out) - shape)[0].mean(0))
    return torch.stack(track)


def test_drift_holds_a_noisy_still_face_and_releases_a_steady_move():
    def stage_with(drift_weight: float, bias: float) -> FaceMotionStage:
        stage = FaceMotionStage(L, max_smoothing=0.99)
        with torch.no_grad():
            for gate in (stage.face_gate, stage.landmark_gate):
                gate.weight.zero_()
            stage.face_gate.weight[0, 3] = drift_weight  # keep from the drift alone
            stage.face_gate.bias.copy_(torch.tensor([bias, -40.0]))
            stage.strength.copy_(torch.tensor([1.0, 0.0, 0.0]))
        return stage

    generator = torch.Generator().manual_seed(5)
    noise = [0.3 * torch.randn(2, generator=generator) for _ in range(40)]
    ramp = [torch.tensor([0.25 * t, 0.0]) for t in range(20)]
    drift = stage_with(drift_weight=-6.0, bias=-3.0)
    fixed = stage_with(drift_weight=0.0, bias=4.2)  # about the keep drift gives the still face
    for stage in (drift, fixed):
        still = _face_track(stage, noise)
        # Both average the noise down to well under its 0.3 px.
        assert still[20:].norm(dim=-1).mean() < 0.12
    # Only the drift-gated filter follows the steady move; the fixed gain trails it by pixels.
    assert (_face_track(drift, ramp)[-1] - ramp[-1]).norm() < 0.1
    assert (_face_track(fixed, ramp)[-1] - ramp[-1]).norm() > 1.5


def test_per_landmark_noise_is_smoothed_while_the_face_moves_freely():
    stage = FaceMotionStage(L)
    _constant_gates(stage, face=0.0, velocity=0.0, landmark=1.0)  # face gain 1, landmark -> 0.05
    shape = _shape(1).float()
    state = None
    for _ in range(30):  # the landmark memory fills up on a still face
        out, state = stage(render_points(shape, 32, 32, 0.2), state)
    moved = shape + torch.tensor([1.5, 0.5])
    out, state = stage(render_points(moved, 32, 32, 0.2), state)
    torch.testing.assert_close(pdc(out), moved, atol=1e-4, rtol=0)  # a head move passes at once
    bump = torch.zeros_like(shape)
    bump[0, 30] = torch.tensor([1.0, -1.0])  # one landmark alone jumps
    out, state = stage(render_points(moved + bump, 32, 32, 0.2), state)
    assert (pdc(out)[0, 30] - moved[0, 30]).norm() < 0.1 * bump[0, 30].norm()


def test_sequence_equals_steps_and_the_state_carries():
    stage = FaceMotionStage(L)
    _constant_gates(stage, face=0.5, velocity=0.2, landmark=0.7)
    heatmaps = _heatmaps(8)
    whole, last = stage.forward_sequence(heatmaps)
    first, state = stage.forward_sequence(heatmaps[:, :3])
    second, state = stage.forward_sequence(heatmaps[:, 3:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)
    state, outs = None, []
    for t in range(8):
        out, state = stage(heatmaps[:, t], state)
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs, 1), whole)
    for a, b in zip(last[0], state[0]):
        torch.testing.assert_close(a, b)
    zeros = stage.init_state(1, 32, 32)
    torch.testing.assert_close(stage(heatmaps[:, 0], zeros)[0], stage(heatmaps[:, 0], None)[0])
    assert len(stage.state_names()) == sum(len(group) for group in zeros)


def test_gradient_of_a_decoded_loss_matches_finite_differences():
    heatmaps = _heatmaps(5).double()
    stage = FaceMotionStage(L).double()
    with torch.no_grad():
        stage.strength.copy_(torch.tensor([0.4, 0.2, 0.6]))
        stage.face_gate.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(4))
        stage.landmark_gate.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(5))

    def loss() -> torch.Tensor:
        out, _ = stage.forward_sequence(heatmaps)
        return pdc(out).diff(dim=1).square().sum()

    value = loss()
    value.backward()
    for parameter in (stage.strength, stage.face_gate.weight, stage.landmark_gate.bias):
        analytic = parameter.grad.flatten()[0].item()
        with torch.no_grad():
            parameter.view(-1)[0] += 1e-6
            plus = loss().item()
            parameter.view(-1)[0] -= 2e-6
            minus = loss().item()
            parameter.view(-1)[0] += 1e-6
        assert analytic == pytest.approx((plus - minus) / 2e-6, rel=1e-3, abs=1e-6)
    assert stage.strength.grad.abs().sum() > 0


def test_registered_and_rebuilt_from_its_record():
    stage = FaceMotionStage(
        L, threshold=0.3, max_smoothing=0.9, activity_smoothing=0.5, initial_memory=4.0
    )
    name = registered_name(stage)
    assert name == "FaceMotionStage" and TEMPORAL_STAGES[name] is FaceMotionStage
    rebuilt = build_temporal_stage(name, stage.config, "test.ckpt")
    assert rebuilt.config == stage.config
    rebuilt.load_state_dict(stage.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_smoothing": 1.0}, "max_smoothing must be in"),
        ({"activity_smoothing": 0.0}, "activity_smoothing must be in"),
        ({"initial_memory": -1.0}, "initial_memory must be a finite number >= 0"),
        ({"initial_memory": float("nan")}, "initial_memory must be a finite number >= 0"),
        ({"num_landmarks": 0}, "num_landmarks must be a positive integer"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    arguments = {"num_landmarks": L, **kwargs}
    with pytest.raises(ValueError, match=message):
        FaceMotionStage(**arguments)


def test_a_strength_below_zero_acts_as_zero_but_keeps_its_gradient():
    heatmaps = _heatmaps(5)
    stage = FaceMotionStage(L)
    with torch.no_grad():
        stage.strength.copy_(torch.tensor([-0.5, -0.5, -0.5]))
    out, _ = stage.forward_sequence(heatmaps)
    torch.testing.assert_close(pdc(out), pdc(heatmaps), atol=1e-4, rtol=0)  # still the identity
    pdc(out).diff(dim=1).square().sum().backward()
    assert (stage.strength.grad != 0).all()  # so training can bring it back
