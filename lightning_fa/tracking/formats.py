"""What `track` writes: the landmark CSV, the JSON document, the COCO-keypoints JSON (as
MMPoseInferencer saves a video), the OpenFace-style CSV and the raw | stabilised overlay
(`TrackOutputs`), each growing in a partial file beside its target until the run completes.
Formats: docs/tracking.md."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lightning_fa.outputs import atomic_write
from lightning_fa.tracking.tracker import TrackResult
from lightning_fa.tracking.video_io import open_overlay

FLUSH_SECONDS = 1.0  # how often the partial outputs of a running `track` reach the disk


def csv_header(num_landmarks: int) -> list[str]:
    coords = [f"{axis}{k}" for k in range(num_landmarks) for axis in ("x", "y")]
    return ["frame", "time", "track_id", "confidence", *coords]


def openface_header(num_landmarks: int) -> list[str]:
    """OpenFace's FeatureExtraction column names for the 2-D landmarks (all x, then all y)."""
    xs = [f"x_{k}" for k in range(num_landmarks)]
    ys = [f"y_{k}" for k in range(num_landmarks)]
    return ["frame", "face_id", "timestamp", "confidence", "success", *xs, *ys]


def _json_number(value: float, digits: int) -> float | None:
    return round(float(value), digits) if math.isfinite(value) else None


def _json_points(points: np.ndarray) -> list[list[float | None]]:
    return [[_json_number(v, 3) for v in p] for p in points]


def _coordinates(values: np.ndarray) -> list[str]:
    return [f"{v:.3f}" for v in values]


def draw_points(image: np.ndarray, points: np.ndarray, colour: tuple[int, int, int]) -> None:
    for x, y in points:
        if math.isfinite(x) and math.isfinite(y):
            cv2.circle(image, (round(x), round(y)), 2, colour, -1, cv2.LINE_AA)


