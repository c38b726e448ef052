"""`track_video`: a tracker over every frame of a video at the container's timestamps, into the
run's outputs (what `lightning-fa track` and the tracker benchmarks run)."""

from __future__ import annotations

import time
from typing import Any

from lightning_fa.tracking.formats import TrackOutputs
from lightning_fa.tracking.tracker import StreamingTracker
from lightning_fa.tracking.video_io import FrameReader


def track_video(
    tracker: StreamingTracker,
    reader: FrameReader,
    outputs: TrackOutputs | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the tracker over every frame of `reader` at the reader's timestamps; returns a
    summary (frames, faces, skipped)."""
    from tqdm import tqdm

    frames = faces = 0
    start = time.perf_counter()
    timed = tqdm(reader.timed(), total=reader.expected_frames, unit="frame", disable=not progress)
    for index, t, frame in timed:
        results = tracker.step(frame, t)
        if outputs is not None:
            outputs.add(index, t, frame, results)
        frames += 1
        faces += bool(results)
    elapsed = time.perf_counter() - start
    return {
        "frames": frames,
        "frames_with_face": faces,
        "skipped_frames": reader.skipped,
        "seconds": round(elapsed, 3),
        "fps_processed": round(frames / elapsed, 2) if elapsed > 0 else None,
    }
