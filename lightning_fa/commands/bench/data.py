"""DataLoader throughput: image pseudo-sequences, synthetic video windows, 300VW video windows;
samples/s per worker and how many workers keep up with a consumer's frames/s."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from lightning_fa.commands.bench.harness import (
    BenchContext,
    Figures,
    register,
)

# Issue 20's fine-tuning goal on one H100 (>= 4,000 frames/s): the consumer rate the worker
# count is sized for when no GPU fine-tuning rate was measured earlier in the same run.
H100_TARGET_FRAMES_PER_S = 4000.0
# Worker counts of the per-worker sweep; 0 loads in the main process.
SWEEP_WORKERS = (0, 1, 2)

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
    """`count` JPEG synthetic faces with 68 points as records."""
    import cv2

    from data_modules.formats import LandmarkRecord
    from data_modules.synthetic import SyntheticFaceImages

    faces = SyntheticFaceImages(count, image_size=size)
    samples = [faces[i] for i in range(count)]
    items = [(s["image"].permute(1, 2, 0).numpy(), s["landmarks"].numpy()) for s in samples]
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
    from data_modules.video import VideoWindowDataset
    from data_modules.video_files import FrameStore, read_300vw_video

    records = [read_300vw_video(root / video_id) for video_id in video_ids]
    store = FrameStore(cache_dir=root / "frame_cache")
    for record in records:
        store.ensure_cached(record.video_path)
    return VideoWindowDataset(
        records, get_spec("300vw"), train=True, image_size=image_size, seq_len=seq_len,
        windows_per_video=1000, store=store,
    )  # fmt: skip


def worker_sweep(dataset: Any, batch_size: int, batches: int, seq_len: int) -> Figures:
    """`loader_throughput` at each of `SWEEP_WORKERS`, with the rate per loading process
    (workers=0: the main process itself) in samples/s and frames/s."""
    sweep = {}
    for workers in SWEEP_WORKERS:
        figures = loader_throughput(dataset, batch_size, workers, batches)
        per_worker = figures["samples_per_s"] / max(workers, 1)
        sweep[f"workers_{workers}"] = {
            **figures,
            "samples_per_s_per_worker": round(per_worker, 3),
            "frames_per_s_per_worker": round(per_worker * seq_len, 3),
        }
    return sweep


def workers_needed_for(frames_per_s: float, frames_per_s_per_worker: float) -> int:
    """DataLoader workers that together deliver `frames_per_s`, each at the measured rate."""
    if frames_per_s_per_worker <= 0:
        raise ValueError(f"a worker's rate must be > 0, got {frames_per_s_per_worker}")
    return max(1, math.ceil(frames_per_s / frames_per_s_per_worker))


def consumer_rates(ctx: BenchContext) -> dict[str, float]:
    """Frames/s a training process consumes: the fine-tuning rates measured earlier in this run
    (`finetune_step`, `gpu_path`) and, always, issue 20's H100 target."""
    rates = {"h100_target": H100_TARGET_FRAMES_PER_S}
    finetune = ctx.results.get("finetune_step", {}).get("frames_per_s", {})
    if "finetune_frozen" in finetune:
        rates["finetune_step_this_run"] = finetune["finetune_frozen"]
    gpu_finetune = ctx.results.get("gpu_path", {}).get("finetune_bf16", {})
    if "frames_per_s" in gpu_finetune:
        rates["gpu_finetune_bf16_this_run"] = gpu_finetune["frames_per_s"]
    return rates


@register("dataloader")
def bench_dataloader(ctx: BenchContext) -> Figures:
    """Samples/s over 2 workers: image pseudo-sequences, synthetic videos, 300VW video windows;
    the image and 300VW loaders also at 0, 1 and 2 workers, and the workers each consumer in
    `consumer_rates` needs (from the 1-worker rate)."""
    from data_modules.image import LandmarkImageDataset
    from data_modules.landmarks import get_spec
    from data_modules.synthetic import SyntheticFaceVideos, SyntheticVideoWindows

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
        sweeps = {"image_pseudo_sequences": worker_sweep(pseudo, batch_size, batches, seq_len)}
        figures["image_pseudo_sequences"] = sweeps["image_pseudo_sequences"][f"workers_{workers}"]
        videos = SyntheticFaceVideos(4, 64, image_size=ctx.pick(64, 256, 256))
        windows = SyntheticVideoWindows(videos, 1000, seq_len)
        figures["synthetic_video_windows"] = loader_throughput(
            windows, batch_size, workers, batches
        )
        video_ids = ["001", "002"]
        for video_id in video_ids:
            write_300vw_video(
                root / "300vw", video_id, ctx.pick(8, 64, 128), ctx.pick(128, 480, 640)
            )
        start = time.perf_counter()
        dataset = video_windows_dataset(root / "300vw", video_ids, seq_len, 256)
        cache_s = round(time.perf_counter() - start, 3)
        sweeps["300vw_video_windows"] = worker_sweep(dataset, batch_size, batches, seq_len)
        figures["300vw_video_windows"] = {
            **sweeps["300vw_video_windows"][f"workers_{workers}"],
            "frame_cache_build_s": cache_s,
        }
    figures["per_worker"] = sweeps
    rates = consumer_rates(ctx)
    figures["workers_needed_for"] = {
        consumer: {
            "frames_per_s": rate,
            **{
                name: workers_needed_for(rate, sweep["workers_1"]["frames_per_s_per_worker"])
                for name, sweep in sweeps.items()
            },
        }
        for consumer, rate in rates.items()
    }
    return figures
