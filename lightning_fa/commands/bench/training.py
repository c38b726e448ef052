"""Fine-tuning cost: frames/s of `StableAlignmentModule.training_step` (TBPTT, frozen backbone)
against training the whole network, and its peak memory at a long vs a short sequence."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_fa.commands.bench.harness import (
    BenchContext,
    Figures,
    measure_peak_memory,
    per_second,
    ratio,
    register,
    time_interleaved,
)


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


@dataclass
class FinetuneSetup:
    backbone: nn.Module
    temporal: nn.Module
    loss: nn.Module
    frames: Tensor
    landmarks: Tensor
    chunk: int


def finetune_setup(
    backbone_name: str,
    size: int,
    batch: int,
    steps: int,
    chunk: int,
    device: Any = "cpu",
    data_seed: int = 0,
) -> FinetuneSetup:
    """The backbone and default stage (weights from seed 0 whatever `data_seed`, so replicas of
    a distributed run start equal) and a random batch drawn from `data_seed`."""
    from lightning_fa.backbones import create_backbone
    from lightning_fa.losses import JitterLoss
    from lightning_fa.temporal.convlstm import ConvLSTM

    torch.manual_seed(0)
    backbone = create_backbone(backbone_name, 68, input_size=(size, size)).to(device)
    temporal = ConvLSTM(68).to(device)
    frames, landmarks = random_sequences(batch, steps, size, seed=data_seed, device=device)
    return FinetuneSetup(backbone, temporal, JitterLoss(), frames, landmarks, chunk)


def training_step_workload(
    setup: FinetuneSetup,
    autocast_dtype: torch.dtype | None = None,
    train_backbone: bool = False,
    backward: Callable[[Tensor], None] = Tensor.backward,
) -> Callable[[], Tensor]:
    """The project's own `StableAlignmentModule.training_step` on the setup's batch, run without
    a Trainer: its optimizer, backward and logging hooks are bound to plain equivalents.

    train_backbone=False is the paper's fine-tuning (backbone frozen, run in inference mode,
    Adam on the temporal stage); True trains the whole network on the same batch and loss, for
    comparison: the backbone runs in train mode with gradients and joins the optimizer.
    backward stands in for Lightning's `manual_backward` (the DDP benchmark's also averages the
    gradients across processes).
    """
    from lightning_fa.systems.finetune import StableAlignmentModule

    module = StableAlignmentModule(
        setup.backbone, temporal=setup.temporal, loss=setup.loss, tbptt_chunk=setup.chunk
    )
    module.train()
    if train_backbone:
        optimizer = torch.optim.Adam(
            [*setup.backbone.parameters(), *setup.temporal.parameters()], lr=module.hparams.lr
        )
        module.backbone_heatmaps = module.step.backbone_heatmaps  # builds the backbone's graph
    else:
        optimizer = module.configure_optimizers()
        optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    module.optimizers = lambda: optimizer
    module.manual_backward = backward
    module.log = lambda *args, **kwargs: None
    batch = {"frames": setup.frames, "landmarks": setup.landmarks}
    device_type = setup.frames.device.type

    def run() -> Tensor:
        # The frozen and the full-network workloads share the backbone: each sets its mode.
        setup.backbone.train(train_backbone).requires_grad_(train_backbone)
        with torch.autocast(
            device_type, autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
        ):
            return module.training_step(batch, 0)

    return run


@register("finetune_step")
def bench_finetune_step(ctx: BenchContext) -> Figures:
    """Frames/s of a TBPTT fine-tuning step (frozen backbone) vs training the full network."""
    batch, steps, chunk = ctx.pick((1, 2, 2), (1, 8, 4), (4, 8, 4))
    size = ctx.pick(64, 128, 256)
    setup = finetune_setup("hrnet_w18", size, batch, steps, chunk, ctx.device)
    workloads = {
        "finetune_frozen": training_step_workload(setup),
        "full_network": training_step_workload(setup, train_backbone=True),
    }
    timings = time_interleaved(ctx, workloads, repeats=ctx.pick(1, 3, 10), warmup=1)
    frames_per_step = batch * steps
    return {
        "step": "StableAlignmentModule.training_step",
        "backbone": "hrnet_w18",
        "input": [size, size],
        "batch": batch,
        "sequence_length": steps,
        "tbptt_chunk": chunk,
        "timings": timings,
        "frames_per_s": {name: per_second(frames_per_step, t) for name, t in timings.items()},
        "speedup_finetune_vs_full": ratio(timings["full_network"], timings["finetune_frozen"]),
    }


def tbptt_memory_workload(
    steps: int, chunk: int, size: int, batch: int, device: str = "cpu"
) -> Callable[[], Any]:
    """Setup for `measure_peak_memory`: one fine-tuning step on a (batch, steps) sequence.

    The frames live in memory before the measurement starts, so only what training keeps alive
    (activations, graph, optimizer state) counts."""
    setup = finetune_setup("hrnet_w18", size, batch, steps, chunk, device)
    return training_step_workload(setup)


@register("tbptt_memory")
def bench_tbptt_memory(ctx: BenchContext) -> Figures:
    """Peak memory of a fine-tuning step at T=64 vs T=8, chunk k=4 (goal ratio <= 1.25)."""
    size = ctx.pick(64, 128, 256)
    batch = ctx.pick(1, 1, 2)
    long_steps = ctx.pick(8, 64, 64)
    results = {}
    for steps in (8, long_steps):
        kwargs = {"steps": steps, "chunk": 4, "size": size, "batch": batch,
                  "device": ctx.device.type}  # fmt: skip
        results[f"T{steps}"] = measure_peak_memory(
            "lightning_fa.commands.bench.training:tbptt_memory_workload",
            kwargs,
            ctx.device.type,
            ctx.threads,
        )
    short, long = results["T8"], results[f"T{long_steps}"]
    memory_ratio = round(long["growth_mib"] / max(short["growth_mib"], 1e-9), 4)
    return {
        "step": "StableAlignmentModule.training_step",
        "input": [size, size],
        "batch": batch,
        "tbptt_chunk": 4,
        "settings": results,
        f"ratio_T{long_steps}_vs_T8": memory_ratio,
        "goal_ratio": 1.25,
        "within_goal": memory_ratio <= 1.25,
    }
