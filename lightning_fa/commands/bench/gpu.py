"""The CUDA path: backbone throughput (fp32, bf16 + channels_last, compiled), bf16 fine-tuning and
many concurrent streams."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from lightning_fa.commands.bench.harness import (
    BenchContext,
    Figures,
    Skip,
    per_second,
    ratio,
    register,
    time_interleaved,
)
from lightning_fa.commands.bench.training import finetune_setup, training_step_workload

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
        ctx, {"finetune_bf16": training_step_workload(setup, torch.bfloat16)}, ctx.pick(1, 5, 15), 1
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
