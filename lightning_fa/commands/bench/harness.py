"""`lightning-fa bench`: speed and memory figures of the pipeline's parts, written to bench.json.

    lightning-fa bench [--device cpu|cuda] [--out bench.json] [--full] [--only NAME ...]
                       [--threads N] [--smoke]

Every benchmark is a registered function returning named figures. Comparisons run in the same
process, interleaved round by round (so a load spike from another process hits both sides), and
are reported as ratios; single timings carry their median, quartiles and min / max. A benchmark
whose component is not importable yet is recorded as ``{"skipped": reason}``.

Workload sizes: the default keeps a run within a few minutes on 2 CPU cores; ``--full`` uses the
sizes of the project's goals (batch 8 latency, 256x256 fine-tuning, long sequences); ``--smoke``
runs tiny sizes once, only to check that the harness works (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_fa.outputs import claim_outputs, write_text_atomic

Figures = dict[str, Any]
Benchmark = Callable[["BenchContext"], Figures]

BENCHMARKS: dict[str, Benchmark] = {}
# The modules that register the benchmarks, imported by `main` in bench.json's order.
BENCHMARK_MODULES = ("latency", "training", "ddp", "gpu", "data", "tracker")


class Skip(Exception):
    """Raised by a benchmark that cannot run here (e.g. needs CUDA); the message is the reason."""


def register(name: str) -> Callable[[Benchmark], Benchmark]:
    """Decorator: add a benchmark under `name` (its key in bench.json)."""

    def decorate(function: Benchmark) -> Benchmark:
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} is registered twice")
        BENCHMARKS[name] = function
        return function

    return decorate


# --------------------------------------------------------------------------------------------
# Context, timing, statistics
# --------------------------------------------------------------------------------------------


@dataclass
class BenchContext:
    """What a benchmark needs to know about the run: device, size tier, thread count, and the
    figures of the benchmarks already run (so one can build on another's measurement)."""

    device: torch.device
    tier: str = "default"  # "smoke" | "default" | "full"
    threads: int = 2
    results: dict[str, Figures] = field(default_factory=dict)

    def pick(self, smoke: Any, default: Any, full: Any) -> Any:
        """The workload parameter for this run's tier."""
        return {"smoke": smoke, "default": default, "full": full}[self.tier]

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)


def summarize(seconds: list[float]) -> Figures:
    """Median, quartiles, min and max of repeated timings, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    q1, median, q3 = np.percentile(ms, [25, 50, 75])
    return {
        "median_ms": round(float(median), 4),
        "q1_ms": round(float(q1), 4),
        "q3_ms": round(float(q3), 4),
        "min_ms": round(float(ms.min()), 4),
        "max_ms": round(float(ms.max()), 4),
        "repeats": len(seconds),
    }


def time_interleaved(
    ctx: BenchContext, workloads: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, Figures]:
    """Time each workload `repeats` times, round-robin (one run of each per round), after
    `warmup` untimed rounds; returns `summarize` figures per workload."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0; got {repeats}, {warmup}")
    for _ in range(warmup):
        for run in workloads.values():
            run()
    ctx.sync()
    seconds: dict[str, list[float]] = {name: [] for name in workloads}
    for _ in range(repeats):
        for name, run in workloads.items():
            start = time.perf_counter()
            run()
            ctx.sync()
            seconds[name].append(time.perf_counter() - start)
    return {name: summarize(values) for name, values in seconds.items()}


def ratio(numerator: Figures, denominator: Figures) -> float:
    """Ratio of two timings' medians."""
    return round(numerator["median_ms"] / denominator["median_ms"], 4)


def per_second(items: int, timing: Figures) -> float:
    """Throughput (items / s) at the median time."""
    return round(items / (timing["median_ms"] / 1e3), 3)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------
# Machine information
# --------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info(device: torch.device) -> Figures:
    """Where the figures came from: CPU, cores, load, threads, GPU, library versions, date."""
    import lightning

    info: Figures = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "cuda_available": torch.cuda.is_available(),
        "git_commit": _git_commit(),
    }
    if device.type == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name(device)
        info["cuda_version"] = torch.version.cuda
    return info


# --------------------------------------------------------------------------------------------
# Peak memory of a workload, measured in a fresh process
# --------------------------------------------------------------------------------------------


