"""The embedded default run (`lightning-fa demo`): helpers checked against hand computations, and
the tiny end-to-end run (outputs, backbone cache reuse, determinism)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from lightning_fa import pipeline
from lightning_fa.pipeline import PipelineConfig, PretrainConfig


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
    assert pipeline.estimate_lag(truth, truth) == 0.0
    still = np.repeat(truth[:1], len(truth), axis=0)
    assert np.isnan(pipeline.estimate_lag(still + 0.1, still))  # nothing moves: no lag to see
    assert pipeline.estimate_lag(delayed, truth) == pytest.approx(2.0, abs=0.125)


def test_track_metrics_match_the_formulas():
    rng = np.random.default_rng(0)
    truth = rng.uniform(20, 100, (1, 1, 68, 2)).repeat(6, axis=1)  # a still face, 6 frames
    pred = truth + rng.normal(0, 1.0, truth.shape)
    m = pipeline.track_metrics(pred, truth)
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
    np.testing.assert_allclose(pipeline.box_size(track), [30.0, 30.0])
    expected = np.hypot(track[0, 45, 0] - track[0, 36, 0], track[0, 45, 1] - track[0, 36, 1])
    np.testing.assert_allclose(pipeline.interocular(track), [expected, expected])


def test_still_video_holds_the_face_while_the_camera_noise_changes():
    config = PipelineConfig.fast()
    video = pipeline.eval_sources(config)["still"]()[0]
    frames, landmarks = pipeline.render(video)
    assert np.ptp(landmarks, axis=0).max() == 0.0
    assert not torch.equal(frames[0], frames[1])  # per-frame degradation


def test_acceptance_rule():
    def row(nrmse, mcv, mav, jitter=1.0, lag=0.0):
        return {"nrmse": nrmse, "mcv": mcv, "mav": mav, "error_jitter": jitter, "lag": lag}

    filters = {f"raw-pdc+{n}": row(5.0, 1.0, 1.0, 0.5, 1.0) for n in ("one-euro-mediapipe", "one-euro-tuned", "kalman")}  # fmt: skip
    good = {"degraded": {"raw-pdc": row(5.0, 2.0, 4.0), "finetuned-pdc": row(4.9, 1.0, 2.0, 0.4), **filters}}  # fmt: skip
    verdict = pipeline.acceptance(good)
    assert verdict["passed"]
    assert verdict["mav_reduction_pct"] == pytest.approx(50.0)
    assert verdict["versus_filters"]["kalman"] == {
        "lower_error_jitter": True,
        "nrmse_not_worse": True,
        "lag_not_larger": True,
    }
    worse_nrmse = json.loads(json.dumps(good))
    worse_nrmse["degraded"]["finetuned-pdc"]["nrmse"] = 5.1
    assert not pipeline.acceptance(worse_nrmse)["passed"]
    small_cut = json.loads(json.dumps(good))
    small_cut["degraded"]["finetuned-pdc"]["mcv"] = 1.3  # a 35 % cut
    assert not pipeline.acceptance(small_cut)["passed"]


def test_load_config_round_trip(tmp_path):
    config = PipelineConfig.fast()
    (tmp_path / "metrics.json").write_text(json.dumps({"config": config.to_dict()}))
    assert pipeline.load_config(tmp_path) == config
    with pytest.raises(FileNotFoundError, match=r"metrics\.json"):
        pipeline.load_config(tmp_path / "missing")


@pytest.mark.slow
def test_fast_pipeline_end_to_end_reuses_the_cached_backbone(tmp_path, capsys):
    torch.set_num_threads(1)
    cache = tmp_path / "cache"
    first = pipeline.run(PipelineConfig.fast(), tmp_path / "run1", cache)
    entry = cache / f"{PipelineConfig.fast().pretrain.cache_key()}.pth"
    assert entry.is_file() and not first["backbone_cache"]["reused"]
    written_at = entry.stat().st_mtime_ns

    out = capsys.readouterr().out
    for label in pipeline.METHODS.values():
        assert label in out  # the printed summary table has every method

    run1 = tmp_path / "run1"
    for name in ("metrics.json", "tracks.npz", "report.md", "finetuned.ckpt", "backbone.pth"):
        assert (run1 / name).is_file(), name
    metrics = json.loads((run1 / "metrics.json").read_text())
    assert set(metrics["results"]) == {"degraded", "clean", "still"}
    for per_set in metrics["results"].values():
        assert set(per_set) == set(pipeline.METHODS)
        for values in per_set.values():
            assert set(values) == set(pipeline.METRICS)
    for png in ("fig1_still_ellipses", "trajectories", "ced", "tradeoff", "robustness"):
        assert (run1 / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    second = pipeline.run(PipelineConfig.fast(), tmp_path / "run2", cache, report=False)
    assert second["backbone_cache"]["reused"]
    assert "pretraining skipped" in capsys.readouterr().out
    assert entry.stat().st_mtime_ns == written_at
    # Seeded end to end: the second run (cached backbone) reproduces the first one's tracks.
    with np.load(run1 / "tracks.npz") as a, np.load(tmp_path / "run2" / "tracks.npz") as b:
        for key in a.files:
            np.testing.assert_allclose(a[key], b[key], atol=1e-5, err_msg=key)
