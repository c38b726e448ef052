"""experiments/analysis/stabiliser_bounds.py: the decomposition, statistics and bounds on cases
whose answer is known independently of the code under test."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from data_modules.synthetic import (
    SyntheticFaceVideos,
    apply_degradation,
    similarity_transform,
)
from data_modules.transforms import Degradation
from lightning_fa.temporal import apply_filter, make_filter

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "analysis" / "stabiliser_bounds.py"
_spec = importlib.util.spec_from_file_location("stabiliser_bounds", SCRIPT)
sb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sb)

L = 68


def _shapes(rng: np.random.Generator, videos: int, frames: int) -> np.ndarray:
    """(V, T, L, 2) face-sized point clouds that move a little from frame to frame."""
    base = rng.uniform(30, 90, size=(videos, 1, L, 2))
    return base + rng.normal(0, 0.5, size=(videos, frames, L, 2))


def _similar(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """truth with a random similarity transform per frame (scale, rotation, translation)."""
    out = np.empty_like(truth)
    for index in np.ndindex(truth.shape[:2]):
        angle, scale = rng.normal(0, 0.05), 1 + rng.normal(0, 0.03)
        c, s = scale * np.cos(angle), scale * np.sin(angle)
        rotation = np.array([[c, -s], [s, c]])
        out[index] = truth[index] @ rotation.T + rng.normal(0, 2, size=2)
    return out


def test_exact_similarity_error_is_all_shared_and_matches_a_closed_form_fit():
    rng = np.random.default_rng(0)
    truth = _shapes(rng, 2, 10)
    raw = _similar(truth, rng)
    errors = raw - truth
    result = sb.decomposition(errors, truth)["models"]
    for model in ("similarity", "affine"):
        for part in ("error", "fluctuation", "jitter"):
            assert result[model][f"{part}_shared"] == pytest.approx(1.0, abs=1e-9)
            assert result[model][f"{part}_residual"] == pytest.approx(0.0, abs=1e-9)
    # A translation cannot explain the rotation / scale part.
    assert result["translation"]["error_shared"] < 0.99
    # A face that only moves rigidly: all of its true motion is a similarity of the last frame.
    rigid = _similar(np.repeat(truth[:, :1], 10, axis=1), rng)
    motion = sb.decomposition(errors, rigid)["models"]
    assert motion["similarity"]["truth_motion_shared"] == pytest.approx(1.0, abs=1e-9)
    assert motion["translation"]["truth_motion_shared"] < 0.99
    # The projection equals the closed-form least-squares similarity (complex-number solution)
    # of truth -> raw, applied to truth, minus truth; also for a raw track that is not similar.
    noisy = raw + rng.normal(0, 1, size=raw.shape)
    shared = sb.shared_part(noisy - truth, truth, "similarity")
    for index in [(0, 0), (1, 7)]:
        fit = similarity_transform(truth[index], noisy[index])
        expected = truth[index] @ fit[:, :2].T + fit[:, 2] - truth[index]
        np.testing.assert_allclose(shared[index], expected, atol=1e-9)


def test_iid_noise_shares_only_the_models_degrees_of_freedom():
    rng = np.random.default_rng(1)
    truth = _shapes(rng, 4, 500)
    errors = rng.normal(0, 1.5, size=truth.shape)
    result = sb.decomposition(errors, truth)
    # Isotropic i.i.d. noise: E[share] = k / (2 L) for a k-dof subspace of the 2 L coordinates.
    for model, dof in (("translation", 2), ("similarity", 4), ("affine", 6)):
        for part in ("error", "fluctuation", "jitter"):
            assert result["models"][model][f"{part}_shared"] == pytest.approx(
                dof / (2 * L), abs=0.003
            )
    # Zero-mean noise has (almost) no static bias: 1 / T of its energy.
    assert result["bias_share"] == pytest.approx(1 / 500, abs=5e-4)


def test_drifting_translation_by_hand():
    """A static face whose every landmark carries a fixed bias b_k plus a shared drift of d px
    per frame along x: by hand, the jitter is all shared and the raw error-jitter is d^2 / 2."""
    frames, d = 20, 0.3
    rng = np.random.default_rng(2)
    truth = np.repeat(_shapes(rng, 1, 1), frames, axis=1)
    bias = rng.normal(0, 1, size=(1, 1, L, 2))
    drift = np.zeros((1, frames, 1, 2))
    drift[..., 0] = d * np.arange(frames)[None, :, None]
    errors = bias + drift
    result = sb.decomposition(errors, truth)
    translation = result["models"]["translation"]
    assert translation["jitter_shared"] == pytest.approx(1.0, abs=1e-12)
    assert translation["fluctuation_shared"] == pytest.approx(1.0, abs=1e-12)
    # Bias share: energy of the per-landmark temporal mean over the total, by hand.
    mean_drift = d * (frames - 1) / 2
    by_hand = ((bias + np.array([mean_drift, 0.0])) ** 2).sum() * frames / (errors**2).sum()
    assert result["bias_share"] == pytest.approx(by_hand, rel=1e-12)
    assert np.isnan(translation["truth_motion_shared"])  # the face does not move
    tracks = {"still/gt": truth, "still/raw-pdc": truth + errors, "still/finetuned-pdc": truth}
    bounds = sb.bounds(tracks, "still")
    assert bounds["raw"]["error_jitter"] == pytest.approx(d * d / 2, rel=1e-9)
    assert bounds["ours"]["error_jitter"] == 0.0
    # Without the drift only the bias is left: its NRMSE is mean_k ||b_k + (mean drift, 0)||
    # over the inter-ocular distance, by hand.
    iod = np.linalg.norm(truth[0, 0, 36] - truth[0, 0, 45])
    bias_error = np.linalg.norm(bias[0, 0] + np.array([mean_drift, 0.0]), axis=-1).mean()
    assert bounds["bias_only"]["nrmse"] == pytest.approx(100 * bias_error / iod, rel=1e-9)


def test_frontier_and_position_on_hand_made_points():
    points = [
        {"filter": "moving-average", "window": 2, "nrmse": 5.0, "error_jitter": 0.5, "lag": 0.5},
        {"filter": "moving-average", "window": 3, "nrmse": 5.5, "error_jitter": 0.3, "lag": 1.0},
        # dominated by window 2
        {"filter": "moving-average", "window": 4, "nrmse": 6.0, "error_jitter": 0.6, "lag": 0.5},
        # best of all, but lags too much for the frontier
        {"filter": "moving-average", "window": 9, "nrmse": 4.0, "error_jitter": 0.1, "lag": 3.0},
        # NaN lag (a still face): admitted
        {"filter": "kalman", "process_noise": 1.0, "nrmse": 7.0, "error_jitter": 0.2,
         "lag": float("nan")},
    ]  # fmt: skip
    front = [sb.setting_name(p) for p in sb.frontier(points)]
    assert front == [
        "moving-average(window=2)",
        "moving-average(window=3)",
        "kalman(process_noise=1)",
    ]
    ours = {"nrmse": 5.6, "error_jitter": 0.45, "lag": 1.0}
    pos = sb.position(ours, points)
    assert pos["dominated"] and pos["dominating_settings"] == 1  # window 3 only
    assert pos["best_at_equal_nrmse"]["setting"] == "moving-average(window=3)"
    assert pos["error_jitter_ratio_ours_vs_best"] == pytest.approx(1.5)
    # With a lag of 3 frames, ours is measured against the 3-frame-lag setting too.
    laggy = sb.position({**ours, "lag": 3.0}, points)
    assert laggy["best_at_equal_nrmse"]["setting"] == "moving-average(window=9)"
    assert not sb.position({"nrmse": 4.5, "error_jitter": 0.9, "lag": 0.0}, points)["dominated"]


def test_flicker_gain_is_the_one_the_frame_was_rendered_with():
    degradation = Degradation(flicker=0.3)
    video = SyntheticFaceVideos(1, 6, image_size=64, degradation=degradation, seed=3).video(0)
    levels = sb.frame_degradation(video)
    flat = np.full((8, 8, 3), 100, np.uint8)
    for t in range(len(video)):
        rng = np.random.default_rng((*video.key, 1, t))
        out = apply_degradation(flat, degradation, rng, np.zeros(2))
        assert abs(out[0, 0, 0] / 100.0 - 1.0) == pytest.approx(levels["flicker"][t], abs=0.01)
    assert levels["blur_streak_px"].max() == 0.0  # no blur exposure
    streak = sb.frame_degradation(
        SyntheticFaceVideos(1, 6, image_size=64, degradation="heavy", seed=3).video(0)
    )["blur_streak_px"]
    np.testing.assert_allclose(streak, np.linalg.norm(video.motion, axis=-1) * 1.0)


def test_heatmap_statistics_of_a_two_pixel_map():
    maps = torch.zeros(1, 2, 8, 8)
    maps[0, 0, 3, 2] = maps[0, 0, 3, 4] = 1.0  # two unit pixels 2 px apart: spread 1 px
    maps[0, 1, 5, 5] = 0.1  # below the threshold: no mass, no spread
    s = sb.heatmap_statistics(maps, threshold=0.2)
    np.testing.assert_allclose(s["peak"], [[1.0, 0.1]])
    np.testing.assert_allclose(s["mass"], [[2.0, 0.0]])
    np.testing.assert_allclose(s["spread"], [[1.0, 0.0]], atol=1e-12)


def test_spearman_and_quartile_ratio():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
    b[:, 1] = a[:, 1] ** 3  # monotone: rho 1
    rho = sb.spearman_along_time(a, b)
    for k in range(3):
        assert rho[k] == pytest.approx(stats.spearmanr(a[:, k], b[:, k]).statistic)
    assert rho[1] == pytest.approx(1.0)
    assert np.isnan(sb.spearman_along_time(a, np.ones_like(a))).all()
    statistic = np.arange(8.0)[:, None]
    error2 = np.array([1, 1, 5, 5, 5, 5, 3, 3.0])[:, None]  # bottom quartile 1, top 3
    assert sb.quartile_variance_ratio(error2, statistic)[0] == pytest.approx(3.0)


def test_command_writes_json_and_tables(tmp_path, capsys):
    rng = np.random.default_rng(5)
    truth = np.repeat(_shapes(rng, 1, 1), 12, axis=1)
    raw = truth + rng.normal(0, 1, size=truth.shape)
    np.savez(tmp_path / "tracks.npz", **{"still/gt": truth, "still/raw-pdc": raw,
                                         "still/finetuned-pdc": 0.5 * (raw + truth)})  # fmt: skip
    assert sb.main([str(tmp_path), "--no-heatmaps"]) == 0
    result = json.loads((tmp_path / "stabiliser_bounds.json").read_text())
    still = result["sets"]["still"]
    assert set(still) == {"decomposition", "bounds"}
    assert still["bounds"]["zero_phase"]["best"]["nrmse"] < still["bounds"]["raw"]["nrmse"]
    assert "### (c) Bounds" in capsys.readouterr().out
    assert sb.main([str(tmp_path / "missing"), "--no-heatmaps"]) == 2
    assert "tracks.npz not found" in capsys.readouterr().err
    np.savez(tmp_path / "tracks.npz", **{"still/gt": truth, "still/raw-pdc": raw})
    assert sb.main([str(tmp_path), "--no-heatmaps"]) == 2
    assert "'still/finetuned-pdc' missing" in capsys.readouterr().err
    (tmp_path / "tracks.npz").write_bytes(b"not a zip")
    assert sb.main([str(tmp_path), "--no-heatmaps"]) == 2
    assert "cannot read the tracks archive" in capsys.readouterr().err


def test_evidence_follows_a_level_that_scales_a_shared_shift():
    """Every landmark is shifted along x by +-level_t (pairs of frames, so the temporal mean is
    the bias alone): |e - bias| = level_t everywhere, all of it shared by the face."""
    rng = np.random.default_rng(6)
    frames = 40
    truth = np.repeat(_shapes(rng, 1, 1), frames, axis=1)
    level = np.repeat(rng.uniform(0.1, 2.0, frames // 2), 2)[None]  # (1, T)
    sign = np.tile([1.0, -1.0], frames // 2)[None]
    bias = rng.normal(0, 1, size=(1, 1, L, 2))
    errors = np.repeat(bias, frames, axis=1)
    errors[..., 0] += (level * sign)[..., None]
    per_map = {"spread": np.repeat(level[..., None], L, axis=-1)}
    # (abs=1e-3: the frame pairs tie, and rounding in |e - bias| may break a tie)
    result = sb.evidence(errors, truth, {"blur_streak_px": level}, per_map)
    frame = result["per_frame"]["blur_streak_px"]
    assert frame["spearman_deviation"]["mean"] == pytest.approx(1.0, abs=1e-3)
    assert frame["spearman_shared_deviation"]["mean"] == pytest.approx(1.0, abs=1e-3)
    shares = sb.decomposition(errors, truth)["models"]["translation"]
    assert shares["fluctuation_shared"] == pytest.approx(1.0, abs=1e-12)
    spread = result["per_landmark"]["spread"]
    assert spread["spearman_deviation"]["mean"] == pytest.approx(1.0, abs=1e-3)
    assert spread["frame_mean_spearman_shared_deviation"]["mean"] == pytest.approx(1.0, abs=1e-3)
    low, high = np.quantile(level, [0.25, 0.75])
    by_hand = (level[level >= high] ** 2).mean() / (level[level <= low] ** 2).mean()
    ratio = spread["deviation_variance_top_vs_bottom_quartile"]["median"]
    assert ratio == pytest.approx(by_hand)


def test_split_filter_sends_rigid_motion_to_the_shared_part():
    """A face that moves only by similarities: every frame's step is an exact similarity of the
    previous frame, so whatever filters the per-landmark part, identity on the shared part
    reproduces the track; with identity on both parts any track comes back unchanged."""
    rng = np.random.default_rng(7)
    base = _shapes(rng, 1, 1)
    rigid = _similar(np.repeat(base, 15, axis=1), rng)[0]
    heavy = sb.SplitFilter(make_filter("none"), make_filter("moving-average", window=9))
    np.testing.assert_allclose(apply_filter(heavy, rigid), rigid, atol=1e-9)
    noisy = rigid + rng.normal(0, 1, size=rigid.shape)
    identity = sb.SplitFilter(make_filter("none"), make_filter("none"))
    np.testing.assert_allclose(apply_filter(identity, noisy), noisy, atol=1e-9)
    # The per-landmark noise is what the heavy residual filter removes.
    smoothed = apply_filter(heavy, noisy)
    assert (
        np.square(np.diff(smoothed - rigid, axis=0)).mean()
        < 0.5 * np.square(np.diff(noisy - rigid, axis=0)).mean()
    )
