"""300VW on disk: the split lists, frame decoding and the per-frame cache (`FrameStore`), and the
annotations (`read_300vw_video`, `load_300vw_split`).

Layout: ``<root>/<id>/vid.avi`` + ``<root>/<id>/annot/000001.pts`` (1-based frame numbers).
Frames are decoded with ``cv2.VideoCapture`` sequentially (never by seeking) and either kept in
memory (the last video only) or, with ``cache_dir``, written once as one JPEG / NPY per frame.
Frames with broken annotations (the project's resource list) are marked; the datasets
(`data_modules.video`) keep them in the stream with ``valid=False``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from scipy.ndimage import uniform_filter1d
from tqdm.auto import tqdm

from data_modules.formats import OnError, log_skipped, read_pts
from lightning_fa.geometry import (
    landmarks_box,
)

log = logging.getLogger(__name__)

CacheFormat = Literal["jpg", "npy"]

# Standard 300VW split (FAB / SBR / mmpose), see SPEC 7.
SPLITS_300VW: dict[str, tuple[str, ...]] = {
    "train": tuple(
        "001 002 003 004 007 009 010 011 013 015 016 017 018 019 020 022 025 027 028 029 031 033 "
        "034 035 037 039 041 043 044 046 047 048 049 053 057 059 112 113 115 119 120 123 138 143 "
        "144 160 204 205 223 225".split()
    ),
    "scenario1": tuple(
        "114 124 125 126 150 158 401 402 505 506 507 508 509 510 511 514 515 518 519 520 521 522 "
        "524 525 537 538 540 541 546 547 548".split()
    ),
    "scenario2": tuple(
        "203 208 211 212 213 214 218 224 403 404 405 406 407 408 409 412 550 551 553".split()
    ),
    "scenario3": tuple("410 411 516 517 526 528 529 530 531 533 557 558 559 562".split()),
}

# Validation videos, held out of the 50 training videos (every 10th: 001 016 031 047 120): model
# selection and sweeps choose on these, never on a test scenario, and training never sees them.
DEFAULT_VAL_VIDEOS_300VW: tuple[str, ...] = SPLITS_300VW["train"][::10]

BROKEN_FRAMES_PATH = Path(__file__).parent / "resources" / "broken_frames_300vw.json"


@cache
def load_broken_frames(path: Path = BROKEN_FRAMES_PATH) -> dict[str, frozenset[int]]:
    """{video id: 1-based frame numbers with broken annotations}."""
    return {vid: frozenset(frames) for vid, frames in json.loads(Path(path).read_text()).items()}


# ----------------------------------------------------------------------------- decoding


def read_video_frames(path: str | Path) -> Iterator[np.ndarray]:
    """RGB uint8 frames of a video file, decoded sequentially.

    Raises FileNotFoundError for a missing file and ValueError for a file OpenCV cannot open as
    a video or one that yields no frame (checked before returning the iterator).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise ValueError(f"{path}: cannot be opened as a video (expected e.g. an .avi/.mp4 file)")
    ok, first = capture.read()
    if not ok:
        capture.release()
        raise ValueError(f"{path}: the video has zero decodable frames")

    def frames() -> Iterator[np.ndarray]:
        try:
            frame: np.ndarray | None = first
            while frame is not None:
                yield np.ascontiguousarray(frame[..., ::-1])
                ok, frame = capture.read()
                if not ok:
                    frame = None
        finally:
            capture.release()

    return frames()


def _frame_file(folder: Path, number: int, fmt: CacheFormat) -> Path:
    return folder / f"{number:06d}.{fmt}"