def _rss_kib(field: str) -> int | None:
    """VmRSS / VmHWM of this process from /proc/self/status, in KiB (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Make VmHWM start again from the current RSS (Linux clear_refs '5'); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _measure_in_child(target: str, kwargs: Figures, device: str) -> Figures:
    """Body of the child process: set up `target(**kwargs)`, then run the workload it returns.

    CPU: growth of the peak resident set over the RSS after setup (VmHWM after a peak reset;
    getrusage's ru_maxrss, which cannot be reset, where /proc is not writable). CUDA: growth of
    torch.cuda.max_memory_allocated over the allocation after setup.
    """
    module_name, function_name = target.split(":")
    workload = getattr(importlib.import_module(module_name), function_name)(**kwargs)
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        workload()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"method": "torch.cuda.max_memory_allocated", "baseline_mib": baseline / 2**20,
                "peak_mib": peak / 2**20}  # fmt: skip
    reset = _reset_peak_rss()
    baseline_kib = (
        _rss_kib("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    )
    workload()
    peak_kib = _rss_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    method = "VmHWM after clear_refs" if reset else "getrusage ru_maxrss"
    return {"method": method, "baseline_mib": baseline_kib / 1024, "peak_mib": peak_kib / 1024}


def measure_peak_memory(
    target: str, kwargs: Figures | None = None, device: str = "cpu", threads: int = 2
) -> Figures:
    """Peak memory growth of a workload, in a fresh Python process (so earlier allocations of
    this process cannot hide it).

    target: "module:function"; the function does its setup and returns the zero-argument
    workload to measure. Returns baseline_mib (after setup), peak_mib, growth_mib, method.
    """
    code = (
        "import json, sys, torch\n"
        f"torch.set_num_threads({int(threads)})\n"
        "from lightning_fa.commands.bench.harness import _measure_in_child\n"
        f"result = _measure_in_child({target!r}, json.loads(sys.argv[1]), {device!r})\n"
        "print('BENCH_RESULT ' + json.dumps(result))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs or {})],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": str(Path(__file__).resolve().parents[3]),
        },  # the repository root
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"memory child for {target} failed (exit {proc.returncode}): {proc.stderr[-2000:]}"
        )
    result = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
    result["growth_mib"] = result["peak_mib"] - result["baseline_mib"]
    return {key: round(v, 3) if isinstance(v, float) else v for key, v in result.items()}


# --------------------------------------------------------------------------------------------
# Runner and CLI
# --------------------------------------------------------------------------------------------


def run_benchmark(name: str, ctx: BenchContext) -> Figures:
    """Run one benchmark; missing components and Skip become {"skipped": reason}, other
    failures {"error": ...} (the run goes on)."""
    start = time.perf_counter()
    try:
        figures = BENCHMARKS[name](ctx)
    except Skip as reason:
        figures = {"skipped": str(reason)}
    except ImportError as err:
        figures = {"skipped": f"component missing: {err}"}
    except Exception as err:
        figures = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    figures["seconds"] = round(time.perf_counter() - start, 2)
    return figures


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lightning-fa bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON written here")
    tier = parser.add_mutually_exclusive_group()
    tier.add_argument("--full", action="store_true", help="the goals' workload sizes (slow)")
    tier.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat (tests)")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(BENCHMARKS), metavar="NAME",
        help=f"run only these benchmarks (of: {', '.join(BENCHMARKS)})",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given, but CUDA is not available to this torch")
    return args


def main(argv: list[str] | None = None) -> int:
    """`lightning-fa bench ...`; returns 1 if a benchmark failed (its error is in the JSON)."""
    for name in BENCHMARK_MODULES:
        importlib.import_module(f"{__package__}.{name}")
    args = _parse(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    with claim_outputs([(args.out, "--out")]):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    tier = "full" if args.full else "smoke" if args.smoke else "default"
    ctx = BenchContext(torch.device(args.device), tier, args.threads)
    names = args.only or list(BENCHMARKS)
    report: Figures = {
        "machine": machine_info(ctx.device),
        "settings": {"device": args.device, "tier": tier, "threads": args.threads, "only": names},
        "benchmarks": ctx.results,
    }
    start = time.perf_counter()
    for name in names:
        print(f"bench {name} ...", flush=True)
        figures = run_benchmark(name, ctx)
        report["benchmarks"][name] = figures
        status = figures.get("skipped") and f"skipped: {figures['skipped']}"
        status = status or figures.get("error") or "ok"
        print(f"bench {name}: {status} ({figures['seconds']} s)", flush=True)
    report["total_seconds"] = round(time.perf_counter() - start, 2)
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return int(any("error" in figures for figures in report["benchmarks"].values()))


if __name__ == "__main__":
    sys.exit(main())
