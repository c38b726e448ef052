"""Per-call latency of the parts: `lightning-fa --help`, the heatmap decoders, the backbones, and
the temporal stage's step beside the backbone."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_fa.commands.bench.harness import (
    BenchContext,
    Figures,
    parameter_count,
    per_second,
    ratio,
    register,
    time_interleaved,
)

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

# name -> (registered stage, its arguments beyond num_landmarks).
TEMPORAL_CONFIGS = {
    "default_h16_k3_p16": ("ConvLSTM", {"hidden_channels": 16, "kernel_size": 3, "input_proj": 16}),
    "h32_k3_p16": ("ConvLSTM", {"hidden_channels": 32, "kernel_size": 3, "input_proj": 16}),
    "h16_k5_p16": ("ConvLSTM", {"hidden_channels": 16, "kernel_size": 5, "input_proj": 16}),
    "h16_k3_noproj": ("ConvLSTM", {"hidden_channels": 16, "kernel_size": 3, "input_proj": None}),
    "face_motion": ("FaceMotionStage", {}),
    # The embedded default's stage: the same filter with the still hold's test beside it.
    "face_motion_hold": ("FaceMotionStage", {"hold_threshold": 3.0, "hold_initial_memory": 4.0}),
}


def _streaming_step(temporal: nn.Module, heatmaps: Tensor, state: Any) -> Tensor:
    """What a stream pays per frame after the backbone: one stage step and the PDC decode."""
    from lightning_fa.heatmaps import pdc

    stabilised, _ = temporal(heatmaps, state)
    return pdc(stabilised)


@register("temporal_overhead")
def bench_temporal_overhead(ctx: BenchContext) -> Figures:
    """(stage step + PDC) / HRNet-W18 forward at batch 1 (goal <= 10 % CPU, 15 % GPU)."""
    from lightning_fa.backbones import create_backbone
    from lightning_fa.temporal import TEMPORAL_STAGES

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
    for name, (stage, config) in TEMPORAL_CONFIGS.items():
        temporal = TEMPORAL_STAGES[stage](68, **config).to(ctx.device).eval()
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
                "stage": TEMPORAL_CONFIGS[name][0],
                **TEMPORAL_CONFIGS[name][1],
                "parameters": parameters[name],
                "overhead_ratio": ratio(timings[name], timings["backbone"]),
                "within_goal": ratio(timings[name], timings["backbone"]) <= goal,
            }
            for name in TEMPORAL_CONFIGS
        },
        "goal_overhead_ratio": goal,
    }
