"""The Python API: stable landmarks in three lines.

    import lightning_fa
    tracker = lightning_fa.Tracker()           # dlib detector + backbone + the shipped stabiliser
    faces = tracker(frame_rgb)                 # per frame: [TrackResult(track_id, confidence,
                                               #   landmarks (68, 2) frame pixels, ...)]

`tracker.reset()` starts a new stream; `for index, faces in tracker.track("clip.mp4")` runs a
whole video. A thin layer over `lightning_fa.tracking` (`load_step`, `make_detector`,
`StreamingTracker`): everything the command line `track` does per frame, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from lightning_fa.tracking.detectors import make_detector
from lightning_fa.tracking.loading import load_step
from lightning_fa.tracking.tracker import StreamingTracker, TrackResult
from lightning_fa.tracking.video_io import FrameReader, open_capture

__all__ = ["TrackResult", "Tracker"]


class Tracker:
    """Face landmarks per RGB uint8 frame (H, W, 3), stabilised and tracked across frames.

    Args:
        checkpoint: a fine-tuned `.ckpt` (or an exported `.onnx` with `engine="onnx"`); None with
            the dlib backbone uses the stage shipped with the package.
        backbone: the backbone's registered name when no checkpoint is given.
        detector: face detector, "dlib" (HOG) or "haar" (OpenCV), or any callable RGB frame ->
            boxes (N, 5) x1 y1 x2 y2 score (see `StreamingTracker`).
        device: "cpu", "cuda" or "cuda:N".
        filter: an optional classical filter on top ("none", "one-euro", ...).
        max_faces: most faces tracked at once.
        fps: the filters' time base for frames given without a timestamp.
        engine: "torch" or "onnx".
        allow_untrained: run a backbone with random weights or an identity stage anyway
            (refused by default: its landmarks mean nothing).
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        backbone: str = "dlib",
        detector: str | Callable[[np.ndarray], np.ndarray] = "dlib",
        device: str = "cpu",
        filter: str = "none",
        max_faces: int = 1,
        fps: float = 25.0,
        engine: str = "torch",
        allow_untrained: bool = False,
    ) -> None:
        step = load_step(
            checkpoint, backbone, engine, device=device, allow_untrained=allow_untrained
        )
        if isinstance(detector, str):
            detector = make_detector(detector)
        self.tracker = StreamingTracker(
            step,
            detector,
            max_faces=max_faces,
            filter=filter,
            fps=fps,
            device=device,
        )

    def __call__(self, frame: np.ndarray, timestamp: float | None = None) -> list[TrackResult]:
        """One frame of the stream -> one `TrackResult` per tracked face (empty: no face)."""
        return self.tracker.step(frame, timestamp)

    def reset(self) -> None:
        """Forget every track: the next frame starts a new stream."""
        self.tracker.reset()

    def track(
        self, video: str | Path, max_frames: int | None = None
    ) -> Iterator[tuple[int, list[TrackResult]]]:
        """(frame number, faces) for every decodable frame of a video file, from a fresh stream;
        the filters run on the file's own timestamps."""
        capture, _ = open_capture(str(video))
        try:
            reader = FrameReader(capture, max_frames)
            self.tracker.fps = reader.fps
            self.reset()
            for index, t, frame in reader.timed():
                yield index, self(frame, t)
        finally:
            capture.release()
