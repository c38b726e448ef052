"""DDP scaling on the CPU: samples/s of the fine-tuning step in 1 and in 2 gloo processes.

Each process runs the project's `StableAlignmentModule.training_step` (frozen backbone, the default
ConvLSTM, TBPTT) on its own batch of the same size, one torch thread each, with the stage wrapped
in `DistributedDataParallel`: before every chunk's backward the reducer is prepared exactly as
Lightning's DDP strategy does under manual optimization, so each backward all-reduces the
stage's gradients over gloo. The 1-process run goes through the same code (a world of one).
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lightning_fa.commands.bench.harness import BenchContext, Figures, Skip, register
from lightning_fa.commands.bench.training import finetune_setup, training_step_workload

BACKBONE = "hrnet_w18"
THREADS_PER_PROCESS = 1


def _parameters_in_sync(module: torch.nn.Module) -> bool:
    """True when every process holds the same parameters (they saw different data, so only
    synced gradients keep them equal)."""
    import torch.distributed as dist

    flat = torch.cat([p.detach().flatten() for p in module.parameters()])
    copies = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(copies, flat)
    return all(torch.equal(copy, flat) for copy in copies)


def _timed_steps(rank: int, workload: Figures) -> Figures:
    """`warmup` untimed fine-tuning steps, then the wall time of `steps` between two barriers."""
    import torch.distributed as dist
    from lightning.pytorch.overrides.distributed import prepare_for_backward
    from torch.nn.parallel import DistributedDataParallel

    setup = finetune_setup(
        BACKBONE, workload["size"], workload["batch"], workload["sequence_length"],
        workload["tbptt_chunk"], data_seed=rank,
    )  # fmt: skip
    replica = DistributedDataParallel(setup.temporal)

    def synced_backward(loss: torch.Tensor) -> None:
        prepare_for_backward(replica, loss)
        loss.backward()

    run = training_step_workload(setup, backward=synced_backward)
    for _ in range(workload["warmup"]):
        run()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(workload["steps"]):
        run()
    dist.barrier()
    elapsed = time.perf_counter() - start
    return {"wall_s": elapsed, "parameters_in_sync": _parameters_in_sync(setup.temporal)}


def _rank_main(rank: int, world_size: int, store: str, result: str, workload: Figures) -> None:
    """One process of a run; rank 0 writes its `_timed_steps` figures to `result`."""
    import torch.distributed as dist

    torch.set_num_threads(THREADS_PER_PROCESS)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(minutes=5),
    )
    try:
        measured = _timed_steps(rank, workload)
        # The DDP reducer must go while its process group lives: freed after destroying the
        # group, it blocked the process's exit (seen once in four runs).
        gc.collect()
    finally:
        dist.destroy_process_group()
    if rank == 0:
        Path(result).write_text(json.dumps(measured))


def run_processes(world_size: int, workload: Figures) -> Figures:
    """Spawn `world_size` gloo processes running `workload`; their samples/s and frames/s."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="lfa_ddp_") as tmp:
        store, result = Path(tmp) / "store", Path(tmp) / "result.json"
        processes = mp.spawn(
            _rank_main,
            args=(world_size, str(store), str(result), workload),
            nprocs=world_size,
            join=False,
        )
        deadline = time.monotonic() + workload["timeout_s"]
        while not processes.join(timeout=1.0):  # raises if a process failed
            if time.monotonic() > deadline:
                for process in processes.processes:
                    process.kill()
                raise RuntimeError(
                    f"{world_size}-process DDP run still going after {workload['timeout_s']} s"
                )
        measured = json.loads(result.read_text())
    samples = world_size * workload["batch"] * workload["steps"]
    return {
        "processes": world_size,
        "wall_s": round(measured["wall_s"], 4),
        "samples_per_s": round(samples / measured["wall_s"], 3),
        "frames_per_s": round(samples * workload["sequence_length"] / measured["wall_s"], 3),
        "parameters_in_sync": measured["parameters_in_sync"],
    }


@register("ddp")
def bench_ddp(ctx: BenchContext) -> Figures:
    """2-process CPU (gloo) scaling efficiency of the fine-tuning step: throughput(2) /
    (2 * throughput(1)), same per-process batch and step count, 1 thread per process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        raise Skip("torch.distributed with the gloo backend is not available in this torch")
    batch, steps, chunk = ctx.pick((1, 2, 2), (1, 8, 4), (4, 8, 4))
    workload: dict[str, Any] = {
        "size": ctx.pick(64, 128, 256),
        "batch": batch,
        "sequence_length": steps,
        "tbptt_chunk": chunk,
        "warmup": 1,
        "steps": ctx.pick(1, 4, 10),
        "timeout_s": ctx.pick(120, 300, 1800),  # a hung process group must not hang the bench
    }
    single, double = run_processes(1, workload), run_processes(2, workload)
    usable_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "step": "StableAlignmentModule.training_step",
        "backend": "gloo",
        "device": "cpu",
        "backbone": BACKBONE,
        "input": [workload["size"]] * 2,
        "batch_per_process": batch,
        "sequence_length": steps,
        "tbptt_chunk": chunk,
        "timed_steps": workload["steps"],
        "warmup_steps": workload["warmup"],
        "threads_per_process": THREADS_PER_PROCESS,
        "usable_cpus": usable_cpus,
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "runs": {"1": single, "2": double},
        "samples_per_s_1": single["samples_per_s"],
        "samples_per_s_2": double["samples_per_s"],
        "efficiency": round(double["samples_per_s"] / (2 * single["samples_per_s"]), 4),
    }