def label_pane(image: np.ndarray, text: str) -> None:
    """`text` in the top-left corner of an overlay pane, white with a black outline (legible on
    any background), sized to the pane's height."""
    scale = max(image.shape[0] / 720, 0.3)
    thickness = max(round(2 * scale), 1)
    (_, height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    margin = max(round(10 * scale), 2)
    origin = (margin, margin + height)
    for colour, width in (((0, 0, 0), thickness + 2), ((255, 255, 255), thickness)):
        cv2.putText(
            image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, width, cv2.LINE_AA
        )


def partial_path(path: Path, suffix: str | None = None) -> Path:
    """Where an output grows while its run goes: `lm.csv` -> `lm.partial.csv` (or `suffix`)."""
    return path.with_name(f"{path.stem}.partial{path.suffix if suffix is None else suffix}")


def _json_frame(index: int, t: float, results: list[TrackResult]) -> dict[str, Any]:
    return {
        "frame": index,
        "time": round(t, 4),
        "faces": [
            {
                "track_id": r.track_id,
                "confidence": round(r.confidence, 4),
                "landmarks": _json_points(r.landmarks),
                "raw": _json_points(r.raw),
            }
            for r in results
        ],
    }


def _coco_frame(index: int, t: float, results: list[TrackResult]) -> dict[str, Any]:
    """One frame as MMPoseInferencer saves a video's predictions (`frame_id`, `instances` with
    `keypoints` [[x, y], ...], `keypoint_scores`, `bbox` as a list holding one [x1, y1, x2, y2],
    `bbox_score`), plus our `timestamp` and `track_id`."""
    return {
        "frame_id": index,
        "timestamp": round(t, 4),
        "instances": [
            {
                "track_id": r.track_id,
                "keypoints": _json_points(r.landmarks),
                "keypoint_scores": [None] * len(r.landmarks)
                if r.landmark_scores is None
                else [_json_number(v, 4) for v in r.landmark_scores],
                "bbox": [[_json_number(v, 2) for v in r.box]],
                "bbox_score": round(r.confidence, 4),
            }
            for r in results
        ],
    }


class TrackOutputs:
    """The CSV rows, the JSON document, the COCO-keypoints JSON, the OpenFace CSV and the
    raw | stabilised overlay video of one run (each optional: None).

    Everything is written as it comes to partial files beside the targets (`partial_path`; the
    JSON frames one per line, so memory stays flat however long the video): `close` moves them
    into place once the run is complete, `abort` closes them and leaves the targets untouched.
    """

    def __init__(
        self,
        num_landmarks: int,
        csv_path: Path | None,
        json_path: Path | None,
        video_path: Path | None,
        fps: float,
        frame_size: tuple[int, int],
        coco_path: Path | None = None,
        openface_path: Path | None = None,
    ) -> None:
        self.num_landmarks = num_landmarks
        self.csv_path, self.json_path, self.video_path = csv_path, json_path, video_path
        self.coco_path, self.openface_path = coco_path, openface_path
        self.frames_written = 0
        self._csv_file = self._json_lines = self._coco_lines = self._openface_file = None
        self._video = None
        self._last_flush = time.monotonic()
        try:
            if video_path is not None:
                width, height = frame_size
                self._video = open_overlay(
                    partial_path(video_path), video_path, fps, (2 * width, height)
                )
            if csv_path is not None:
                self._csv_file = open(partial_path(csv_path), "w", newline="")
                self._csv = csv.writer(self._csv_file)
                self._csv.writerow(csv_header(num_landmarks))
            if openface_path is not None:
                self._openface_file = open(partial_path(openface_path), "w", newline="")
                self._openface = csv.writer(self._openface_file)
                self._openface.writerow(openface_header(num_landmarks))
            if json_path is not None:
                self._json_lines = open(partial_path(json_path, ".jsonl"), "w", encoding="utf-8")
            if coco_path is not None:
                self._coco_lines = open(partial_path(coco_path, ".jsonl"), "w", encoding="utf-8")
        except BaseException:
            self.abort()
            raise

    def _text_files(self) -> list[Any]:
        return [self._csv_file, self._openface_file, self._json_lines, self._coco_lines]

    def partial_files(self) -> list[Path]:
        """The partial files of this run's outputs that exist now."""
        candidates = [
            partial_path(self.csv_path) if self.csv_path else None,
            partial_path(self.openface_path) if self.openface_path else None,
            partial_path(self.json_path, ".jsonl") if self.json_path else None,
            partial_path(self.coco_path, ".jsonl") if self.coco_path else None,
            partial_path(self.video_path) if self.video_path else None,
        ]
        return [path for path in candidates if path is not None and path.exists()]

    def add(self, index: int, t: float, frame: np.ndarray, results: list[TrackResult]) -> None:
        if self._csv_file is not None:
            for r in results:
                self._csv.writerow(
                    [
                        index,
                        f"{t:.4f}",
                        r.track_id,
                        f"{r.confidence:.4f}",
                        *_coordinates(r.landmarks.reshape(-1)),
                    ]
                )
            if not results:
                nan_row = [math.nan] * (2 * self.num_landmarks)
                self._csv.writerow([index, f"{t:.4f}", -1, "0.0000", *nan_row])
        if self._openface_file is not None:
            # OpenFace numbers frames from 1 and writes a failed frame as face 0, success 0,
            # zeros everywhere.
            for r in results:
                self._openface.writerow(
                    [index + 1, r.track_id, f"{t:.3f}", f"{r.confidence:.4f}", 1,
                     *_coordinates(r.landmarks[:, 0]), *_coordinates(r.landmarks[:, 1])]
                )  # fmt: skip
            if not results:
                zeros = ["0.000"] * (2 * self.num_landmarks)
                self._openface.writerow([index + 1, 0, f"{t:.3f}", "0.0000", 0, *zeros])
        if self._json_lines is not None:
            self._json_lines.write(json.dumps(_json_frame(index, t, results)) + "\n")
        if self._coco_lines is not None:
            self._coco_lines.write(json.dumps(_coco_frame(index, t, results)) + "\n")
        if self._video is not None:
            left = np.ascontiguousarray(frame[..., ::-1])
            right = left.copy()
            for r in results:
                draw_points(left, r.raw, (0, 0, 255))
                draw_points(right, r.landmarks, (0, 255, 0))
            label_pane(left, "raw")
            label_pane(right, "stabilised")
            self._video.write(np.concatenate([left, right], axis=1), t)
        self.frames_written += 1
        # A hard kill loses at most the last second; Python's buffers would otherwise hold more.
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            for handle in self._text_files():
                if handle is not None:
                    handle.flush()
            self._last_flush = time.monotonic()

    def _close_files(self) -> None:
        for handle in self._text_files():
            if handle is not None:
                handle.close()
        if self._video is not None:
            self._video.release()
        self._csv_file = self._json_lines = self._coco_lines = self._openface_file = None
        self._video = None

    def abort(self) -> list[Path]:
        """Close everything after a failed run; returns the partial files kept (none when no
        frame was written: then they hold nothing worth keeping and are removed)."""
        self._close_files()
        kept = self.partial_files()
        if self.frames_written == 0:
            for path in kept:
                path.unlink()
            return []
        return kept

    def close(self, summary: dict[str, Any]) -> None:
        """Complete the run: each partial file replaces its target (flushed to disk first)."""
        self._close_files()
        for path in (self.csv_path, self.openface_path, self.video_path):
            if path is not None:
                with open(partial_path(path), "rb") as handle:
                    os.fsync(handle.fileno())
                os.replace(partial_path(path), path)
        if self.json_path is not None:
            # The frame list takes the place of a placeholder: "frames" may be a summary key
            # (the count), whose position in the document the list then keeps.
            placeholder = "\0frames\0"
            document = {**summary, "num_landmarks": self.num_landmarks, "frames": placeholder}
            before, after = json.dumps(document).split(json.dumps(placeholder))
            _join_json_lines(partial_path(self.json_path, ".jsonl"), self.json_path, before, after)
        if self.coco_path is not None:
            _join_json_lines(partial_path(self.coco_path, ".jsonl"), self.coco_path, "", "")


def _join_json_lines(lines_path: Path, target: Path, before: str, after: str) -> None:
    """Write `before`, the JSON values of `lines_path` (one a line) as a list, then `after` to
    `target` atomically, one line at a time (byte for byte what `json.dumps` gives for the
    whole); the lines file is removed."""
    with atomic_write(target, encoding="utf-8") as out, open(lines_path) as lines:
        out.write(before + "[")
        for k, line in enumerate(lines):
            out.write((", " if k else "") + line.rstrip("\n"))
        out.write("]" + after)
    lines_path.unlink()
