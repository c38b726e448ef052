"""Classical stabilisers against closed forms and literal loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_fa.temporal.filters import (
    FILTER_NAMES,
    ONE_EURO_MEDIAPIPE,
    ConstantVelocityKalman,
    MovingAverage,
    OneEuroFilter,
    SavitzkyGolayCausal,
    apply_filter,
    make_filter,
    zero_phase_smooth,
)

FREQ = 30.0


def _random_track(steps: int = 40, landmarks: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(size=(steps, landmarks, 2)), axis=0) + 50.0


@pytest.mark.parametrize("name", FILTER_NAMES)
def test_constant_signal_passes_unchanged(name):
    track = np.broadcast_to(np.array([[10.0, 20.0], [-3.5, 7.25]]), (25, 2, 2)).copy()
    out = apply_filter(make_filter(name), track, scale=5.0)
    np.testing.assert_allclose(out, track, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", FILTER_NAMES)
def test_vectorised_equals_per_landmark_runs(name):
    track = _random_track()
    together = apply_filter(make_filter(name), track, scale=4.0)
    for k in range(track.shape[1]):
        for a in range(2):
            alone = apply_filter(make_filter(name), track[:, k : k + 1, a : a + 1], scale=4.0)
            np.testing.assert_allclose(together[:, k : k + 1, a : a + 1], alone, rtol=1e-12)


@pytest.mark.parametrize("name", FILTER_NAMES)
def test_torch_and_numpy_give_the_same_result(name):
    track = _random_track()
    from_numpy = apply_filter(make_filter(name), track)
    from_torch = apply_filter(make_filter(name), torch.from_numpy(track))
    assert isinstance(from_numpy, np.ndarray) and isinstance(from_torch, torch.Tensor)
    np.testing.assert_allclose(from_torch.numpy(), from_numpy, rtol=1e-12)


def test_one_euro_with_zero_beta_is_first_order_low_pass():
    cutoff = 2.0
    signal = np.r_[np.zeros(5), np.ones(30)] * 10.0
    track = signal[:, None, None]
    out = apply_filter(OneEuroFilter(min_cutoff=cutoff, beta=0.0, freq=FREQ), track)
    tau = 1.0 / (2.0 * math.pi * cutoff)
    alpha = 1.0 / (1.0 + tau * FREQ)
    expected = [signal[0]]
    for x in signal[1:]:
        expected.append(expected[-1] + alpha * (x - expected[-1]))
    np.testing.assert_allclose(out[:, 0, 0], expected, rtol=1e-12)


def test_one_euro_timestamps_at_nominal_rate_match_no_timestamps():
    track = _random_track()
    times = np.arange(track.shape[0]) / FREQ
    plain = apply_filter(OneEuroFilter(beta=1.0), track, scale=3.0)
    timed = apply_filter(OneEuroFilter(beta=1.0), track, scale=3.0, timestamps=times)
    np.testing.assert_allclose(timed, plain, rtol=1e-9)


def test_one_euro_scale_makes_it_scale_invariant():
    track = _random_track()
    small = apply_filter(make_filter("one-euro"), track, scale=2.0)
    large = apply_filter(make_filter("one-euro"), 7.0 * track, scale=14.0)
    np.testing.assert_allclose(large, 7.0 * small, rtol=1e-9)
    # normalize_by is the default scale of every step.
    fixed = apply_filter(OneEuroFilter(normalize_by=2.0), track)
    np.testing.assert_allclose(fixed, small, rtol=1e-12)


def test_one_euro_follows_fast_motion_better_with_beta():
    ramp = (np.arange(60) * 3.0)[:, None, None]
    lag_slow = np.abs(apply_filter(OneEuroFilter(beta=0.0), ramp) - ramp)[-1]
    lag_fast = np.abs(apply_filter(OneEuroFilter(beta=1.0), ramp) - ramp)[-1]
    assert lag_fast < 0.2 * lag_slow


def test_mediapipe_preset_values():
    assert dict(ONE_EURO_MEDIAPIPE) == {"min_cutoff": 0.05, "beta": 80.0, "d_cutoff": 1.0}
    f = make_filter("one-euro-mediapipe", freq=60.0)
    assert (f.min_cutoff, f.beta, f.freq) == (0.05, 80.0, 60.0)


def test_kalman_converges_on_noiseless_constant_velocity_track():
    t = np.arange(300)
    track = np.stack([5.0 + 2.0 * t, 100.0 - 0.5 * t], axis=-1)[:, None, :]
    out = apply_filter(ConstantVelocityKalman(process_noise=10.0, measurement_noise=2.0), track)
    assert np.abs(out - track)[-50:].max() < 1e-6


def test_kalman_smooths_noise():
    rng = np.random.default_rng(1)
    truth = np.zeros((400, 4, 2))
    noisy = truth + rng.normal(size=truth.shape)
    out = apply_filter(ConstantVelocityKalman(process_noise=5.0, measurement_noise=1.0), noisy)
    assert np.std(out[50:] - truth[50:]) < 0.5 * np.std(noisy[50:] - truth[50:])


@given(
    coeffs=st.lists(st.floats(-3, 3), min_size=1, max_size=4),
    window=st.integers(4, 11),
    data=st.data(),
)
@settings(max_examples=25, deadline=None)
def test_savgol_reproduces_polynomials_up_to_polyorder(coeffs, window, data):
    _check_savgol_reproduces(coeffs, window, data.draw(st.integers(len(coeffs) - 1, window - 1)))


def test_savgol_reproduces_a_parabola_with_a_degree_10_fit():
    """The case Hypothesis found: 1.2e-7 off where the parabola crosses zero (rounding)."""
    _check_savgol_reproduces([3.0, 0.0, -3.0], window=11, polyorder=10)


def _check_savgol_reproduces(coeffs: list[float], window: int, polyorder: int) -> None:
    t = np.arange(30, dtype=np.float64) / 10.0
    values = np.polynomial.polynomial.polyval(t, coeffs)
    track = np.stack([values, -values], axis=-1)[:, None, :]
    out = apply_filter(SavitzkyGolayCausal(window, polyorder), track)
    # Exact from the first sample on: the start-up fits use the samples there are, and a
    # polynomial through n <= degree + 1 points is interpolated exactly. Exact up to rounding
    # scaled by the signal, as fits up to degree 10 lose a few digits to conditioning (a wrong
    # fit is off by far more).
    np.testing.assert_allclose(out, track, rtol=1e-7, atol=1e-7 * (1.0 + np.abs(track).max()))


def test_savgol_polyorder_zero_equals_moving_average_literal():
    track = _random_track(steps=20, landmarks=2)
    window = 4
    out = apply_filter(MovingAverage(window), track)
    expected = np.stack([track[max(0, t - window + 1) : t + 1].mean(axis=0) for t in range(20)])
    np.testing.assert_allclose(out, expected, rtol=1e-12)


@pytest.mark.parametrize("window", [3, 4, 7])
def test_moving_average_lags_ramp_by_half_window(window):
    ramp = (np.arange(30) * 1.5)[:, None, None]
    out = apply_filter(MovingAverage(window), ramp)
    lag_samples = (ramp - out)[window - 1 :, 0, 0] / 1.5
    np.testing.assert_allclose(lag_samples, (window - 1) / 2, rtol=1e-12)


def test_zero_phase_smooth_has_no_lag_on_slow_sinusoid():
    t = np.arange(300) / FREQ
    clean = np.sin(2 * np.pi * 0.5 * t)
    rng = np.random.default_rng(0)
    noisy = clean + 0.1 * rng.normal(size=t.shape)
    out = zero_phase_smooth(noisy[:, None, None], cutoff_hz=3.0, freq=FREQ)[:, 0, 0]
    inner = slice(30, -30)
    lags = range(-5, 6)
    xcorr = [np.dot(np.roll(out, lag)[inner], clean[inner]) for lag in lags]
    assert lags[int(np.argmax(xcorr))] == 0
    assert np.std(out[inner] - clean[inner]) < 0.5 * np.std(noisy[inner] - clean[inner])


def test_zero_phase_smooth_fills_nan_gaps():
    t = np.arange(120) / FREQ
    line = np.stack([2.0 * t + 1.0, 3.0 - t], axis=-1)[:, None, :].repeat(2, axis=1)
    gappy = line.copy()
    gappy[[0, 1, 40, 41, 42, 119]] = np.nan  # whole frames missing, both ends included
    gappy[60, 1, 0] = np.nan  # a single coordinate missing
    out = zero_phase_smooth(gappy, cutoff_hz=4.0, freq=FREQ)
    assert np.isfinite(out).all()
    # Interior gaps of a straight line are filled exactly and filtfilt keeps a straight line
    # (the ends hold the nearest value, which bends the line there).
    np.testing.assert_allclose(out[20:-20], line[20:-20], atol=1e-6)


def test_zero_phase_smooth_keeps_unseen_landmarks_nan_and_type():
    track = torch.from_numpy(_random_track(steps=50)).float()
    track[:, 1] = float("nan")
    out = zero_phase_smooth(track, cutoff_hz=5.0, freq=FREQ)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert torch.isnan(out[:, 1]).all() and torch.isfinite(out[:, [0, 2]]).all()


def test_zero_phase_smooth_short_clips():
    for steps in (1, 2, 5):
        track = _random_track(steps=steps)
        assert zero_phase_smooth(track, 2.0, FREQ).shape == track.shape


def test_reset_starts_a_new_track():
    f = OneEuroFilter(beta=0.0)
    f.step(np.zeros((2, 2)))
    f.step(np.ones((2, 2)))
    f.reset()
    np.testing.assert_array_equal(f.step(np.full((2, 2), 5.0)), np.full((2, 2), 5.0))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="unknown filter"):
        make_filter("butterworth")
    f = make_filter("kalman")
    with pytest.raises(ValueError, match=r"\(L, C\)"):
        f.step(np.zeros(3))
    f.step(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="shape changed"):
        f.step(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="finite"):
        f.step(np.full((3, 2), np.nan))
    g = OneEuroFilter()
    g.step(np.zeros((1, 2)), t=1.0)
    with pytest.raises(ValueError, match="timestamps must increase"):
        g.step(np.zeros((1, 2)), t=1.0)
    with pytest.raises(ValueError, match="scale"):
        apply_filter(OneEuroFilter(), np.zeros((5, 1, 2)), scale=np.ones(4))
    with pytest.raises(ValueError, match="Nyquist"):
        zero_phase_smooth(np.zeros((5, 1, 2)), cutoff_hz=15.0, freq=30.0)
    with pytest.raises(ValueError, match="polyorder"):
        SavitzkyGolayCausal(window=3, polyorder=3)
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuroFilter(min_cutoff=0.0)