class FrameStore:
    """Frames of a video by 0-based index range, from a per-frame cache or decoded into memory.

    Without ``cache_dir`` the whole video is decoded (sequentially) and the last video is kept,
    which suits evaluation streaming a video window after window; use ``cache_dir`` for training
    on real 300VW (random windows) so each video is decoded once.
    """

    def __init__(
        self, cache_dir: str | Path | None = None, cache_format: CacheFormat = "jpg"
    ) -> None:
        if cache_format not in ("jpg", "npy"):
            raise ValueError(f"cache_format must be 'jpg' or 'npy', got {cache_format!r}")
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.cache_format = cache_format
        self._memory: tuple[Path, list[np.ndarray]] | None = None

    def _cache_folder(self, video_path: Path) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / video_path.parent.name

    def ensure_cached(self, video_path: Path) -> int:
        """Decode ``video_path`` into the cache once (atomic rename); returns the frame count."""
        folder = self._cache_folder(video_path)
        marker = folder / "complete.json"
        if marker.is_file():
            try:
                return int(json.loads(marker.read_text())["frames"])
            except (ValueError, KeyError, TypeError) as error:
                self._discard(folder, f"{marker} is unreadable ({error!r})")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        count = 0
        try:
            frames = tqdm(
                read_video_frames(video_path),
                desc=f"caching {video_path.parent.name}",
                unit="frame",
            )
            for count, frame in enumerate(frames, start=1):
                target = _frame_file(tmp, count, self.cache_format)
                if self.cache_format == "jpg":
                    cv2.imwrite(str(target), frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
                else:
                    np.save(target, frame)
            marker_text = json.dumps({"frames": count, "source": str(video_path)})
            (tmp / "complete.json").write_text(marker_text)
        except BaseException:  # an interrupted decode leaves no half-written folder behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
        return count

    @staticmethod
    def _discard(folder: Path, reason: str) -> None:
        log.warning("%s; decoding the video into %s again", reason, folder)
        shutil.rmtree(folder, ignore_errors=True)

    def _read_cached(self, folder: Path, start: int, stop: int) -> list[np.ndarray]:
        out = []
        for n in range(start + 1, stop + 1):
            path = _frame_file(folder, n, self.cache_format)
            try:
                frame = np.load(path) if self.cache_format == "npy" else cv2.imread(str(path))
            except (OSError, ValueError, EOFError) as error:
                raise ValueError(f"frame cache file {path} is unreadable ({error})") from error
            if frame is None or frame.ndim != 3:  # imread gives None for a missing / bad file
                raise ValueError(f"frame cache file {path} is unreadable (not an image)")
            if self.cache_format == "jpg":
                frame = frame[..., ::-1]  # OpenCV reads BGR
            out.append(np.ascontiguousarray(frame))
        return out

    def frames(self, video_path: Path, start: int, stop: int) -> list[np.ndarray]:
        """Frames ``start`` (inclusive) to ``stop`` (exclusive), 0-based, as RGB uint8."""
        if self.cache_dir is not None:
            available = self.ensure_cached(video_path)
            if stop > available:
                raise ValueError(f"{video_path}: asked for frame {stop}, the video has {available}")
            folder = self._cache_folder(video_path)
            try:
                return self._read_cached(folder, start, stop)
            except ValueError as error:
                # A frame damaged after the cache was completed (disk trouble, a killed copy):
                # decode the video again; a second failure is reported with the file's name.
                self._discard(folder, str(error))
                self.ensure_cached(video_path)
                return self._read_cached(folder, start, stop)
        if self._memory is None or self._memory[0] != video_path:
            self._memory = (video_path, list(read_video_frames(video_path)))
        decoded = self._memory[1]
        if stop > len(decoded):
            raise ValueError(f"{video_path}: asked for frame {stop}, the video has {len(decoded)}")
        return decoded[start:stop]


# ----------------------------------------------------------------------------- annotations


def _ranges(numbers: Sequence[int]) -> str:
    """'3-5, 9' style summary of sorted integers."""
    parts, run = [], [numbers[0], numbers[0]]
    for n in numbers[1:]:
        if n == run[1] + 1:
            run[1] = n
        else:
            parts.append(run)
            run = [n, n]
    parts.append(run)
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)


@dataclass
class VideoRecord:
    """One annotated video: frame-wise 0-based landmarks, validity and crop boxes."""

    video_id: str
    video_path: Path
    landmarks: np.ndarray  # (N, L, 2) float32
    valid: np.ndarray  # (N,) bool: annotated and not broken
    centers: np.ndarray  # (N, 2) crop centres
    scales: np.ndarray  # (N,) crop box sides in pixels
    missing: int = 0  # frames without an annotation file (on_error="skip")

    @property
    def num_frames(self) -> int:
        return len(self.valid)


