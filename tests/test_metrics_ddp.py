"""The metric classes give the single-process value under DDP (2 CPU ranks, gloo).

One spawn runs every scenario (spawning costs seconds); each rank saves its compute() results and
the parent compares them with one process that saw every sample once.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_fa.metrics import LandmarkAccuracy, VideoStability

WORLD_SIZE = 2


def make_frames():
    """Frames of 3 videos (lengths 2, 7, 11), 68 points, some broken labels, in stream order."""
    g = torch.Generator().manual_seed(0)
    lengths = (2, 7, 11)
    num = sum(lengths)
    walk = torch.randn(num, 68, 2, generator=g).cumsum(0) * 0.3
    target = 200.0 + torch.rand(num, 68, 2, generator=g) * 60 + walk
    target[:, 45] += 50.0
    return {
        "pred": target + torch.randn(num, 68, 2, generator=g),
        "target": target,
        "video_id": torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)]),
        "frame_index": torch.cat([torch.arange(n) for n in lengths]),
        "valid": torch.rand(num, generator=g) > 0.2,
    }


def shards(num_frames: int) -> dict[str, list[torch.Tensor]]:
    """Per scenario, the frame rows each rank sees (in that order)."""
    order = torch.randperm(num_frames, generator=torch.Generator().manual_seed(1))
    return {
        "uneven": [order[:6], order[6:]],
        "empty_rank": [order, order[:0]],
        "padded": [order[:10], torch.cat([order[10:], order[:3]])],
    }


def update(accuracy: LandmarkAccuracy, video: VideoStability, frames: dict, rows: torch.Tensor):
    # No update call at all for an empty shard (an empty split would still append typed tensors).
    for start in range(0, len(rows), 4):
        batch = rows[start : start + 4]
        accuracy.update(frames["pred"][batch], frames["target"][batch], index=batch)
        video.update(*(frames[k][batch] for k in ("pred", "target", "video_id", "frame_index")),
                     valid=frames["valid"][batch])  # fmt: skip


def run_all(frames: dict, shard_of_rank) -> dict[str, dict[str, float]]:
    results = {}
    for scenario, rows in shard_of_rank.items():
        accuracy, video = LandmarkAccuracy(), VideoStability()
        update(accuracy, video, frames, rows)
        results[scenario] = {
            **{k: v.item() for k, v in accuracy.compute().items()},
            **{k: v.item() for k, v in video.compute().items()},
        }
    return results


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        frames = make_frames()
        mine = {name: split[rank] for name, split in shards(len(frames["pred"])).items()}
        torch.save(run_all(frames, mine), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ddp")
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    mp.spawn(_worker, args=(free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def single_process() -> dict[str, float]:
    frames = make_frames()
    every_frame = torch.arange(len(frames["pred"]))
    return run_all(frames, {"all": every_frame})["all"]


@pytest.mark.ddp
@pytest.mark.parametrize("scenario", ["uneven", "empty_rank", "padded"])
def test_ddp_compute_equals_single_process(ddp_results, single_process, scenario):
    assert len(single_process) == 13  # 5 accuracy + 8 video values, none of them NaN
    for rank, results in enumerate(ddp_results):
        for key, value in single_process.items():
            assert results[scenario][key] == pytest.approx(value, rel=1e-6), (rank, key)
