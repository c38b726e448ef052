"""Video in and out: `open_capture` (file or camera), `FrameReader` (RGB frames at the
container's timestamps, corrupt frames skipped) and the overlay writers (H.264 through PyAV,
MJPG through OpenCV)."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lightning_fa.checks import check_ints


def open_capture(source: str) -> tuple[cv2.VideoCapture, bool]:
    """Open a video file or a camera index ("0", "1", ...); returns (capture, is_camera).

    A file is checked to hold at least one decodable frame, then reopened at its start (seeking
    is not exact for every codec)."""
    if source.isdigit():
        capture = cv2.VideoCapture(int(source))
        if not capture.isOpened():
            raise ValueError(f"cannot open camera {source}: no such device or it is busy")
        return capture, True
    path = Path(source)
    if path.is_dir():
        raise ValueError(f"input video {path} is a directory, not a video file")
    if not path.is_file():
        raise FileNotFoundError(f"input video not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"input video {path} is empty (0 bytes)")
    capture = cv2.VideoCapture(str(path))
    readable = capture.isOpened() and capture.read()[0]
    capture.release()
    if not readable:
        raise ValueError(f"{path} is not a video OpenCV can decode (expected e.g. .mp4, .avi)")
    return cv2.VideoCapture(str(path)), False


def capture_fps(capture: Any) -> float:
    """The capture's nominal frame rate; 25 when it reports none (0, or a negative value)."""
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    return float(fps) if fps > 0 else 25.0