def read_300vw_video(
    video_dir: str | Path,
    num_landmarks: int = 68,
    broken: frozenset[int] = frozenset(),
    smooth_window: int = 1,
    on_error: OnError = "raise",
) -> VideoRecord:
    """Annotations of one 300VW folder (``vid.avi`` + ``annot/NNNNNN.pts``).

    Frames 1..max annotation number must all have a .pts; missing ones raise a ValueError naming
    the folder and the missing numbers, or with ``on_error="skip"`` become invalid frames
    (counted in ``missing``). Crop boxes come from each frame's landmarks, interpolated over
    invalid frames, then smoothed by a centred moving average of ``smooth_window`` frames.
    A .pts that ``read_pts`` refuses (malformed, binary, NaN / inf, wrong point count) always
    raises, naming the file and line: ``load_300vw_split(on_error="skip")`` then skips and
    logs the whole video, as for any other error in it (NaN here marks unannotated frames,
    so a NaN from a file must never get in).
    """
    video_dir = Path(video_dir)
    annot = video_dir / "annot"
    video_path = video_dir / "vid.avi"
    if not video_path.is_file():
        raise FileNotFoundError(f"video not found: {video_path}")
    if not annot.is_dir():
        raise FileNotFoundError(f"annotation folder not found: {annot}")
    files = {}
    for path in annot.glob("*.pts"):
        if not path.stem.isdigit():
            raise ValueError(
                f"{path}: expected annotation files named by frame number (000001.pts)"
            )
        files[int(path.stem)] = path
    if not files:
        raise ValueError(f"{annot}: no .pts annotation files")
    count = max(files)
    missing = sorted(set(range(1, count + 1)) - set(files))
    if missing and on_error == "raise":
        raise ValueError(
            f"{annot}: annotations missing for frames {_ranges(missing)} "
            f"(expected one NNNNNN.pts per frame 1..{count})"
        )
    landmarks = np.full((count, num_landmarks, 2), np.nan, dtype=np.float32)
    for number, path in files.items():
        landmarks[number - 1] = read_pts(path, num_landmarks)
    annotated = ~np.isnan(landmarks[:, 0, 0])
    valid = annotated & ~np.isin(np.arange(1, count + 1), sorted(broken))
    if not valid.any():
        raise ValueError(f"{video_dir}: no valid annotated frame to place the face crop")
    centers = np.zeros((count, 2))
    scales = np.zeros(count)
    for i in np.flatnonzero(valid):
        x1, y1, x2, y2 = landmarks_box(landmarks[i])
        centers[i] = ((x1 + x2) / 2, (y1 + y2) / 2)
        scales[i] = max(x2 - x1, y2 - y1)
    frames = np.arange(count)
    good = np.flatnonzero(valid)
    centers = np.stack([np.interp(frames, good, centers[good, a]) for a in range(2)], axis=1)
    scales = np.interp(frames, good, scales[good])
    if smooth_window > 1:
        centers = uniform_filter1d(centers, smooth_window, axis=0, mode="nearest")
        scales = uniform_filter1d(scales, smooth_window, mode="nearest")
    # Unannotated frames still need finite coordinates downstream; they are excluded via valid.
    landmarks[~annotated] = 0.0
    return VideoRecord(video_dir.name, video_path, landmarks, valid, centers, scales, len(missing))


def load_300vw_split(
    root: str | Path,
    split: str,
    smooth_window: int = 1,
    on_error: OnError = "raise",
    broken_frames: dict[str, frozenset[int]] | None = None,
    video_ids: Sequence[str] | None = None,
) -> tuple[list[VideoRecord], list[str]]:
    """Records of every video of a split (``SPLITS_300VW``), or of its ``video_ids`` only, and
    the problems skipped."""
    if split not in SPLITS_300VW:
        raise ValueError(f"unknown 300VW split {split!r}; expected one of {sorted(SPLITS_300VW)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"300VW root folder not found: {root}")
    broken_frames = load_broken_frames() if broken_frames is None else broken_frames
    records, problems = [], []
    for video_id in SPLITS_300VW[split] if video_ids is None else video_ids:
        try:
            record = read_300vw_video(
                root / video_id,
                68,
                broken_frames.get(video_id, frozenset()),
                smooth_window,
                on_error,
            )
        except (ValueError, FileNotFoundError) as err:
            if on_error == "raise":
                raise
            problems.append(str(err))
            continue
        if record.missing:
            problems.append(
                f"{root / video_id}: {record.missing} frames without annotation (invalid)"
            )
        records.append(record)
    if not records:
        raise ValueError(
            f"no 300VW {split} videos found under {root} (expected <id>/vid.avi + annot/)"
        )
    log_skipped(f"300VW {split} under {root}", problems)
    return records, problems
