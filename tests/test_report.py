"""`lightning-fa report`: figures are real PNGs, the table lists every method, ellipses are right.

The run directory is built by hand (tracks = ground truth + noise, metrics from them), so these
tests need no training.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lightning_fa.commands import report
from lightning_fa.commands.embedded import config as embedded_config
from lightning_fa.commands.embedded import evaluation as embedded_evaluation
from lightning_fa.commands.embedded.config import PipelineConfig
from lightning_fa.metrics.tracks import track_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_fake_run(directory: Path) -> Path:
    """A fake demo run: the fast config's eval videos, noisy tracks, their metrics."""
    config = PipelineConfig.fast()
    rng = np.random.default_rng(0)
    arrays, results = {}, {}
    for name, source in embedded_config.eval_sources(config).items():
        truth = np.stack([video.landmarks for video in source()]).astype(np.float32)
        arrays[f"{name}/gt"] = truth
        results[name] = {}
        for i, key in enumerate(embedded_config.METHODS):
            track = truth + rng.normal(0, 0.2 + 0.1 * i, truth.shape).astype(np.float32)
            arrays[f"{name}/{key}"] = track
            results[name][key] = {**track_metrics(track, truth), "latency_ms": 1.0 + i}
    sweep = {"parameter": "min_cutoff", "points": [{"min_cutoff": v, **results["degraded"]["raw-pdc"]} for v in (0.1, 1.0)]}  # fmt: skip
    curves = {k: {"mcv": [1.0, 2.0], "nrmse": [3.0, 4.0]} for k in report.COMPARED}
    metrics = {
        "config": config.to_dict(),
        "methods": embedded_config.METHODS,
        "backbone_cache": {"path": "cache/backbones/x.pth", "key": "x", "reused": True},
        "timing": {"pretrain_s": 0.0, "finetune_s": 1.0, "evaluate_s": 2.0, "total_s": 3.0},
        "results": results,
        "acceptance": embedded_evaluation.acceptance(results),
        "sweeps": {"degraded": {"one-euro": sweep}},
        "robustness": {
            axis: {"levels": [0.0, 1.0], "curves": curves} for axis in ("noise", "blur")
        },
        "torch_threads": 1,
    }
    (directory / "metrics.json").write_text(json.dumps(metrics))
    np.savez_compressed(directory / "tracks.npz", **arrays)
    return directory


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    directory = write_fake_run(tmp_path_factory.mktemp("run"))
    assert report.main([str(directory)]) == 0
    return directory


FIGURES = ("fig1_still_ellipses", "trajectories", "ced", "tradeoff", "robustness")


@pytest.mark.parametrize("name", FIGURES)
def test_figures_are_readable_pngs(run_dir, name):
    path = run_dir / f"{name}.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("L"))
    assert width >= 300 and height >= 200
    assert pixels.std() > 5  # not a blank canvas


def test_report_lists_every_method_and_figure(run_dir):
    text = (run_dir / "report.md").read_text()
    tables = len(
        embedded_config.eval_sources(PipelineConfig.fast())
    )  # one table per evaluation set
    for label in embedded_config.METHODS.values():
        assert text.count(f"| {label} |") == tables
    for name in FIGURES:
        assert f"]({name}.png)" in text
    assert "Verdict" in text


def test_overlay_video_has_every_frame_side_by_side(run_dir):
    capture = cv2.VideoCapture(str(run_dir / "overlay.avi"))
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = capture.read()
    capture.release()
    size = PipelineConfig.fast().pretrain.image_size * 3
    assert ok and frame.shape == (size, 3 * size, 3)
    assert frames == PipelineConfig.fast().evaluate.frames


def test_confidence_ellipse_matches_the_covariance():
    # Points whose sample covariance is exactly diag(4, 1), rotated by 30 degrees.
    base = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) * np.sqrt(3 / 2)
    angle = np.radians(30.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = base @ rotation.T + (10.0, 20.0)
    centre, width, height, degrees = report.confidence_ellipse(points)
    np.testing.assert_allclose(centre, (10.0, 20.0), atol=1e-12)
    assert width == pytest.approx(2 * np.sqrt(5.991 * 4.0))
    assert height == pytest.approx(2 * np.sqrt(5.991 * 1.0))
    assert (degrees - 30.0) % 180.0 == pytest.approx(0.0, abs=1e-9)


def test_confidence_ellipse_covers_95_percent_of_gaussian_samples():
    rng = np.random.default_rng(1)
    points = rng.multivariate_normal((0, 0), [[3.0, 1.2], [1.2, 1.0]], size=20000)
    centre, width, height, degrees = report.confidence_ellipse(points)
    a = np.radians(degrees)
    local = (points - centre) @ np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    inside = (local[:, 0] / (width / 2)) ** 2 + (local[:, 1] / (height / 2)) ** 2 <= 1
    assert inside.mean() == pytest.approx(0.95, abs=0.01)


def test_missing_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"metrics\.json"):
        report.main([str(tmp_path / "nothing")])


def test_frontier_verdict_per_set_reaches_the_summary_table():
    rng = np.random.default_rng(0)
    truth = 50 + np.cumsum(rng.normal(0, 0.5, size=(2, 40, 68, 2)), axis=1)
    raw = truth + rng.normal(0, 0.8, size=truth.shape)
    perfect = embedded_evaluation.frontier_position(truth, raw, truth)
    assert perfect["verdict"].startswith("not dominated") and not perfect["dominated"]
    assert perfect["settings"] == 70
    # The raw track shifted by 2 px: as jittery as raw and less accurate than any filter.
    worse = embedded_evaluation.frontier_position(raw + 2.0, raw, truth)
    assert worse["dominated"] and worse["verdict"].startswith("dominated by ")
    metrics = {
        "methods": {"raw-pdc": "raw"},
        "results": {"set": {"raw-pdc": {m: 1.0 for m, _, _ in report.COLUMNS}}},
        "frontier": {"set": worse},
    }
    assert report.summary_table(metrics, "set").splitlines()[-1] == (
        f"ours against the swept filters: {worse['verdict']}"
    )
    assert f"**ours against the swept filters: {worse['verdict']}**" in report.summary_table(
        metrics, "set", markdown=True
    )
    del metrics["frontier"]  # a run recorded before the frontier: no verdict line
    assert "swept filters" not in report.summary_table(metrics, "set")
