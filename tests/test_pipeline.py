"""The embedded default run (`lightning-fa demo`): helpers checked against hand computations, and
the tiny end-to-end run (outputs, backbone cache reuse, determinism)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from data_modules.embedded import HeatmapWindows, render, slow_video
from lightning_fa.commands.embedded import config as embedded_config
from lightning_fa.commands.embedded import evaluation as embedded_evaluation
from lightning_fa.commands.embedded import run as embedded_run
from lightning_fa.commands.embedded.config import PipelineConfig, PretrainConfig
from lightning_fa.metrics.tracks import box_size, interocular, lag, track_metrics


def test_cache_key_depends_on_every_pretraining_field():
    base = PretrainConfig()
    assert base.cache_key() == PretrainConfig().cache_key()
    changed = [replace(base, lr=1e-4), replace(base, epochs=2), replace(base, degradations=("clean",))]  # fmt: skip
    keys = {c.cache_key() for c in changed}
    assert base.cache_key() not in keys and len(keys) == len(changed)


def test_estimate_lag_recovers_a_known_delay():
    t = np.arange(120, dtype=np.float64)
    signal = np.stack([40 + 10 * np.sin(t / 7.0), 50 + 8 * np.cos(t / 5.0)], axis=-1)
    truth = np.repeat(signal[:, None], 3, axis=1)  # (T, 3, 2)
    delayed = np.concatenate([np.repeat(truth[:2], 1, axis=0), truth[:-2]])  # 2 frames late
    assert lag(truth, truth) == 0.0
    still = np.repeat(truth[:1], len(truth), axis=0)
    assert np.isnan(lag(still + 0.1, still))  # nothing moves: no lag to see
    assert lag(delayed, truth) == pytest.approx(2.0, abs=0.125)


def test_track_metrics_match_the_formulas():
    rng = np.random.default_rng(0)
    truth = rng.uniform(20, 100, (1, 1, 68, 2)).repeat(6, axis=1)  # a still face, 6 frames
    pred = truth + rng.normal(0, 1.0, truth.shape)
    m = track_metrics(pred, truth)
    # Literal SPEC 5 loops.
    iod = np.linalg.norm(truth[0, :, 36] - truth[0, :, 45], axis=-1)
    nme = [np.mean(np.linalg.norm(pred[0, t] - truth[0, t], axis=-1)) / iod[t] for t in range(6)]
    avar = np.mean(
        [
            sum(np.sum((pred[0, t + 1, k] - pred[0, t, k]) ** 2) for t in range(5)) / 10
            for k in range(68)
        ]
    )
    cvar = np.mean(pred[0].std(axis=0, ddof=1) / pred[0].mean(axis=0))
    assert m["nrmse"] == pytest.approx(100 * np.mean(nme), rel=1e-5)
    assert m["mav"] == pytest.approx(avar, rel=1e-5)
    # The truth does not move, so the error jitters exactly as the prediction does.
    assert m["error_jitter"] == pytest.approx(avar, rel=1e-5)
    assert m["mcv"] == pytest.approx(100 * cvar, rel=1e-5)


def test_face_scales():
    track = np.zeros((2, 68, 2))
    track[:, :, 0] = np.linspace(10, 50, 68)  # width 40
    track[:, :, 1] = np.linspace(0, 20, 68)  # height 20
    np.testing.assert_allclose(box_size(track), [30.0, 30.0])
    expected = np.hypot(track[0, 45, 0] - track[0, 36, 0], track[0, 45, 1] - track[0, 36, 1])
    np.testing.assert_allclose(interocular(track), [expected, expected])
    collapsed = np.zeros((2, 68, 2))  # a degenerate track keeps a positive scale
    assert (box_size(collapsed) > 0).all() and (interocular(collapsed) > 0).all()


def test_still_video_holds_the_face_while_the_camera_noise_changes():
    config = PipelineConfig.fast()
    video = embedded_config.eval_sources(config)["still"]()[0]
    frames, landmarks = render(video)
    assert np.ptp(landmarks, axis=0).max() == 0.0
    assert not torch.equal(frames[0], frames[1])  # per-frame degradation


def test_slow_video_scales_the_head_pose_about_its_mean_and_keeps_expressions():
    config = PipelineConfig.fast()
    source = embedded_config.eval_videos(config.evaluate, 64, "heavy", 0)
    original = source.video(0)
    rigid = slice(0, 6)  # scale, tx, ty, roll, yaw, pitch
    mean = original.params[:, rigid].mean(axis=0)
    slowed = slow_video(source.video(0), 0.1)
    np.testing.assert_allclose(
        slowed.params[:, rigid], mean + 0.1 * (original.params[:, rigid] - mean)
    )
    np.testing.assert_array_equal(slowed.params[:, 6:], original.params[:, 6:])
    quiet = slow_video(source.video(0), 1.0, expression=0.5)
    expressions = slice(6, 9)  # mouth_open, smile, brow_raise; blinks (9, 10) stay
    centre = original.params[:, expressions].mean(axis=0)
    np.testing.assert_allclose(
        quiet.params[:, expressions], centre + 0.5 * (original.params[:, expressions] - centre)
    )
    np.testing.assert_array_equal(quiet.params[:, 9:], original.params[:, 9:])
    frozen = slow_video(source.video(0), 0.0)
    assert np.ptp(frozen.params[:, rigid], axis=0).max() < 1e-9
    unchanged = slow_video(source.video(0), 1.0)
    np.testing.assert_allclose(unchanged.landmarks, original.landmarks)
    with pytest.raises(ValueError, match="head_motion"):
        slow_video(source.video(0), 1.5)
    with pytest.raises(ValueError, match="expression"):
        slow_video(source.video(0), 0.5, expression=-0.1)


def test_eval_sources_hold_every_configured_set():
    config = PipelineConfig.fast()
    names = [name for name, *_ in config.evaluate.sets]
    assert list(embedded_config.eval_sources(config)) == [*names, "still"]
    assert config.evaluate.acceptance_set in names


def _position_coded(videos: int, frames: int, size: int) -> torch.Tensor:
    """(V, F, L, size, size) maps whose value names its own (video, frame, landmark, y, x)."""
    v, f, k, y, x = torch.meshgrid(
        *(torch.arange(n) for n in (videos, frames, 68, size, size)), indexing="ij"
    )
    return (((v * 100 + f) * 100 + k) * 100 + y) * 100 + x


def test_heatmap_windows_cut_each_landmark_patch_and_move_its_landmarks():
    stride, size, crop = 4.0, 16, 6
    rng = np.random.default_rng(1)
    heatmaps = _position_coded(2, 5, size).double()
    landmarks = torch.from_numpy(rng.uniform(0, size * stride - 1, (2, 5, 68, 2)))
    windows = HeatmapWindows(heatmaps, landmarks, stride, seq_len=3, num_windows=4, crop=crop)
    assert len(windows) == 4
    for index in range(len(windows)):
        item = windows[index]
        patch, moved = item["backbone_heatmaps"], item["landmarks"]
        assert patch.shape == (3, 68, crop, crop) and item["frames"].numel() == 0
        code = patch.long()
        video, start = int(code[0, 0, 0, 0] // 10**8), int(code[0, 0, 0, 0] // 10**6 % 100)
        y0, x0 = (code[0, :, 0, 0] // 100) % 100, code[0, :, 0, 0] % 100  # (68,) origins
        for t in range(3):
            for k in (0, 33, 67):  # every patch pixel is the full map at origin + (i, j)
                full = heatmaps[video, start + t, k, y0[k] : y0[k] + crop, x0[k] : x0[k] + crop]
                torch.testing.assert_close(patch[t, k], full)
        origin = torch.stack([x0, y0], dim=-1).double() * stride
        torch.testing.assert_close(moved, landmarks[video, start : start + 3] - origin)
        # The landmark (mean over the window, in heatmap pixels) lies inside its patch.
        mean = ((moved + 0.5) / stride - 0.5).mean(dim=0)
        inside = (mean > -1) & (mean < crop)
        assert inside.float().mean() > 0.9  # only clamping at the map border pushes one out


def test_heatmap_windows_draw_new_windows_each_epoch_reproducibly():
    heatmaps = _position_coded(3, 20, 8).double()
    landmarks = torch.rand(3, 20, 68, 2) * 30
    windows = HeatmapWindows(heatmaps, landmarks, 4.0, seq_len=4, num_windows=6, seed=3)

    def first_frames(epoch: int) -> list[int]:
        return [int(windows[(epoch, i)]["backbone_heatmaps"][0, 0, 0, 0]) for i in range(6)]

    assert first_frames(0) == first_frames(0)  # a pure function of (seed, epoch, index)
    assert first_frames(0) != first_frames(1)
    assert windows[2]["landmarks"].shape == (4, 68, 2)
    # Without crop an item is a plain slice of one video.
    item = windows[(1, 2)]
    code = int(item["backbone_heatmaps"][0, 0, 0, 0])
    video, start = code // 10**8, code // 10**6 % 100
    torch.testing.assert_close(item["backbone_heatmaps"], heatmaps[video, start : start + 4])
    torch.testing.assert_close(item["landmarks"], landmarks[video, start : start + 4])


def test_heatmap_windows_check_arguments():
    heatmaps, landmarks = torch.rand(1, 6, 68, 8, 8), torch.rand(1, 6, 68, 2)
    with pytest.raises(ValueError, match="seq_len"):
        HeatmapWindows(heatmaps, landmarks, 4.0, seq_len=7, num_windows=2)
    with pytest.raises(ValueError, match="crop"):
        HeatmapWindows(heatmaps, landmarks, 4.0, seq_len=2, num_windows=2, crop=9)
    with pytest.raises(ValueError, match="landmarks"):
        HeatmapWindows(heatmaps, landmarks[..., :1], 4.0, seq_len=2, num_windows=2)
    with pytest.raises(IndexError):
        HeatmapWindows(heatmaps, landmarks, 4.0, seq_len=2, num_windows=2)[2]


def test_acceptance_rule():
    def row(nrmse, mcv, mav, jitter=1.0, lag=0.0):
        return {"nrmse": nrmse, "mcv": mcv, "mav": mav, "error_jitter": jitter, "lag": lag}

    filters = {f"raw-pdc+{n}": row(5.0, 1.0, 1.0, 0.5, 1.0) for n in ("one-euro-mediapipe", "one-euro-tuned", "kalman")}  # fmt: skip
    good = {"degraded": {"raw-pdc": row(5.0, 2.0, 4.0), "finetuned-pdc": row(4.9, 1.0, 2.0, 0.4), **filters}}  # fmt: skip
    verdict = embedded_evaluation.acceptance(good, "degraded")
    assert verdict["passed"] and verdict["eval_set"] == "degraded"
    with pytest.raises(ValueError, match="degraded-slow"):
        embedded_evaluation.acceptance(good)  # the default set is missing
    assert verdict["mav_reduction_pct"] == pytest.approx(50.0)
    assert verdict["versus_filters"]["kalman"] == {
        "lower_error_jitter": True,
        "nrmse_not_worse": True,
        "lag_not_larger": True,
    }
    worse_nrmse = json.loads(json.dumps(good))
    worse_nrmse["degraded"]["finetuned-pdc"]["nrmse"] = 5.1
    assert not embedded_evaluation.acceptance(worse_nrmse, "degraded")["passed"]
    small_cut = json.loads(json.dumps(good))
    small_cut["degraded"]["finetuned-pdc"]["mcv"] = 1.3  # a 35 % cut
    assert not embedded_evaluation.acceptance(small_cut, "degraded")["passed"]


def test_load_config_round_trip(tmp_path):
    config = PipelineConfig.fast()
    (tmp_path / "metrics.json").write_text(json.dumps({"config": config.to_dict()}))
    assert embedded_config.load_config(tmp_path) == config
    with pytest.raises(FileNotFoundError, match=r"metrics\.json"):
        embedded_config.load_config(tmp_path / "missing")


@pytest.mark.slow
def test_fast_pipeline_end_to_end_reuses_the_cached_backbone(tmp_path, capsys, one_thread):
    cache = tmp_path / "cache"
    first = embedded_run.run(PipelineConfig.fast(), tmp_path / "run1", cache)
    entry = cache / f"{PipelineConfig.fast().pretrain.cache_key()}.pth"
    assert entry.is_file() and not first["backbone_cache"]["reused"]
    written_at = entry.stat().st_mtime_ns

    out = capsys.readouterr().out
    for label in embedded_config.METHODS.values():
        assert label in out  # the printed summary table has every method

    run1 = tmp_path / "run1"
    for name in ("metrics.json", "tracks.npz", "report.md", "finetuned.ckpt", "backbone.pth"):
        assert (run1 / name).is_file(), name
    metrics = json.loads((run1 / "metrics.json").read_text())
    assert set(metrics["results"]) == {"degraded", "degraded-slow", "clean", "still"}
    for per_set in metrics["results"].values():
        assert set(per_set) == set(embedded_config.METHODS)
        for values in per_set.values():
            assert set(values) == set(embedded_config.METRICS)
    for png in ("fig1_still_ellipses", "trajectories", "ced", "tradeoff", "robustness"):
        assert (run1 / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    second = embedded_run.run(PipelineConfig.fast(), tmp_path / "run2", cache, report=False)
    assert second["backbone_cache"]["reused"]
    assert "pretraining skipped" in capsys.readouterr().out
    assert entry.stat().st_mtime_ns == written_at
    # Seeded end to end: the second run (cached backbone) reproduces the first one's tracks.
    with np.load(run1 / "tracks.npz") as a, np.load(tmp_path / "run2" / "tracks.npz") as b:
        for key in a.files:
            np.testing.assert_allclose(a[key], b[key], atol=1e-5, err_msg=key)
