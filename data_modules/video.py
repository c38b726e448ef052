"""300VW videos: reading, per-frame face crops, training windows, streamed evaluation, DDP sharding.

Layout: ``<root>/<id>/vid.avi`` + ``<root>/<id>/annot/000001.pts`` (1-based frame numbers).
Frames are decoded with ``cv2.VideoCapture`` sequentially (never by seeking) and either kept in
memory (the last video only) or, with ``cache_dir``, written once as one JPEG / NPY per frame.

Frames with broken annotations (the project's resource list) stay in the stream with
``valid=False``; their crop box is interpolated from the valid neighbours. ``frame_index`` is the
0-based position in the video (annotation number - 1).
"""

from __future__ import annotations

import json
import logging
import math
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
import torch
from scipy.ndimage import uniform_filter1d
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from data_modules.base import EpochSampler, FaceDataModule
from data_modules.formats import OnError, log_skipped, read_pts
from data_modules.image import DEFAULT_AUGMENT, crop_norm_size
from data_modules.landmarks import DatasetSpec, get_spec
from data_modules.transforms import (
    AugmentConfig,
    AugmentParams,
    Degradation,
    augmented_affine,
    crop_frame,
    sample_augmentation,
)
from lightning_fa.checks import check_ints
from lightning_fa.geometry import (
    DEFAULT_ENLARGE,
    landmarks_box,
    landmarks_to_crop,
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


# ----------------------------------------------------------------------------- datasets


class VideoWindowDataset(Dataset):
    """Windows of consecutive frames of annotated videos, cropped per frame.

    Training (``train=True``): ``windows_per_video`` items per video per epoch, each a window of
    ``seq_len`` frames at a random start, one augmentation draw per window, per-frame
    degradations. Evaluation: each video split in order into consecutive windows of
    ``eval_window`` frames (None: the whole video as one item), no augmentation.
    """

    def __init__(
        self,
        videos: Sequence[VideoRecord],
        spec: DatasetSpec,
        train: bool,
        image_size: int = 256,
        seq_len: int = 6,
        windows_per_video: int = 50,
        eval_window: int | None = None,
        augment: AugmentConfig | None = None,
        degradation: Degradation | None = None,
        store: FrameStore | None = None,
        seed: int = 0,
        enlarge: float = DEFAULT_ENLARGE,
    ) -> None:
        self.videos = list(videos)
        self.spec = spec
        self.train = train
        self.output_size = (image_size, image_size)
        self.seq_len = seq_len
        self.augment = augment
        self.degradation = degradation
        self.store = store or FrameStore()
        self.seed = seed
        self.enlarge = enlarge
        # items: (video position, start frame, stop frame); training starts are drawn later
        self.items: list[tuple[int, int, int]] = []
        for v, video in enumerate(self.videos):
            if train:
                if video.num_frames < seq_len:
                    raise ValueError(
                        f"{video.video_path}: {video.num_frames} frames, shorter than seq_len={seq_len}"
                    )
                self.items += [(v, -1, -1)] * windows_per_video
            else:
                window = eval_window or video.num_frames
                self.items += [
                    (v, s, min(s + window, video.num_frames))
                    for s in range(0, video.num_frames, window)
                ]

    def __len__(self) -> int:
        return len(self.items)

    def video_of(self, index: int) -> int:
        """Position in ``videos`` of the video that item ``index`` belongs to."""
        return self.items[index][0]

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = item if isinstance(item, tuple) else (0, int(item))
        rng = np.random.default_rng((self.seed, epoch, index))
        v, start, stop = self.items[index]
        video = self.videos[v]
        if self.train:
            start = int(rng.integers(0, video.num_frames - self.seq_len + 1))
            stop = start + self.seq_len
        params = AugmentParams() if self.augment is None else sample_augmentation(rng, self.augment)
        images = self.store.frames(video.video_path, start, stop)
        perm = self.spec.flip_permutation
        frames, landmarks, affines, norms = [], [], [], []
        for t, image in zip(range(start, stop), images, strict=True):
            affine = augmented_affine(
                video.centers[t], video.scales[t], self.output_size, params, self.enlarge
            )
            crop = crop_frame(image, affine, self.output_size, params, self.degradation, rng)
            points = landmarks_to_crop(
                video.landmarks[t].astype(np.float64), affine, params.flip, perm
            )
            frames.append(crop)
            landmarks.append(points)
            affines.append(affine)
            norms.append(crop_norm_size(points, affine, self.spec, math.nan))
        return {
            "frames": torch.stack(frames),
            "landmarks": torch.from_numpy(np.stack(landmarks).astype(np.float32)),
            "affine": torch.from_numpy(np.stack(affines).astype(np.float32)),
            "valid": torch.from_numpy(video.valid[start:stop].copy()),
            "norm_size": torch.tensor(norms, dtype=torch.float32),
            "video_id": torch.tensor(int(video.video_id), dtype=torch.int64),
            "frame_index": torch.arange(start, stop, dtype=torch.int64),
        }


class VideoShardSampler(DistributedSampler):
    """Whole videos per rank: every item of a video goes to exactly one rank, in order.

    Videos are assigned greedily by length (longest first to the least-loaded rank), so ranks
    get similar frame counts but may get unequal numbers of items; nothing is padded or
    duplicated. Being a ``DistributedSampler``, Lightning uses it as is under DDP.
    """

    def __init__(
        self, dataset: VideoWindowDataset, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        lengths = [video.num_frames for video in dataset.videos]
        load = [0] * self.num_replicas
        owner = {}
        for v in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
            target = min(range(self.num_replicas), key=lambda r: (load[r], r))
            owner[v] = target
            load[target] += lengths[v]
        self.indices = [i for i in range(len(dataset)) if owner[dataset.video_of(i)] == self.rank]
        self.num_samples = len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class Video300VWDataModule(FaceDataModule):
    """300VW: training windows from the ``train`` split, streamed evaluation of ``split``.

    Validation streams ``val_videos``, training videos held out of the training windows (default
    every 10th of the 50: 001 016 031 047 120; metrics ``val/heldout/...``); test and predict
    stream the test scenario ``split`` (``test/<split>/...``), so choosing a checkpoint or a
    sweep point never looks at the test set.

    Evaluation yields one video (or one ``eval_window`` of it) per batch, in order, with
    ``video_id`` and ``frame_index`` so the system carries its state across windows. Under DDP
    (or with explicit ``num_replicas``/``rank``) videos are sharded whole per rank.
    ``cache_dir`` stores decoded frames (decoded once in ``prepare_data``); recommended for
    training on real videos.
    """

    def __init__(
        self,
        root: str,
        split: str = "scenario1",
        image_size: int = 256,
        seq_len: int = 6,
        windows_per_video: int = 50,
        eval_window: int | None = 200,
        smooth_window: int = 1,
        cache_dir: str | None = None,
        cache_format: CacheFormat = "jpg",
        augment: AugmentConfig | None = DEFAULT_AUGMENT,
        degradation: Degradation | None = None,
        eval_degradation: Degradation | None = None,
        batch_size: int = 8,
        num_workers: int = 4,
        pin_memory: bool = True,
        seed: int = 0,
        on_error: OnError = "raise",
        val_videos: Sequence[str] = DEFAULT_VAL_VIDEOS_300VW,
    ) -> None:
        super().__init__()
        if split not in SPLITS_300VW:
            raise ValueError(
                f"unknown 300VW split {split!r}; expected one of {sorted(SPLITS_300VW)}"
            )
        val_videos = tuple(val_videos)
        foreign = [v for v in val_videos if v not in SPLITS_300VW["train"]]
        if foreign or not val_videos or len(set(val_videos)) == len(SPLITS_300VW["train"]):
            raise ValueError(
                f"val_videos must be some (not all) of the 50 300VW training videos, got "
                f"{list(val_videos)}" + (f" ({foreign} are not training videos)" if foreign else "")
            )
        check_ints(
            image_size=image_size,
            seq_len=seq_len,
            windows_per_video=windows_per_video,
            smooth_window=smooth_window,
        )
        counts = {"batch_size": batch_size}
        if eval_window is not None:
            counts["eval_window"] = eval_window
        self.check_loader_settings(num_workers, seed, **counts)
        self.save_hyperparameters()
        self.spec = get_spec("300vw")
        self.skipped: dict[str, list[str]] = {}
        self.train_set: VideoWindowDataset | None = None
        self.val_set: VideoWindowDataset | None = None
        self.eval_set: VideoWindowDataset | None = None

    @property
    def eval_loader_names(self) -> list[str]:
        """Metric prefixes of the evaluation loaders: ``heldout`` (the validation videos) while
        validating, the 300VW scenario otherwise."""
        trainer = self.trainer
        if trainer is not None and (trainer.validating or trainer.sanity_checking):
            return ["heldout"]
        return [self.hparams.split]

    def _store(self) -> FrameStore:
        return FrameStore(self.hparams.cache_dir, self.hparams.cache_format)

    def _videos(
        self, split: str, video_ids: Sequence[str] | None = None, name: str | None = None
    ) -> list[VideoRecord]:
        hp = self.hparams
        videos, problems = load_300vw_split(
            hp.root, split, hp.smooth_window, hp.on_error, video_ids=video_ids
        )
        self.skipped[name or split] = problems
        return videos

    def _eval_set(self, videos: list[VideoRecord]) -> VideoWindowDataset:
        hp = self.hparams
        return VideoWindowDataset(
            videos,
            self.spec,
            train=False,
            image_size=hp.image_size,
            eval_window=hp.eval_window,
            degradation=hp.eval_degradation,
            store=self._store(),
            seed=hp.seed,
        )

    def prepare_data(self) -> None:
        if self.hparams.cache_dir is None:
            return
        store = self._store()
        for split in ("train", self.hparams.split):
            for video_id in SPLITS_300VW[split]:
                path = Path(self.hparams.root) / video_id / "vid.avi"
                if path.is_file():
                    store.ensure_cached(path)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if stage in (None, "fit") and self.train_set is None:
            training = [v for v in SPLITS_300VW["train"] if v not in hp.val_videos]
            self.train_set = VideoWindowDataset(
                self._videos("train", training),
                self.spec,
                train=True,
                image_size=hp.image_size,
                seq_len=hp.seq_len,
                windows_per_video=hp.windows_per_video,
                augment=hp.augment,
                degradation=hp.degradation,
                store=self._store(),
                seed=hp.seed,
            )
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._eval_set(self._videos("train", hp.val_videos, name="val"))
        if stage in (None, "test", "predict") and self.eval_set is None:
            self.eval_set = self._eval_set(self._videos(hp.split))

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        hp = self.hparams
        sampler = EpochSampler(len(self.train_set), shuffle=True, seed=hp.seed)
        return self.loader(self.train_set, hp.batch_size, sampler)

    def eval_dataloader(
        self,
        num_replicas: int | None = None,
        rank: int | None = None,
        dataset: VideoWindowDataset | None = None,
    ) -> DataLoader:
        """Ordered windows of ``dataset`` (default the test scenario), batch size 1; sharded by
        whole video when distributed."""
        dataset = self.eval_set if dataset is None else dataset
        assert dataset is not None, "call setup() first"
        distributed = num_replicas is not None or (
            torch.distributed.is_available() and torch.distributed.is_initialized()
        )
        sampler = VideoShardSampler(dataset, num_replicas, rank) if distributed else None
        # One worker keeps the windows of a video in order and reuses its decoded frames.
        return DataLoader(
            dataset,
            batch_size=1,
            sampler=sampler,
            shuffle=False,
            num_workers=min(self.hparams.num_workers, 1),
            pin_memory=self.hparams.pin_memory and torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup('fit') or setup('validate') first"
        return self.eval_dataloader(dataset=self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader()
