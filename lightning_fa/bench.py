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
import contextlib
import datetime
import gc
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_fa.outputs import claim_outputs, write_text_atomic

Figures = dict[str, Any]
Benchmark = Callable[["BenchContext"], Figures]

BENCHMARKS: dict[str, Benchmark] = {}


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
    """What a benchmark needs to know about the run: device, size tier, thread count."""

    device: torch.device
    tier: str = "default"  # "smoke" | "default" | "full"
    threads: int = 2

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
        "from lightning_fa.bench import _measure_in_child\n"
        f"result = _measure_in_child({target!r}, json.loads(sys.argv[1]), {device!r})\n"
        "print('BENCH_RESULT ' + json.dumps(result))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs or {})],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
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
# decode: PDC vs argmax vs a straightforward PDC
# --------------------------------------------------------------------------------------------


def naive_pdc(heatmaps: Tensor, threshold: float = 0.2) -> Tensor:
    """Straightforward PDC (SPEC 2): zero values < threshold, then the 2-D weighted sum of pixel
    coordinates over the surviving mass; argmax where nothing survives. (..., L, H, W) ->
    (..., L, 2). The baseline that the fast decoder is checked and timed against."""
    height, width = heatmaps.shape[-2:]
    kept = torch.where(heatmaps >= threshold, heatmaps, torch.zeros_like(heatmaps))
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=heatmaps.dtype, device=heatmaps.device),
        torch.arange(width, dtype=heatmaps.dtype, device=heatmaps.device),
        indexing="ij",
    )
    mass = kept.sum((-2, -1))
    x = (kept * xs).sum((-2, -1)) / mass
    y = (kept * ys).sum((-2, -1)) / mass
    flat_index = heatmaps.flatten(-2).argmax(-1)
    peak = torch.stack((flat_index % width, flat_index // width), -1).to(heatmaps.dtype)
    return torch.where((mass > 0)[..., None], torch.stack((x, y), -1), peak)


def synthetic_heatmaps(
    shape: tuple[int, int, int, int], sigma: float = 1.5, seed: int = 0
) -> Tensor:
    """Backbone-like heatmaps: a Gaussian per landmark at a random sub-pixel spot, plus noise."""
    from lightning_fa.heatmaps import render_gaussian

    batch, landmarks, height, width = shape
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, landmarks, 2, generator=generator)
    centres = centres * torch.tensor([width - 9.0, height - 9.0]) + 4.0
    maps = render_gaussian(centres, height, width, sigma)
    return maps + 0.05 * torch.randn(maps.shape, generator=generator)


@register("cli_help")
def bench_cli_help(ctx: BenchContext) -> Figures:
    """Wall time of `lightning-fa --help` in a fresh interpreter (goal: under a second), beside a
    bare `python -c pass` on the same machine."""

    def run(args: list[str]) -> Callable[[], Any]:
        return lambda: subprocess.run(args, check=True, capture_output=True)

    timings = time_interleaved(
        ctx,
        {
            "help": run([sys.executable, "-m", "lightning_fa", "--help"]),
            "python": run([sys.executable, "-c", "pass"]),
        },
        repeats=ctx.pick(2, 5, 10),
    )
    return {
        **timings,
        "help_seconds": round(timings["help"]["median_ms"] / 1e3, 3),
        "meets_goal": timings["help"]["median_ms"] < 1000.0,
    }


@register("decode")
def bench_decode(ctx: BenchContext) -> Figures:
    """PDC vs argmax (goal <= 1.5x) and vs the straightforward 2-D PDC; agreement in pixels."""
    from lightning_fa.heatmaps import argmax, argmax_quarter, pdc

    shape = ctx.pick((2, 68, 16, 16), (64, 68, 64, 64), (64, 68, 64, 64))
    heatmaps = synthetic_heatmaps(shape).to(ctx.device)
    timings = time_interleaved(
        ctx,
        {
            "pdc": lambda: pdc(heatmaps),
            "argmax": lambda: argmax(heatmaps),
            "argmax_quarter": lambda: argmax_quarter(heatmaps),
            "naive_pdc": lambda: naive_pdc(heatmaps),
        },
        repeats=ctx.pick(1, 15, 50),
        warmup=ctx.pick(0, 2, 5),
    )
    # Accuracy against the exact (float64) straightforward PDC; the float32 straightforward
    # version's own error is reported too (float32 resolves about 4e-6 px near x = 64).
    exact = naive_pdc(heatmaps.double())
    max_error = float((pdc(heatmaps).double() - exact).abs().max())
    naive_error = float((naive_pdc(heatmaps).double() - exact).abs().max())
    return {
        "shape": list(shape),
        "timings": timings,
        "ratio_pdc_vs_argmax": ratio(timings["pdc"], timings["argmax"]),
        "goal_ratio_pdc_vs_argmax": 1.5,
        "ratio_argmax_quarter_vs_argmax": ratio(timings["argmax_quarter"], timings["argmax"]),
        "ratio_naive_pdc_vs_argmax": ratio(timings["naive_pdc"], timings["argmax"]),
        "ratio_naive_pdc_vs_pdc": ratio(timings["naive_pdc"], timings["pdc"]),
        "pdc_max_abs_error_px": max_error,
        "naive_pdc_float32_max_abs_error_px": naive_error,
        "pdc_matches_reference": max_error <= 1e-5,
    }


# --------------------------------------------------------------------------------------------
# backbones: latency and size
# --------------------------------------------------------------------------------------------

BACKBONE_INPUTS = {"hrnet_w18": 256, "hrnet_lite": 128, "hourglass": 256, "cpm": 256}


@register("backbones")
def bench_backbones(ctx: BenchContext) -> Figures:
    """Inference latency per backbone at batch 1 and 8 (inference mode, fp32) and parameters."""
    from lightning_fa.backbones import create_backbone

    figures: Figures = {"threads": torch.get_num_threads()}
    for name, size in BACKBONE_INPUTS.items():
        size = ctx.pick(64, size, size)
        model = create_backbone(name, 68, input_size=(size, size)).to(ctx.device).eval()
        entry: Figures = {"input": [size, size], "parameters": parameter_count(model)}
        for batch, repeats in ((1, ctx.pick(1, 5, 20)), (8, ctx.pick(1, 2, 10))):
            images = torch.randn(batch, 3, size, size, device=ctx.device)

            def forward(model: nn.Module = model, images: Tensor = images) -> None:
                with torch.inference_mode():
                    model(images)

            timing = time_interleaved(ctx, {"forward": forward}, repeats, warmup=1)["forward"]
            entry[f"batch{batch}"] = {**timing, "images_per_s": per_second(batch, timing)}
        figures[name] = entry
        del model
        gc.collect()
    return figures


# --------------------------------------------------------------------------------------------
# temporal_overhead: ConvLSTM step + PDC vs the backbone
# --------------------------------------------------------------------------------------------

TEMPORAL_CONFIGS = {
    "default_h16_k3_p16": {"hidden_channels": 16, "kernel_size": 3, "input_proj": 16},
    "h32_k3_p16": {"hidden_channels": 32, "kernel_size": 3, "input_proj": 16},
    "h16_k5_p16": {"hidden_channels": 16, "kernel_size": 5, "input_proj": 16},
    "h16_k3_noproj": {"hidden_channels": 16, "kernel_size": 3, "input_proj": None},
}


def _streaming_step(temporal: nn.Module, heatmaps: Tensor, state: Any) -> Tensor:
    """What a stream pays per frame after the backbone: one ConvLSTM step and the PDC decode."""
    from lightning_fa.heatmaps import pdc

    stabilised, _ = temporal(heatmaps, state)
    return pdc(stabilised)


@register("temporal_overhead")
def bench_temporal_overhead(ctx: BenchContext) -> Figures:
    """(ConvLSTM step + PDC) / HRNet-W18 forward at batch 1 (goal <= 10 % CPU, 15 % GPU)."""
    from lightning_fa.backbones import create_backbone
    from lightning_fa.temporal.convlstm import ConvLSTM

    size = ctx.pick(64, 256, 256)
    backbone = create_backbone("hrnet_w18", 68, input_size=(size, size)).to(ctx.device).eval()
    images = torch.randn(1, 3, size, size, device=ctx.device)
    with torch.inference_mode():
        heatmaps = backbone(images)
    workloads: dict[str, Callable[[], Any]] = {}

    def backbone_forward() -> None:
        with torch.inference_mode():
            backbone(images)

    workloads["backbone"] = backbone_forward
    parameters = {}
    for name, config in TEMPORAL_CONFIGS.items():
        temporal = ConvLSTM(68, **config).to(ctx.device).eval()
        with torch.inference_mode():
            _, state = temporal(heatmaps, None)  # a running stream, not a fresh one
        parameters[name] = parameter_count(temporal)

        def step(temporal: nn.Module = temporal, state: Any = state) -> None:
            with torch.inference_mode():
                _streaming_step(temporal, heatmaps, state)

        workloads[name] = step
    timings = time_interleaved(ctx, workloads, repeats=ctx.pick(1, 7, 30), warmup=1)
    goal = 0.15 if ctx.is_cuda else 0.10
    return {
        "input": [size, size],
        "heatmaps": list(heatmaps.shape),
        "timings": timings,
        "configs": {
            name: {
                **TEMPORAL_CONFIGS[name],
                "parameters": parameters[name],
                "overhead_ratio": ratio(timings[name], timings["backbone"]),
                "within_goal": ratio(timings[name], timings["backbone"]) <= goal,
            }
            for name in TEMPORAL_CONFIGS
        },
        "goal_overhead_ratio": goal,
    }


# --------------------------------------------------------------------------------------------
# Fine-tuning: TBPTT steps (shared by finetune_step, tbptt_memory, gpu_path)
# --------------------------------------------------------------------------------------------


def random_sequences(
    batch: int, steps: int, size: int, num_landmarks: int = 68, seed: int = 0, device: Any = "cpu"
) -> tuple[Tensor, Tensor]:
    """uint8 frames (B, T, 3, S, S) and slowly drifting crop-pixel landmarks (B, T, L, 2)."""
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randint(
        0, 256, (batch, steps, 3, size, size), dtype=torch.uint8, generator=generator
    )
    start = torch.rand(batch, 1, num_landmarks, 2, generator=generator) * (0.6 * size) + 0.2 * size
    drift = torch.randn(batch, steps, 1, 2, generator=generator).cumsum(1) * 0.5
    return frames.to(device), (start + drift).to(device)


def tbptt_step(
    backbone: nn.Module,
    temporal: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    frames: Tensor,
    landmarks: Tensor,
    chunk: int,
    train_backbone: bool = False,
    sigma: float = 1.0,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """One training step on (B, T) sequences, split into chunks of `chunk` frames with their own
    loss, backward and optimizer step; the state is detached between chunks (truncated BPTT).

    train_backbone=False is the paper's fine-tuning (backbone frozen, run in inference mode);
    True trains the whole network on the same batch and loss, for comparison.
    """
    from lightning_fa.heatmaps import crop_to_heatmap, render_gaussian
    from lightning_fa.temporal.convlstm import detach_state

    device_type = frames.device.type
    state, prev, loss = None, None, torch.zeros(())
    for frame_chunk, landmark_chunk in zip(
        torch.split(frames, chunk, dim=1), torch.split(landmarks, chunk, dim=1)
    ):
        lead = frame_chunk.shape[:2]
        images = backbone.preprocess(frame_chunk.flatten(0, 1))
        with torch.autocast(
            device_type, autocast_dtype or torch.bfloat16, autocast_dtype is not None
        ):
            if train_backbone:
                raw = backbone(images).float()
            else:
                with torch.inference_mode():
                    raw = backbone(images).float()
                raw = raw.clone()  # an ordinary tensor that autograd may save
            raw = raw.unflatten(0, lead)
            coords = crop_to_heatmap(landmark_chunk, float(backbone.stride))
            target = render_gaussian(coords, *raw.shape[-2:], sigma)
            stabilised, state = temporal.forward_sequence(raw, state)
            prev_pred, prev_target = prev if prev is not None else (None, None)
            loss, last = loss_fn(
                stabilised.float(),
                target,
                coords,
                prev_pred_coords=prev_pred,
                prev_target_coords=prev_target,
                return_last_coords=True,
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state = detach_state(state)
        prev = (last, coords[:, -1])
    return loss.detach()


@dataclass
class FinetuneSetup:
    backbone: nn.Module
    temporal: nn.Module
    loss: nn.Module
    frames: Tensor
    landmarks: Tensor
    chunk: int


def finetune_setup(
    backbone_name: str, size: int, batch: int, steps: int, chunk: int, device: Any = "cpu"
) -> FinetuneSetup:
    from lightning_fa.backbones import create_backbone
    from lightning_fa.losses import JitterLoss
    from lightning_fa.temporal.convlstm import ConvLSTM

    torch.manual_seed(0)
    backbone = create_backbone(backbone_name, 68, input_size=(size, size)).to(device)
    temporal = ConvLSTM(68).to(device)
    frames, landmarks = random_sequences(batch, steps, size, device=device)
    return FinetuneSetup(backbone, temporal, JitterLoss(), frames, landmarks, chunk)


def frozen_workload(setup: FinetuneSetup, autocast_dtype: torch.dtype | None = None) -> Callable:
    """Fine-tuning as in the paper: frozen backbone in eval mode, Adam on the ConvLSTM only."""
    setup.backbone.eval().requires_grad_(False)
    optimizer = torch.optim.Adam(setup.temporal.parameters(), lr=1e-4)
    return lambda: tbptt_step(
        setup.backbone, setup.temporal, setup.loss, optimizer, setup.frames, setup.landmarks,
        setup.chunk, autocast_dtype=autocast_dtype,
    )  # fmt: skip


def full_network_workload(setup: FinetuneSetup) -> Callable:
    """The alternative: the whole network trained (backbone in train mode), same batch and loss."""
    backbone = setup.backbone
    optimizer = torch.optim.Adam([*backbone.parameters(), *setup.temporal.parameters()], lr=1e-4)

    def run() -> Tensor:
        backbone.train().requires_grad_(True)
        try:
            return tbptt_step(
                backbone, setup.temporal, setup.loss, optimizer, setup.frames, setup.landmarks,
                setup.chunk, train_backbone=True,
            )  # fmt: skip
        finally:
            backbone.eval().requires_grad_(False)

    return run


def module_workload(setup: FinetuneSetup) -> Callable:
    """The project's own `StableAlignmentModule.training_step` on the same batch, run without a
    Trainer: its optimizer, backward and logging hooks are bound to plain equivalents."""
    from lightning_fa.systems.finetune import StableAlignmentModule

    module = StableAlignmentModule(
        setup.backbone, temporal=setup.temporal, loss=setup.loss, tbptt_chunk=setup.chunk
    )
    module.train()
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    module.optimizers = lambda: optimizer
    module.manual_backward = lambda loss: loss.backward()
    module.log = lambda *args, **kwargs: None
    batch = {"frames": setup.frames, "landmarks": setup.landmarks}
    return lambda: module.training_step(batch, 0)


@register("finetune_step")
def bench_finetune_step(ctx: BenchContext) -> Figures:
    """Frames/s of a TBPTT fine-tuning step (frozen backbone) vs training the full network."""
    batch, steps, chunk = ctx.pick((1, 2, 2), (1, 8, 4), (4, 8, 4))
    size = ctx.pick(64, 128, 256)
    setup = finetune_setup("hrnet_w18", size, batch, steps, chunk, ctx.device)
    workloads = {
        "finetune_frozen": frozen_workload(setup),
        "full_network": full_network_workload(setup),
    }
    figures: Figures = {}
    try:
        workloads["stable_alignment_module"] = module_workload(setup)
    except ImportError as err:
        figures["stable_alignment_module"] = {"skipped": f"StableAlignmentModule: {err}"}
    timings = time_interleaved(ctx, workloads, repeats=ctx.pick(1, 3, 10), warmup=1)
    frames_per_step = batch * steps
    figures.update(
        {
            "backbone": "hrnet_w18",
            "input": [size, size],
            "batch": batch,
            "sequence_length": steps,
            "tbptt_chunk": chunk,
            "timings": timings,
            "frames_per_s": {name: per_second(frames_per_step, t) for name, t in timings.items()},
            "speedup_finetune_vs_full": ratio(timings["full_network"], timings["finetune_frozen"]),
        }
    )
    if "stable_alignment_module" in timings:
        figures["ratio_module_vs_local_finetune"] = ratio(
            timings["stable_alignment_module"], timings["finetune_frozen"]
        )
    return figures


def tbptt_memory_workload(
    steps: int, chunk: int, size: int, batch: int, use_module: bool, device: str = "cpu"
) -> Callable[[], Any]:
    """Setup for `measure_peak_memory`: one fine-tuning step on a (batch, steps) sequence.

    The frames live in memory before the measurement starts, so only what training keeps alive
    (activations, graph, optimizer state) counts."""
    setup = finetune_setup("hrnet_w18", size, batch, steps, chunk, device)
    return module_workload(setup) if use_module else frozen_workload(setup)


@register("tbptt_memory")
def bench_tbptt_memory(ctx: BenchContext) -> Figures:
    """Peak memory of a fine-tuning step at T=64 vs T=8, chunk k=4 (goal ratio <= 1.25)."""
    size = ctx.pick(64, 128, 256)
    batch = ctx.pick(1, 1, 2)
    long_steps = ctx.pick(8, 64, 64)
    try:
        importlib.import_module("lightning_fa.systems.finetune")
        use_module, source = True, "StableAlignmentModule.training_step"
    except ImportError:
        use_module, source = False, "lightning_fa.bench.tbptt_step"
    results = {}
    for steps in (8, long_steps):
        kwargs = {"steps": steps, "chunk": 4, "size": size, "batch": batch,
                  "use_module": use_module, "device": ctx.device.type}  # fmt: skip
        results[f"T{steps}"] = measure_peak_memory(
            "lightning_fa.bench:tbptt_memory_workload", kwargs, ctx.device.type, ctx.threads
        )
    short, long = results["T8"], results[f"T{long_steps}"]
    memory_ratio = round(long["growth_mib"] / max(short["growth_mib"], 1e-9), 4)
    return {
        "step": source,
        "input": [size, size],
        "batch": batch,
        "tbptt_chunk": 4,
        "settings": results,
        f"ratio_T{long_steps}_vs_T8": memory_ratio,
        "goal_ratio": 1.25,
        "within_goal": memory_ratio <= 1.25,
    }


# --------------------------------------------------------------------------------------------
# dataloader
# --------------------------------------------------------------------------------------------


def loader_throughput(dataset: Any, batch_size: int, workers: int, batches: int) -> Figures:
    """Samples/s of a DataLoader after its first batch (worker start-up is reported apart)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter()
    samples = 0
    for _, batch in zip(range(batches), iterator):
        samples += len(next(iter(batch.values())))
    end = time.perf_counter()
    del iterator
    return {
        "samples": samples,
        "batch_size": batch_size,
        "workers": workers,
        "first_batch_s": round(first - start, 3),
        "samples_per_s": round(samples / max(end - first, 1e-9), 3),
    }


def write_image_set(root: Path, count: int, size: int) -> list[Any]:
    """`count` JPEG faces with 68 points (synthetic renderer if present, else noise) as records."""
    import cv2

    from data_modules.formats import LandmarkRecord

    try:
        from data_modules.synthetic import SyntheticFaceImages

        faces = SyntheticFaceImages(count, image_size=size)
        samples = [faces[i] for i in range(count)]
        items = [(s["image"].permute(1, 2, 0).numpy(), s["landmarks"].numpy()) for s in samples]
    except ImportError:
        rng = np.random.default_rng(0)
        items = [
            (rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
             rng.uniform(0.3 * size, 0.7 * size, (68, 2)).astype(np.float32))
            for _ in range(count)
        ]  # fmt: skip
    records = []
    for i, (image, landmarks) in enumerate(items):
        path = root / f"face_{i:03d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        records.append(LandmarkRecord(path, landmarks, np.ones(68, dtype=bool)))
    return records


def write_300vw_video(root: Path, video_id: str, num_frames: int, size: int) -> Path:
    """A tiny 300VW-format video: `<id>/vid.avi` (MJPG) and `<id>/annot/000001.pts` onwards."""
    import cv2

    from data_modules.formats import write_pts

    folder = root / video_id
    (folder / "annot").mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(
        str(folder / "vid.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (size, size)
    )
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPG video to {folder / 'vid.avi'}")
    rng = np.random.default_rng(int(video_id))
    base = rng.uniform(0.3 * size, 0.7 * size, (68, 2))
    for t in range(num_frames):
        frame = np.full((size, size, 3), 90, dtype=np.uint8)
        points = base + np.array([2.0 * np.sin(t / 5), 2.0 * np.cos(t / 7)])
        for x, y in points:
            cv2.circle(frame, (round(x), round(y)), 2, (230, 200, 180), -1)
        writer.write(frame)
        write_pts(folder / "annot" / f"{t + 1:06d}.pts", points)
    writer.release()
    return folder


def video_windows_dataset(root: Path, video_ids: list[str], seq_len: int, image_size: int) -> Any:
    """Training windows over the 300VW folders under `root`, frames decoded once into a cache
    inside `root` (the setting the data helper recommends for training)."""
    from data_modules.landmarks import get_spec
    from data_modules.video import FrameStore, VideoWindowDataset, read_300vw_video

    records = [read_300vw_video(root / video_id) for video_id in video_ids]
    store = FrameStore(cache_dir=root / "frame_cache")
    for record in records:
        store.ensure_cached(record.video_path)
    return VideoWindowDataset(
        records, get_spec("300vw"), train=True, image_size=image_size, seq_len=seq_len,
        windows_per_video=1000, store=store,
    )  # fmt: skip


@register("dataloader")
def bench_dataloader(ctx: BenchContext) -> Figures:
    """Samples/s over 2 workers: image pseudo-sequences, synthetic videos, 300VW video windows."""
    from data_modules.image import LandmarkImageDataset
    from data_modules.landmarks import get_spec

    workers = ctx.pick(0, 2, 2)
    seq_len = 6
    batches = ctx.pick(1, 6, 30)
    batch_size = ctx.pick(2, 4, 8)
    figures: Figures = {"sequence_length": seq_len}
    with tempfile.TemporaryDirectory(prefix="lfa_bench_") as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        records = write_image_set(root / "images", ctx.pick(4, 16, 32), ctx.pick(128, 320, 320))
        pseudo = LandmarkImageDataset(
            records * 64, get_spec("300w"), mode="sequence", image_size=256, seq_len=seq_len
        )
        figures["image_pseudo_sequences"] = loader_throughput(pseudo, batch_size, workers, batches)
        try:
            from data_modules.synthetic import SyntheticFaceVideos, SyntheticVideoWindows

            videos = SyntheticFaceVideos(4, 64, image_size=ctx.pick(64, 256, 256))
            windows = SyntheticVideoWindows(videos, 1000, seq_len)
            figures["synthetic_video_windows"] = loader_throughput(
                windows, batch_size, workers, batches
            )
        except ImportError as err:
            figures["synthetic_video_windows"] = {"skipped": f"data_modules.synthetic: {err}"}
        video_ids = ["001", "002"]
        for video_id in video_ids:
            write_300vw_video(
                root / "300vw", video_id, ctx.pick(8, 64, 128), ctx.pick(128, 480, 640)
            )
        try:
            start = time.perf_counter()
            dataset = video_windows_dataset(root / "300vw", video_ids, seq_len, 256)
            cache_s = round(time.perf_counter() - start, 3)
            figures["300vw_video_windows"] = {
                **loader_throughput(dataset, batch_size, workers, batches),
                "frame_cache_build_s": cache_s,
            }
        except ImportError as err:
            figures["300vw_video_windows"] = {"skipped": f"data_modules.video: {err}"}
    return figures


# --------------------------------------------------------------------------------------------
# gpu_path
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _maybe_autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    with torch.autocast(device.type, dtype or torch.bfloat16, enabled=dtype is not None):
        yield


@register("gpu_path")
def bench_gpu_path(ctx: BenchContext) -> Figures:
    """HRNet-W18 batch 256 img/s (fp32 eager, bf16 + channels_last, compiled bf16), fine-tuning
    frames/s (bf16, frozen backbone in inference mode), and streaming 256 concurrent streams."""
    if not ctx.is_cuda:
        raise Skip("needs --device cuda")
    from lightning_fa.backbones import create_backbone
    from lightning_fa.temporal.convlstm import ConvLSTM

    batch = ctx.pick(8, 256, 256)
    repeats = ctx.pick(1, 10, 30)
    device = ctx.device
    backbone = create_backbone("hrnet_w18", 68).to(device).eval()
    images = torch.randint(0, 256, (batch, 3, 256, 256), dtype=torch.uint8, device=device)

    def infer(model: nn.Module, dtype: torch.dtype | None, channels_last: bool) -> Callable:
        def run() -> None:
            with torch.inference_mode(), _maybe_autocast(device, dtype):
                x = model.preprocess(images)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                model(x)

        return run

    backbone_cl = create_backbone("hrnet_w18", 68).to(device).eval()
    backbone_cl = backbone_cl.to(memory_format=torch.channels_last)
    workloads = {
        "eager_fp32": infer(backbone, None, False),
        "eager_bf16_channels_last": infer(backbone_cl, torch.bfloat16, True),
    }
    figures: Figures = {"batch": batch, "input": [256, 256]}
    compiled = torch.compile(backbone_cl)  # attribute access (preprocess) reaches the module
    start = time.perf_counter()
    infer(compiled, torch.bfloat16, True)()
    ctx.sync()
    figures["compile_s"] = round(time.perf_counter() - start, 2)
    workloads["compiled_bf16_channels_last"] = infer(compiled, torch.bfloat16, True)
    timings = time_interleaved(ctx, workloads, repeats, warmup=2)
    figures["inference"] = {
        name: {**t, "images_per_s": per_second(batch, t)} for name, t in timings.items()
    }
    figures["speedup_bf16_vs_fp32"] = ratio(
        timings["eager_fp32"], timings["eager_bf16_channels_last"]
    )
    figures["speedup_compiled_vs_fp32"] = ratio(
        timings["eager_fp32"], timings["compiled_bf16_channels_last"]
    )

    # Fine-tuning: bf16 autocast, frozen backbone under inference mode, TBPTT chunks of 4.
    ft_batch, steps = ctx.pick((2, 4), (32, 8), (64, 16))
    setup = finetune_setup("hrnet_w18", 256, ft_batch, steps, 4, device)
    ft = time_interleaved(
        ctx, {"finetune_bf16": frozen_workload(setup, torch.bfloat16)}, ctx.pick(1, 5, 15), 1
    )["finetune_bf16"]
    figures["finetune_bf16"] = {**ft, "batch": ft_batch, "sequence_length": steps,
                                "frames_per_s": per_second(ft_batch * steps, ft)}  # fmt: skip

    # Streaming: `batch` concurrent streams, one frame each per step, state carried.
    temporal = ConvLSTM(68).to(device).eval()
    state_box: list[Any] = [None]

    def stream_step() -> None:
        with torch.inference_mode(), _maybe_autocast(device, torch.bfloat16):
            x = backbone_cl.preprocess(images).contiguous(memory_format=torch.channels_last)
            _streaming_step_with_state(temporal, backbone_cl(x).float(), state_box)

    stream = time_interleaved(ctx, {"stream": stream_step}, repeats, warmup=2)["stream"]
    figures["streaming_bf16"] = {**stream, "streams": batch,
                                 "frames_per_s": per_second(batch, stream)}  # fmt: skip
    figures["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return figures


def _streaming_step_with_state(temporal: nn.Module, heatmaps: Tensor, state_box: list) -> Tensor:
    """ConvLSTM step that carries its state in `state_box[0]`, then the PDC decode."""
    from lightning_fa.heatmaps import pdc

    stabilised, state_box[0] = temporal(heatmaps, state_box[0])
    return pdc(stabilised.float())


# --------------------------------------------------------------------------------------------
# tracker
# --------------------------------------------------------------------------------------------


class FixedBoxDetector:
    """A stand-in face detector that always reports one box: keeps the detector's own cost
    (and its failures on synthetic faces) out of the tracker's figures."""

    def __init__(self, box: np.ndarray, calibration: Any) -> None:
        self.box = np.asarray(box, dtype=np.float64).reshape(1, 5)
        self.calibration = calibration

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.box


@register("tracker")
def bench_tracker(ctx: BenchContext) -> Figures:
    """Frames/s of `StreamingTracker.step` per engine (one face, fixed-box detector) and its
    ratio to the bare backbone forward on one crop, interleaved frame by frame."""
    try:
        tracking = importlib.import_module("lightning_fa.tracking")
    except ImportError as err:
        raise Skip(f"tracker not available ({err})") from err
    from lightning_fa.backbones import create_backbone

    # The figure: HRNet-W18 at 256x256 on 480p frames (smoke: the small one).
    backbone_name = ctx.pick("hrnet_lite", "hrnet_w18", "hrnet_w18")
    video_size = ctx.pick(128, 480, 480)
    frames, landmarks = random_face_video(ctx.pick(4, 32, 64), video_size)
    x1, y1 = landmarks[0].min(0)
    x2, y2 = landmarks[0].max(0)
    detector = FixedBoxDetector([x1, y1, x2, y2, 1.0], tracking.BoxCalibration(0.0, 1.0))
    workloads: dict[str, Callable[[], Any]] = {}
    figures: Figures = {"backbone": backbone_name, "frame_size": [video_size, video_size],
                        "detector": "fixed box (detection cost excluded)", "engines": {}}  # fmt: skip
    trackers = {}
    for engine in ("torch", "onnx"):
        if engine == "onnx" and ctx.is_cuda:
            figures["engines"][engine] = {"skipped": "onnx engine runs on CPU only"}
            continue
        start = time.perf_counter()
        try:
            step = tracking.load_step(None, backbone_name, engine, 68, ctx.device.type)
        except ImportError as err:
            figures["engines"][engine] = {"skipped": f"component missing: {err}"}
            continue
        # Untrained weights give low confidences: keep the track alive regardless.
        tracker = tracking.StreamingTracker(
            step, detector, min_confidence=0.0, device=ctx.device.type
        )
        trackers[engine] = tracker
        figures["engines"][engine] = {"load_s": round(time.perf_counter() - start, 2)}
        workloads[f"tracker_{engine}"] = _tracker_workload(ctx, tracker, frames)
    # The reference: the torch tracker's own backbone on the crop the tracker cuts from the
    # first frame (an untrained network's CPU speed depends on its weights and input).
    if "torch" in trackers:
        reference = trackers["torch"]
        backbone = reference.step_fn.module.backbone
        centre, side = reference._detector_crops(detector(frames[0]))[0]
        crop = torch.from_numpy(reference._crop(frames[0], centre, side)[0].copy())[None]
    else:
        backbone = create_backbone(backbone_name, 68).eval()
        crop = torch.randint(0, 256, (1, 3, *backbone.input_size), dtype=torch.uint8)
    backbone, crop = backbone.to(ctx.device), crop.to(ctx.device)

    def bare_backbone() -> None:
        with torch.inference_mode():
            backbone(backbone.preprocess(crop))

    workloads["bare_backbone"] = bare_backbone
    timings = time_interleaved(ctx, workloads, repeats=ctx.pick(2, 30, 100), warmup=2)
    figures["bare_backbone"] = {**timings["bare_backbone"],
                                "frames_per_s": per_second(1, timings["bare_backbone"])}  # fmt: skip
    for engine, tracker in trackers.items():
        timing = timings[f"tracker_{engine}"]
        figures["engines"][engine].update(
            {
                **timing,
                "frames_per_s": per_second(1, timing),
                "ratio_tracker_vs_bare_backbone": ratio(timing, timings["bare_backbone"]),
                "tracks_at_end": len(tracker.tracks),
            }
        )
    if "torch" in trackers:
        figures["engines"]["torch"]["overhead_vs_backbone_in_step"] = _in_step_overhead(
            workloads["tracker_torch"]
        )
    return figures


def _tracker_workload(ctx: BenchContext, tracker: Any, frames: list[np.ndarray]) -> Callable:
    """`tracker.step` on the frames in turn. With the torch engine it also records, per call,
    the whole step's seconds and those spent inside the backbone's forward (hooks), so that
    the overhead is measured on the very frames and weights of the step itself."""
    counter = iter(range(10**9))
    calls: list[tuple[float, float]] = []
    module = getattr(tracker.step_fn, "module", None)
    inside: list[float] = []
    if module is not None:
        starts: list[float] = []

        def before(*_: Any) -> None:
            ctx.sync()
            starts.append(time.perf_counter())

        def after(*_: Any) -> None:
            ctx.sync()
            inside.append(time.perf_counter() - starts.pop())

        module.backbone.register_forward_pre_hook(before)
        module.backbone.register_forward_hook(after)

    def run() -> None:
        inside.clear()  # drops what the hooks saw outside a step (the bare reference forward)
        start = time.perf_counter()
        tracker.step(frames[next(counter) % len(frames)])
        ctx.sync()
        calls.append((time.perf_counter() - start, sum(inside)))

    run.calls = calls  # type: ignore[attr-defined]
    return run


def _in_step_overhead(workload: Callable) -> Figures:
    """Median over steps of (step - backbone forward inside it) / backbone forward."""
    calls = [(total, inside) for total, inside in workload.calls if inside > 0]
    overhead = [(total - inside) / inside for total, inside in calls]
    return {
        "median_ratio": round(float(np.median(overhead)), 4),
        "median_overhead_ms": round(1000 * float(np.median([t - i for t, i in calls])), 3),
        "steps": len(calls),
    }


LONG_RUN_BASELINE_FRAME = 500
# An HRNet a few ms per frame on CPU, so 3,000 frames fit in the bench's time and the work a
# long run could slow down (decode, crops, filters, outputs) is a large share of each frame.
LONG_RUN_HRNET = {"stem_channels": 8, "layer1_planes": 4, "layer1_blocks": 1,
                  "widths": (4, 8, 12, 16), "stage_modules": (1, 1, 1), "blocks_per_branch": 1}  # fmt: skip
LONG_RUN_INPUT = 64


@register("tracker_long")
def bench_tracker_long(ctx: BenchContext) -> Figures:
    """`track` over a long synthetic video as the command runs it (MJPG decode, tracker, CSV and
    JSON outputs; a tiny HRNet at 64x64 under the default ConvLSTM, fixed-box detector): resident memory growth from frame 500 to
    the end and frames/s in the first and last tenth (goals: growth <= 5 %, speed within 10 %).
    The smoke tier's video is shorter than 500 frames: its baseline is a sixth of the way in."""
    try:
        tracking = importlib.import_module("lightning_fa.tracking")
    except ImportError as err:
        raise Skip(f"tracker not available ({err})") from err
    import cv2

    from lightning_fa.backbones import HRNet, HRNetConfig
    from lightning_fa.export import StreamingStep
    from lightning_fa.systems.finetune import StableAlignmentModule

    num_frames, size = ctx.pick(60, 3000, 6000), 128
    clip, landmarks = random_face_video(50, size)
    x1, y1 = landmarks[0].min(0)
    x2, y2 = landmarks[0].max(0)
    detector = FixedBoxDetector([x1, y1, x2, y2, 1.0], tracking.BoxCalibration(0.0, 1.0))
    backbone = HRNet(68, HRNetConfig(**LONG_RUN_HRNET), input_size=(LONG_RUN_INPUT,) * 2)
    step = StreamingStep(StableAlignmentModule(backbone=backbone)).eval().to(ctx.device)
    tracker = tracking.StreamingTracker(step, detector, min_confidence=0.0, device=ctx.device.type)
    for frame in clip[:5]:  # one-time initialisation stays out of the first tenth
        tracker.step(frame)
    tracker.reset()
    # Entry time and resident set of every step; successive entries bound one whole frame
    # (decode, step, outputs).
    stamps: list[float] = []
    rss_kib: list[int | None] = []
    bare_step = tracker.step

    def recorded_step(frame: np.ndarray, timestamp: float | None = None) -> Any:
        stamps.append(time.perf_counter())
        rss_kib.append(_rss_kib("VmRSS"))
        return bare_step(frame, timestamp)

    tracker.step = recorded_step
    with tempfile.TemporaryDirectory(prefix="bench_long_") as folder:
        video = Path(folder) / "long.avi"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (size, size))
        cycle = clip + clip[-2:0:-1]  # back and forth: the face moves without jumps
        for k in range(num_frames):
            writer.write(np.ascontiguousarray(cycle[k % len(cycle)][..., ::-1]))
        writer.release()
        capture, _ = tracking.open_capture(str(video))
        csv_path, json_path = Path(folder) / "long.csv", Path(folder) / "long.json"
        outputs = tracking.TrackOutputs(68, csv_path, json_path, None, 25.0, (size, size))
        summary = tracking.track_video(
            tracker, tracking.FrameReader(capture), outputs, progress=False
        )
        stamps.append(
            time.perf_counter()
        )  # the end of the last frame (before the JSON is put together)
        rss_kib.append(_rss_kib("VmRSS"))
        capture.release()
        outputs.close(summary)
        output_mib = {p.name: round(p.stat().st_size / 2**20, 3) for p in (csv_path, json_path)}
    frames = len(stamps) - 1
    tenth = max(frames // 10, 1)
    by_tenth = [
        tenth / (stamps[k + tenth] - stamps[k]) for k in range(0, frames - tenth + 1, tenth)
    ]
    first_fps, last_fps = by_tenth[0], tenth / (stamps[-1] - stamps[-1 - tenth])
    # Medians of single frames: a second-long stall of a shared machine moves a tenth's
    # frames/s but not its median frame.
    frame_ms = 1e3 * np.diff(stamps)
    first_ms, last_ms = np.median(frame_ms[:tenth]), np.median(frame_ms[-tenth:])
    baseline = min(LONG_RUN_BASELINE_FRAME, frames // 6)
    figures: Figures = {
        "backbone": f"tiny HRNet {LONG_RUN_INPUT}x{LONG_RUN_INPUT} ({parameter_count(backbone)} parameters)",
        "frame_size": [size, size],
        "frames": frames,
        "outputs_mib": output_mib,
        "fps_first_tenth": round(first_fps, 2),
        "fps_last_tenth": round(last_fps, 2),
        "speed_change_pct": round(100 * (last_fps / first_fps - 1), 2),
        "fps_by_tenth": [round(fps, 1) for fps in by_tenth],
        "median_frame_ms_first_tenth": round(float(first_ms), 3),
        "median_frame_ms_last_tenth": round(float(last_ms), 3),
        "median_frame_change_pct": round(100 * (last_ms / first_ms - 1), 2),
        "rss_baseline_frame": baseline,
    }
    if rss_kib[baseline] is not None:
        start_kib, end_kib = rss_kib[baseline], rss_kib[-1]
        figures.update(
            {
                "rss_mib_at_baseline": round(start_kib / 1024, 2),
                "rss_mib_at_end": round(end_kib / 1024, 2),
                "rss_growth_pct": round(100 * (end_kib / start_kib - 1), 2),
            }
        )
    return figures


def random_face_video(num_frames: int, size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames (H, W, 3) RGB uint8 and (T, 68, 2) landmarks of a synthetic talking face."""
    from data_modules.synthetic import SyntheticFaceVideos

    clip = SyntheticFaceVideos(1, num_frames, image_size=size).clip(0)
    frames = [np.ascontiguousarray(f.permute(1, 2, 0).numpy()) for f in clip["frames"]]
    return frames, clip["landmarks"].numpy()


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
        "benchmarks": {},
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