class FrameReader:
    """Sequential RGB frames from a capture with their timestamps. A frame that fails to decode
    before the file's end is skipped and counted (`skipped`); `max_failures` failures in a row
    end the stream.

    Timestamps are the container's: after each read, the capture's presentation time of that
    frame (`CAP_PROP_POS_MSEC`), so variable-frame-rate video (phones) keeps its real timing. A
    frame without a usable stamp (missing, or not after the previous one) is placed its distance
    in frames after the previous frame at `fps` (the capture's rate, else 25), and counted in
    `estimated_times`.
    """

    def __init__(
        self,
        capture: Any,
        max_frames: int | None = None,
        max_failures: int = 25,
    ) -> None:
        check_ints(need=">= 1", none_allowed=True, max_frames=max_frames)
        self.capture = capture
        self.max_frames = max_frames
        self.max_failures = max_failures
        self.skipped = 0
        self.estimated_times = 0
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 else None
        self.fps = capture_fps(capture)

    @property
    def expected_frames(self) -> int | None:
        """At most how many frames `timed` yields (for a progress bar); None when unknown."""
        return min(filter(None, (self.frame_count, self.max_frames)), default=None)

    def timed(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """Yields (frame number in the file, timestamp in seconds, RGB frame); the timestamps
        strictly increase, as the filters need."""
        position, failures, delivered = 0, 0, 0
        previous: tuple[int, float] | None = None
        while self.max_frames is None or delivered < self.max_frames:
            ok, frame = self.capture.read()
            if ok and frame is not None and frame.ndim == 3:
                failures = 0
                delivered += 1
                t = self.capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                if not (math.isfinite(t) and (previous is None or t > previous[1])):
                    last_position, last_t = previous or (0, 0.0)
                    t = last_t + (position - last_position) / self.fps
                    self.estimated_times += 1
                previous = (position, t)
                yield position, t, np.ascontiguousarray(frame[..., ::-1])
            else:
                before_end = self.frame_count is not None and position < self.frame_count
                failures += 1
                if not before_end or failures >= self.max_failures:
                    return
                self.skipped += 1
            position += 1


VIDEO_CODECS = {".avi": "MJPG", ".mp4": "H.264", ".m4v": "H.264", ".mov": "H.264", ".mkv": "H.264"}


def have_h264() -> bool:
    """Whether PyAV is installed with an H.264 encoder (its wheels bundle libx264)."""
    try:
        import av
    except ImportError:
        return False
    return "libx264" in av.codecs_available


def overlay_path(path: Path) -> Path:
    """The overlay video that will be written for `--out-video path`: H.264 needs PyAV; without
    it an MJPG .avi beside the requested name (with a one-line notice). Extensions whose
    container holds neither codec are refused."""
    if path.suffix.lower() not in VIDEO_CODECS:
        raise ValueError(
            f"--out-video {path}: unsupported extension {path.suffix!r}; use .mp4 (H.264, plays "
            "in browsers) or .avi (MJPG)"
        )
    if VIDEO_CODECS[path.suffix.lower()] == "H.264" and not have_h264():
        fallback = path.with_suffix(".avi")
        print(
            f"lightning-fa track: no H.264 encoder (pip install av); writing the overlay as "
            f"MJPG to {fallback}",
            file=sys.stderr,
        )
        return fallback
    return path


class H264Writer:
    """Browser-playable H.264 (libx264, yuv420p) through PyAV. Each frame keeps its own
    timestamp, so a variable-frame-rate input gives an overlay with the same timing."""

    TIME_BASE = Fraction(1, 90000)  # the MPEG clock: sub-millisecond stamps

    def __init__(self, path: Path, fps: float, frame_size: tuple[int, int]) -> None:
        import av

        width, height = frame_size
        # yuv420p needs even sides; an odd one gets one black row or column.
        self._size = (width + width % 2, height + height % 2)
        options = {"movflags": "+faststart"} if path.suffix.lower() != ".mkv" else {}
        self._container = av.open(str(path), "w", options=options)
        try:
            stream = self._container.add_stream(
                "libx264", rate=Fraction(fps).limit_denominator(1001)
            )
            stream.width, stream.height = self._size
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = self.TIME_BASE
            stream.options = {"preset": "veryfast", "crf": "23"}
        except BaseException:
            self._container.close()
            raise
        self._stream = stream
        self._first: float | None = None
        self._last_pts = -1

    def write(self, bgr: np.ndarray, t: float) -> None:
        import av

        height, width = bgr.shape[:2]
        if (width, height) != self._size:
            padded = np.zeros((self._size[1], self._size[0], 3), np.uint8)
            padded[:height, :width] = bgr
            bgr = padded
        frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
        self._first = t if self._first is None else self._first
        self._last_pts = max(round((t - self._first) / self.TIME_BASE), self._last_pts + 1)
        frame.pts, frame.time_base = self._last_pts, self.TIME_BASE
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def release(self) -> None:
        try:
            for packet in self._stream.encode():  # the frames still in the encoder
                self._container.mux(packet)
        finally:
            self._container.close()


class MjpegWriter:
    """Motion-JPEG .avi through OpenCV (no extra package; a constant frame rate)."""

    def __init__(self, path: Path, fps: float, frame_size: tuple[int, int]) -> None:
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, frame_size)
        if not self._writer.isOpened():
            raise ValueError(f"cannot open overlay video for writing: {path}")

    def write(self, bgr: np.ndarray, t: float) -> None:
        self._writer.write(bgr)

    def release(self) -> None:
        self._writer.release()


def open_overlay(path: Path, target: Path, fps: float, frame_size: tuple[int, int]) -> Any:
    """A writer of `target`'s codec (`VIDEO_CODECS`) writing to `path`."""
    codec = VIDEO_CODECS.get(target.suffix.lower())
    if codec == "MJPG":
        return MjpegWriter(path, fps, frame_size)
    if codec == "H.264":
        if not have_h264():
            raise ValueError(f"{target}: H.264 needs PyAV (pip install av), or write an .avi")
        try:
            return H264Writer(path, fps, frame_size)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot open overlay video for writing: {target}: {error}") from error
    raise ValueError(f"{target}: unsupported overlay extension; use .mp4 (H.264) or .avi (MJPG)")
