"""The benchmark harness runs, writes the JSON it promises and reports missing parts honestly.

No timing assertions here: speed is what the harness reports, not what the tests check.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_fa.commands.bench import data as data_bench
from lightning_fa.commands.bench import harness, latency
from lightning_fa.commands.bench import tracker as tracker_bench
from lightning_fa.heatmaps import pdc
from lightning_fa.outputs import OutputLock

MACHINE_KEYS = {"date", "cpu_model", "torch_threads", "torch", "lightning", "python"}
TIMING_KEYS = {"median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms", "repeats"}


def literal_pdc(heatmap: np.ndarray, threshold: float) -> tuple[float, float]:
    """SPEC 2 read literally, one pixel at a time: zero values < threshold, centre of mass."""
    height, width = heatmap.shape
    mass = sx = sy = 0.0
    for y in range(height):
        for x in range(width):
            value = float(heatmap[y, x])
            if value >= threshold:
                mass += value
                sx += x * value
                sy += y * value
    if mass == 0:  # nothing survives: argmax (first maximum in row-major order)
        y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
        return float(x), float(y)
    return sx / mass, sy / mass


def test_smoke_decode_writes_json_with_machine_info(tmp_path):
    out = tmp_path / "sub" / "bench.json"
    assert harness.main(["--smoke", "--only", "decode", "--out", str(out), "--threads", "1"]) == 0
    report = json.loads(out.read_text())
    assert MACHINE_KEYS <= set(report["machine"])
    assert report["machine"]["torch_threads"] == 1
    assert report["settings"] == {
        "device": "cpu",
        "tier": "smoke",
        "threads": 1,
        "only": ["decode"],
    }
    assert list(report["benchmarks"]) == ["decode"]
    decode = report["benchmarks"]["decode"]
    assert set(decode["timings"]) == {"pdc", "argmax", "argmax_quarter", "naive_pdc"}
    for timing in decode["timings"].values():
        assert TIMING_KEYS <= set(timing)
        assert timing["min_ms"] <= timing["median_ms"] <= timing["max_ms"]
    for key in ("ratio_pdc_vs_argmax", "ratio_argmax_quarter_vs_argmax", "ratio_naive_pdc_vs_pdc"):
        assert decode[key] > 0
    assert decode["pdc_matches_reference"] is True
    assert decode["pdc_max_abs_error_px"] <= 1e-5


def test_missing_component_is_skipped_not_a_crash(tmp_path, monkeypatch):
    # A None entry in sys.modules makes the import raise ImportError, as if the file were absent.
    monkeypatch.setitem(sys.modules, "lightning_fa.tracking.tracker", None)

    def needs_missing_part(ctx):
        import lightning_fa.no_such_component  # noqa: F401

    monkeypatch.setitem(harness.BENCHMARKS, "needs_missing_part", needs_missing_part)
    out = tmp_path / "bench.json"
    argv = ["--smoke", "--only", "tracker", "needs_missing_part", "gpu_path", "--out", str(out)]
    assert harness.main(argv) == 0
    results = json.loads(out.read_text())["benchmarks"]
    assert results["tracker"]["skipped"].startswith("tracker not available")
    assert "no_such_component" in results["needs_missing_part"]["skipped"]
    assert "cuda" in results["gpu_path"]["skipped"]


def test_smoke_tracker_reports_both_engines_and_the_in_step_overhead(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench.json"
    assert harness.main(["--smoke", "--only", "tracker", "--out", str(out)]) == 0
    tracker = json.loads(out.read_text())["benchmarks"]["tracker"]
    assert TIMING_KEYS <= set(tracker["bare_backbone"])
    for engine in ("torch", "onnx"):
        figures = tracker["engines"][engine]
        assert figures["frames_per_s"] > 0 and figures["tracks_at_end"] == 1
    in_step = tracker["engines"]["torch"]["overhead_vs_backbone_in_step"]
    assert in_step["steps"] == 4  # 2 warm-up + 2 timed steps, each ran the backbone once
    assert in_step["median_ratio"] > 0


def test_smoke_tracker_long_reports_memory_growth_and_speed_at_both_ends(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--smoke", "--only", "tracker_long", "--out", str(out), "--threads", "1"]
    assert harness.main(argv) == 0
    long_run = json.loads(out.read_text())["benchmarks"]["tracker_long"]
    assert long_run["frames"] == 60  # every frame of the written video was tracked
    assert long_run["rss_baseline_frame"] == 10  # a sixth of a video shorter than 500 frames
    assert long_run["fps_first_tenth"] > 0 and long_run["fps_last_tenth"] > 0
    assert len(long_run["fps_by_tenth"]) == 10
    assert (
        long_run["median_frame_ms_first_tenth"] > 0 and long_run["median_frame_ms_last_tenth"] > 0
    )
    assert 0 < long_run["rss_mib_at_baseline"] and 0 < long_run["rss_mib_at_end"]
    assert isinstance(long_run["rss_growth_pct"], float)
    assert long_run["outputs_mib"]["long.csv"] > 0 and long_run["outputs_mib"]["long.json"] > 0


def test_an_out_being_written_is_refused_before_any_benchmark(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    out.write_text("earlier")
    monkeypatch.setitem(harness.BENCHMARKS, "must_not_run", lambda ctx: pytest.fail("it ran"))
    with OutputLock(out), pytest.raises(ValueError, match="being written by another run"):
        harness.main(["--smoke", "--only", "must_not_run", "--out", str(out)])
    assert out.read_text() == "earlier"


def test_in_step_overhead_separates_the_backbone_from_the_rest() -> None:
    # A stand-in tracker: the "backbone" sleeps 40 ms inside each step, the rest 10 ms.
    class Sleeper(torch.nn.Module):
        def forward(self, x):
            time.sleep(0.040)
            return x

    class FakeTracker:
        def __init__(self) -> None:
            self.step_fn = type("Step", (), {"module": type("M", (), {"backbone": Sleeper()})()})

        def step(self, frame):
            time.sleep(0.010)
            return self.step_fn.module.backbone(torch.zeros(1))

    ctx = harness.BenchContext(device=torch.device("cpu"))
    run = tracker_bench._tracker_workload(ctx, FakeTracker(), [np.zeros((2, 2, 3), np.uint8)])
    for _ in range(3):
        run()
    figures = tracker_bench._in_step_overhead(run)
    assert figures["steps"] == 3
    # Sleeps only ever overrun: 10 ms of 40 ms is 0.25, a loaded machine stretches both.
    assert 0.1 <= figures["median_ratio"] < 1.0
    assert figures["median_overhead_ms"] >= 10.0


def test_failing_benchmark_is_recorded_and_sets_exit_code(tmp_path, monkeypatch):
    def broken(ctx):
        raise RuntimeError("boom")

    monkeypatch.setitem(harness.BENCHMARKS, "broken", broken)
    out = tmp_path / "bench.json"
    assert harness.main(["--smoke", "--only", "broken", "--out", str(out)]) == 1
    assert "RuntimeError: boom" in json.loads(out.read_text())["benchmarks"]["broken"]["error"]


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        harness.main(["--only", "no_such_benchmark"])
    with pytest.raises(SystemExit):
        harness.main(["--threads", "0"])


def test_naive_pdc_matches_a_literal_loop():
    heatmaps = latency.synthetic_heatmaps((2, 3, 7, 9), seed=3).double()
    heatmaps[1, 2] = 0.1  # nothing reaches the threshold: argmax fallback
    expected = [[literal_pdc(heatmaps[b, k].numpy(), 0.2) for k in range(3)] for b in range(2)]
    torch.testing.assert_close(
        latency.naive_pdc(heatmaps), torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0
    )


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    height=st.integers(4, 24),
    width=st.integers(4, 24),
    threshold=st.floats(0.05, 0.9),
)
def test_fast_pdc_agrees_with_naive_reference(seed, height, width, threshold):
    heatmaps = latency.synthetic_heatmaps((2, 5, height, width), sigma=1.2, seed=seed)
    fast = pdc(heatmaps, threshold=threshold).double()
    reference = latency.naive_pdc(heatmaps.double(), threshold=threshold)
    assert float((fast - reference).abs().max()) <= 1e-5


def test_summarize_and_ratio_match_numpy():
    seconds = [0.004, 0.001, 0.003, 0.002, 0.010]
    figures = harness.summarize(seconds)
    assert figures["median_ms"] == pytest.approx(3.0)
    assert figures["q1_ms"] == pytest.approx(np.percentile([4, 1, 3, 2, 10], 25))
    assert (figures["min_ms"], figures["max_ms"], figures["repeats"]) == (1.0, 10.0, 5)
    assert harness.ratio({"median_ms": 6.0}, figures) == pytest.approx(2.0)


def test_time_interleaved_runs_each_workload_in_rounds():
    calls: list[str] = []
    ctx = harness.BenchContext(torch.device("cpu"), "smoke")
    timings = harness.time_interleaved(
        ctx, {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1
    )
    assert calls == ["a", "b"] * 4
    assert timings["a"]["repeats"] == timings["b"]["repeats"] == 3


@pytest.mark.slow
def test_peak_memory_helper_reports_positive_growth():
    kwargs = {"steps": 4, "chunk": 2, "size": 64, "batch": 1}
    target = "lightning_fa.commands.bench.training:tbptt_memory_workload"
    figures = harness.measure_peak_memory(target, kwargs)
    assert figures["baseline_mib"] > 0
    assert figures["peak_mib"] >= figures["baseline_mib"]
    assert figures["growth_mib"] > 0
    # Each figure is rounded to 1e-3 MiB on its own, so their difference may differ by one unit.
    assert figures["growth_mib"] == pytest.approx(
        figures["peak_mib"] - figures["baseline_mib"], abs=2e-3
    )


def test_smoke_cli_help_reports_its_wall_time(tmp_path):
    out = tmp_path / "bench.json"
    assert harness.main(["--smoke", "--only", "cli_help", "--out", str(out)]) == 0
    figures = json.loads(out.read_text())["benchmarks"]["cli_help"]
    assert figures["help_seconds"] > 0 and isinstance(figures["meets_goal"], bool)
    assert figures["help"]["repeats"] == figures["python"]["repeats"] == 2


@pytest.mark.ddp
def test_smoke_ddp_reports_both_throughputs_and_the_efficiency(tmp_path):
    out = tmp_path / "bench.json"
    assert harness.main(["--smoke", "--only", "ddp", "--out", str(out), "--threads", "1"]) == 0
    ddp = json.loads(out.read_text())["benchmarks"]["ddp"]
    assert ddp["step"] == "StableAlignmentModule.training_step" and ddp["backend"] == "gloo"
    assert ddp["threads_per_process"] == 1 and ddp["usable_cpus"] >= 1
    for processes in (1, 2):
        run = ddp["runs"][str(processes)]
        assert run["processes"] == processes
        assert run["wall_s"] > 0 and run["samples_per_s"] > 0 and run["frames_per_s"] > 0
        # Each rank trained on its own batch: equal weights at the end mean synced gradients.
        assert run["parameters_in_sync"] is True
        assert ddp[f"samples_per_s_{processes}"] == run["samples_per_s"]
    expected = ddp["samples_per_s_2"] / (2 * ddp["samples_per_s_1"])
    assert ddp["efficiency"] == pytest.approx(expected, abs=1e-4) and ddp["efficiency"] > 0


def test_smoke_dataloader_reports_rates_per_worker_and_workers_needed(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--smoke", "--only", "dataloader", "--out", str(out), "--threads", "1"]
    assert harness.main(argv) == 0
    loader = json.loads(out.read_text())["benchmarks"]["dataloader"]
    loaders = ("image_pseudo_sequences", "synthetic_video_windows", "300vw_video_windows")
    for name in loaders:
        assert loader[name]["samples"] > 0 and loader[name]["samples_per_s"] > 0
    assert loader["300vw_video_windows"]["frame_cache_build_s"] >= 0
    assert set(loader["per_worker"]) == {"image_pseudo_sequences", "300vw_video_windows"}
    for sweep in loader["per_worker"].values():
        assert set(sweep) == {"workers_0", "workers_1", "workers_2"}
        for workers, figures in enumerate(sweep.values()):
            assert figures["workers"] == workers
            assert figures["samples_per_s_per_worker"] > 0
            assert figures["frames_per_s_per_worker"] == pytest.approx(
                figures["samples_per_s_per_worker"] * loader["sequence_length"], rel=1e-3
            )
    needed = loader["workers_needed_for"]
    assert list(needed) == ["h100_target"]  # no fine-tuning rate was measured in this run
    assert needed["h100_target"]["frames_per_s"] == data_bench.H100_TARGET_FRAMES_PER_S
    assert needed["h100_target"]["image_pseudo_sequences"] >= 1
    assert needed["h100_target"]["300vw_video_windows"] >= 1


def test_workers_needed_uses_this_runs_finetune_rates():
    assert data_bench.workers_needed_for(4000.0, 1000.0) == 4
    assert data_bench.workers_needed_for(4001.0, 1000.0) == 5
    assert data_bench.workers_needed_for(20.0, 1000.0) == 1  # a loader is one worker at least
    with pytest.raises(ValueError, match="> 0"):
        data_bench.workers_needed_for(10.0, 0.0)
    ctx = harness.BenchContext(torch.device("cpu"), "smoke")
    ctx.results["finetune_step"] = {"frames_per_s": {"finetune_frozen": 20.5}}
    ctx.results["gpu_path"] = {"finetune_bf16": {"frames_per_s": 1283.0}}
    assert data_bench.consumer_rates(ctx) == {
        "h100_target": data_bench.H100_TARGET_FRAMES_PER_S,
        "finetune_step_this_run": 20.5,
        "gpu_finetune_bf16_this_run": 1283.0,
    }
