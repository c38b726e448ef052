"""Learning from unlabelled video: the backbone's own predictions, smoothed offline, are the labels.

For every video (once; cached as .npz keyed by the file's SHA-256 and the settings):
1. dlib's face detector on every frame -> face boxes; their centre and size are smoothed with
   the zero-phase low-pass (`crop_cutoff_hz`); a first backbone pass on crops around them
   (`detector_enlarge` x the box side, shifted down by `box_shift` of the side, since dlib's box
   sits above the face centre) gives rough landmarks;
2. the final crops are framed like `lightning_fa.tracking.StreamingTracker`'s: the box of those
   landmarks (side = max(w, h)), smoothed the same zero-phase way, x `enlarge` (1.25), so the
   ConvLSTM sees faces at the scale and place it will see when tracking; the frozen backbone
   runs on them -> its points in crop pixels (for a coordinate detector such as dlib: the
   detector's own points, from which `render` redraws its heatmaps exactly) and the raw track
   (PDC-decoded, frame pixels).
At setup the raw track is smoothed forward-backward (`zero_phase_smooth`, `cutoff_hz`: no lag)
and mapped into each frame's crop: these pseudo labels are the targets of the Jitter loss.

Batches follow the sequence-mode contract of docs/architecture.md (frames uint8 crops,
landmarks = pseudo labels in crop pixels, affine, valid, norm_size, video_id, frame_index, and
`backbone_heatmaps` rendered from the cached points, so training and validation never run the
slow detector again: only the ConvLSTM costs). Training draws windows of `seq_len` frames;
validation streams each held-out video whole, in consecutive windows of `val_window` frames
(batch size 1) that the module chains by frame_index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data_modules.landmarks import DatasetSpec, get_spec
from lightning_fa.backbones import (
    CoordinateDetectorBackbone,
    create_backbone,
    dlib_face_detector,
)
from lightning_fa.geometry import (
    DEFAULT_ENLARGE,
    crop_affine,
    invert_affine,
    landmarks_box,
    transform_points,
    warp_image,
)
from lightning_fa.heatmaps import augment_patches, decode, heatmap_to_crop, landmark_patches
from lightning_fa.outputs import atomic_output, file_sha256
from lightning_fa.temporal.filters import zero_phase_smooth

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
CACHE_VERSION = 2  # 2: landmark-box framing, crop_points stored
# What every cache entry holds (a coordinate detector adds its own points and confidences).
CACHED_ARRAYS = ("fps", "crops", "affines", "raw", "detected")


def list_videos(videos: str | Path | Sequence[str | Path]) -> list[Path]:
    """A folder (its video files, sorted) or a list of files -> existing video paths."""
    if isinstance(videos, (str, Path)):
        root = Path(videos)
        if root.is_dir():
            found = sorted(p for p in root.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                raise ValueError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in {root}")
            return found
        videos = [root]
    paths = [Path(v) for v in videos]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"video not found: {path}")
    return paths


def read_rgb_frames(path: Path, max_frames: int | None = None):
    """Yield the RGB frames of a video in order (OpenCV, sequential)."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"{path} is not a video OpenCV can decode")
    count = 0
    try:
        while max_frames is None or count < max_frames:
            ok, frame = capture.read()
            if not ok:
                return
            count += 1
            yield np.ascontiguousarray(frame[..., ::-1])
    finally:
        capture.release()


def smooth_boxes(boxes: np.ndarray, fps: float, cutoff_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """Face boxes (T, 4) x1 y1 x2 y2 (NaN rows: no face) -> zero-phase smoothed centres (T, 2)
    and sides (T,); gaps are interpolated."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    series = np.concatenate([centre, side[:, None]], axis=1)[:, None, :]  # (T, 1, 3)
    smooth = zero_phase_smooth(series, cutoff_hz, fps)[:, 0]
    return smooth[:, :2], smooth[:, 2]


def pseudo_labels(raw: np.ndarray, fps: float, cutoff_hz: float) -> np.ndarray:
    """Offline labels from a raw (T, L, 2) frame-pixel track: zero-phase (forward-backward)
    low-pass, so no lag; NaN frames are interpolated."""
    return zero_phase_smooth(np.asarray(raw, dtype=np.float64), cutoff_hz, fps)


@torch.no_grad()
def predict_crops(
    backbone: torch.nn.Module, crops: np.ndarray, batch: int = 16
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Backbone + PDC on uint8 RGB crops (T, H, W, 3) -> (T, L, 2) crop pixels, and for a
    coordinate detector its own outputs (`detector_points` (T, L, 2) crop pixels and, if it
    gives one, `detector_confidence` (T, L)), from which `render` redraws its heatmaps exactly."""
    decoded, outputs = [], {}
    for start in range(0, len(crops), batch):
        images = torch.from_numpy(crops[start : start + batch]).permute(0, 3, 1, 2)
        inputs = backbone.preprocess(images)
        if isinstance(backbone, CoordinateDetectorBackbone):
            # The detector's points, not their decoded heatmaps: PDC on a rendered Gaussian
            # is close to, but not exactly, the point it was drawn from.
            found = backbone.detector(inputs)
            points, confidence = found if isinstance(found, tuple) else (found, None)
            outputs.setdefault("detector_points", []).append(points.float().numpy())
            if confidence is not None:
                outputs.setdefault("detector_confidence", []).append(confidence.float().numpy())
            height, width = (side // backbone.stride for side in inputs.shape[-2:])
            heatmaps = backbone.render(points.float(), height, width, confidence)
        else:
            heatmaps = backbone(inputs).float()
        decoded.append(heatmap_to_crop(decode(heatmaps, "pdc"), backbone.stride).numpy())
    outputs = {name: np.concatenate(parts) for name, parts in outputs.items()}
    return np.concatenate(decoded).astype(np.float64), outputs


def crop_and_predict(
    path: Path,
    backbone: torch.nn.Module,
    centres: np.ndarray,
    sides: np.ndarray,
    image_size: int,
    enlarge: float,
    max_frames: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Crop every frame at (centre, side x enlarge) and run the backbone -> crops (T, S, S, 3),
    affines (T, 2, 3), the decoded points in frame pixels (T, L, 2) and the detector outputs
    (`predict_crops`)."""
    size = (image_size, image_size)
    affines = np.stack([crop_affine(c, s, size, enlarge=enlarge) for c, s in zip(centres, sides)])
    crops = np.stack(
        [warp_image(f, a, size) for f, a in zip(read_rgb_frames(path, max_frames), affines)]
    )
    crop_points, detector_outputs = predict_crops(backbone, crops)
    frame_points = np.stack(
        [transform_points(p, invert_affine(a)) for p, a in zip(crop_points, affines)]
    )
    return crops, affines, frame_points, detector_outputs


def process_video(
    path: Path,
    backbone: torch.nn.Module,
    image_size: int,
    enlarge: float,
    box_shift: float,
    crop_cutoff_hz: float,
    detect_upsample: int = 0,
    max_frames: int | None = None,
    detector_enlarge: float = 1.3,
) -> dict[str, np.ndarray]:
    """Detect, crop with smoothed boxes and run the backbone over one video (see module doc)."""
    capture = cv2.VideoCapture(str(path))
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) or None
    capture.release()
    if total is not None and max_frames is not None:
        total = min(total, max_frames)
    detector = dlib_face_detector()
    boxes = []
    # The face detector on every full frame is the slow part of caching a video.
    frames = read_rgb_frames(path, max_frames)
    for frame in tqdm(frames, total=total, desc=f"faces in {path.name}", unit="frame"):
        faces = detector(frame, detect_upsample)
        if len(faces):
            face = max(faces, key=lambda r: r.area())
            boxes.append([face.left(), face.top(), face.right() + 1, face.bottom() + 1])
        else:
            boxes.append([np.nan] * 4)
    boxes = np.asarray(boxes, dtype=np.float64)
    detected = np.isfinite(boxes).all(axis=1)
    if len(boxes) < 3 or detected.sum() < 2:
        raise ValueError(
            f"{path}: a face was found in {int(detected.sum())} of {len(boxes)} frames"
        )
    # Pass 1: detector boxes place the face roughly.
    centres, sides = smooth_boxes(boxes, fps, crop_cutoff_hz)
    centres = centres + np.stack([np.zeros_like(sides), box_shift * sides], axis=1)
    _, _, first, _ = crop_and_predict(
        path, backbone, centres, sides, image_size, detector_enlarge, max_frames
    )
    # Pass 2: framed like the tracker's crops (box of the landmarks x enlarge), so the model
    # sees faces at the same scale and place in training as when it tracks.
    first[~detected] = np.nan
    landmark_boxes = np.stack([landmarks_box(p) for p in first])
    centres, sides = smooth_boxes(landmark_boxes, fps, crop_cutoff_hz)
    crops, affines, raw, detector_outputs = crop_and_predict(
        path, backbone, centres, sides, image_size, enlarge, max_frames
    )
    raw[~detected] = np.nan  # no face box: the backbone saw an interpolated crop
    return {"fps": np.float64(fps), "crops": crops, "affines": affines, "raw": raw,
            "detected": detected, **detector_outputs}  # fmt: skip


def read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The processed video cached in ``path``, or None after one line on stderr naming the file
    when it cannot be used (truncated by a crash, emptied, written by something else, arrays
    missing or of different lengths): the caller processes the video again and replaces it."""
    try:
        with np.load(path) as stored:
            video = {k: stored[k] for k in stored.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as error:
        problem = f"unreadable ({type(error).__name__}: {error})"
    else:
        missing = [name for name in CACHED_ARRAYS if name not in video]
        lengths = {len(video[name]) for name in CACHED_ARRAYS[1:] if name not in missing}
        if missing:
            problem = f"arrays missing: {', '.join(missing)}"
        elif len(lengths) > 1:
            problem = f"arrays of different lengths {sorted(lengths)}"
        else:
            return video
    print(f"unlabelled cache {path} is {problem}; processing the video again", file=sys.stderr)
    return None


class UnlabelledWindows(Dataset):
    """Windows of consecutive frames of processed videos, as sequence-mode samples.

    `render(points (T, L, 2), height, width, confidence) -> (T, L, h, w)` draws the frozen backbone's
    heatmaps from its cached points (`CoordinateDetectorBackbone.render`); when given, samples
    carry them as `backbone_heatmaps`, so training never runs the slow detector again.
    """

    def __init__(
        self,
        videos: list[dict[str, np.ndarray]],
        windows: list[tuple[int, int, int]],
        spec: DatasetSpec | None,
        id_offset: int = 0,
        render: Callable[..., torch.Tensor] | None = None,
        stride: int = 4,
        patch: int | None = None,
        seed: int = 0,
        augment: bool = False,
    ) -> None:
        if patch is not None and render is None:
            raise ValueError("patch needs the precomputed heatmaps (a render function)")
        if augment and patch is None:
            raise ValueError("augment needs patch (it acts on landmark patches)")
        self.videos = videos
        self.id_offset = id_offset  # keeps validation video ids apart from training ones
        self.windows = windows  # (video index, first frame, length)
        self.spec = spec
        self.render = render
        self.stride = stride
        self.patch = patch
        self.seed = seed
        self.augment = augment

    def __len__(self) -> int:
        return len(self.windows)

    def _norm_size(self, labels: np.ndarray) -> np.ndarray:
        if self.spec is not None and self.spec.norm_indices is not None:
            a, b = self.spec.norm_indices
            return np.linalg.norm(labels[:, a] - labels[:, b], axis=-1)
        extent = labels.max(axis=1) - labels.min(axis=1)
        return np.sqrt(extent[:, 0] * extent[:, 1])

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        index, first, length = self.windows[item]
        video = self.videos[index]
        frames: slice | np.ndarray = slice(first, first + length)  # a view: no copy
        frame_index = torch.arange(first, first + length, dtype=torch.int64)
        # Drawn from torch's generator, which Lightning seeds and DataLoader workers re-seed
        # every epoch: each epoch sees a new augmentation of a window.
        augmentation = (
            np.random.default_rng(int(torch.randint(2**62, ()))) if self.augment else None
        )
        if augmentation is not None and augmentation.random() < 0.5:
            # Backwards in time: the zero-phase pseudo labels stay valid, the motion reverses.
            # An index array (not a negative-step view, which torch.from_numpy refuses).
            frame_index = frame_index.flip(0)
            frames = frame_index.numpy()
        labels = video["labels"][frames]
        # Patches replace what the frames would give (the heatmaps), so they skip the copy.
        crops = video["crops"][frames, :0, :0] if self.patch else video["crops"][frames]
        sample = {
            "frames": torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2),
            "landmarks": torch.from_numpy(labels.astype(np.float32)),
            "affine": torch.from_numpy(video["affines"][frames].astype(np.float32)),
            "valid": torch.from_numpy(video["detected"][frames].copy()),
            "norm_size": torch.from_numpy(self._norm_size(labels).astype(np.float32)),
            "video_id": torch.tensor(self.id_offset + index, dtype=torch.int64),
            "frame_index": frame_index,
        }
        if self.render is not None:
            points = torch.from_numpy(video["detector_points"][frames])
            confidence = video.get("detector_confidence")
            if confidence is not None:
                confidence = torch.from_numpy(confidence[frames])
            height, width = (side // self.stride for side in video["crops"].shape[1:3])
            with torch.no_grad():
                sample["backbone_heatmaps"] = self.render(points, height, width, confidence)
        if self.patch is not None:
            # Each landmark's own patch of its map, the landmarks moved into it.
            sample["backbone_heatmaps"], sample["landmarks"] = landmark_patches(
                sample["backbone_heatmaps"],
                sample["landmarks"],
                self.stride,
                self.patch,
                np.random.default_rng((self.seed, item)),
            )
        if augmentation is not None:
            sample["backbone_heatmaps"], sample["landmarks"] = augment_patches(
                sample["backbone_heatmaps"], sample["landmarks"], self.stride, augmentation
            )
        return sample


class UnlabelledVideoDataModule(L.LightningDataModule):
    """Sequence batches from unlabelled videos with offline-smoothed pseudo labels.

    Args:
        videos: training videos: a folder or a list of files.
        val_videos: held-out videos streamed whole for validation (none: no validation).
        backbone / num_landmarks / backbone_checkpoint / backbone_kwargs: the frozen backbone
            whose predictions become the labels (the one being stabilised).
        cache_dir: where the per-video .npz caches go.
        image_size: crop side (default: the backbone's input size).
        seq_len: frames per training window; window_step: frames between window starts.
        val_window: frames per validation window (consecutive, state carried by the module).
        cutoff_hz: pseudo-label low-pass cutoff; crop_cutoff_hz: crop-box low-pass cutoff.
        enlarge: crop side / side of the landmarks' box (the tracker's framing, default 1.25);
            detector_enlarge / box_shift: the first pass's crop around the smoothed detector box
            (side x detector_enlarge, centre moved down box_shift x side: dlib's box sits high).
        precomputed_heatmaps: deliver `backbone_heatmaps` rendered from the cached points
            (the backbone's output on exactly the delivered crops; needs a backbone with
            `render`, i.e. a coordinate detector such as dlib).
        train_patch: cut each training window's heatmaps to every landmark's own
            train_patch x train_patch patch (`lightning_fa.heatmaps.landmark_patches`) and
            drop its frames: for a landmark-wise ConvLSTM, which sees one map at a time, this
            is the same task on ~(train_patch / heatmap side)^2 of the pixels. Validation
            streams whole maps. Needs precomputed_heatmaps.
        augment: train on random symmetries of the patches (`augment_patches`: mirrors and
            axis swaps, per landmark) and on windows run backwards in time (half of them).
            Needs train_patch.
        max_frames: use at most this many frames of each video (quick runs).
    """

    def __init__(
        self,
        videos: str | list[str],
        val_videos: str | list[str] | None = None,
        backbone: str = "dlib",
        num_landmarks: int = 68,
        backbone_checkpoint: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        cache_dir: str = ".cache/unlabelled",
        image_size: int | None = None,
        seq_len: int = 16,
        window_step: int = 4,
        val_window: int = 50,
        cutoff_hz: float = 3.0,
        crop_cutoff_hz: float = 1.0,
        enlarge: float = DEFAULT_ENLARGE,
        detector_enlarge: float = 1.3,
        box_shift: float = 0.1,
        detect_upsample: int = 0,
        max_frames: int | None = None,
        precomputed_heatmaps: bool = True,
        train_patch: int | None = None,
        augment: bool = False,
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if seq_len < 2 or window_step < 1 or val_window < 2:
            raise ValueError(
                f"need seq_len >= 2, window_step >= 1, val_window >= 2; got {seq_len}, "
                f"{window_step}, {val_window}"
            )
        if train_patch is not None and not precomputed_heatmaps:
            raise ValueError("train_patch needs precomputed_heatmaps: true")
        if augment and train_patch is None:
            raise ValueError("augment needs train_patch (it acts on landmark patches)")
        self.save_hyperparameters()
        self.train_paths = list_videos(videos)
        self.val_paths = list_videos(val_videos) if val_videos else []
        self.spec = get_spec("300w") if num_landmarks == 68 else None
        self.val_loader_names = ["unlabelled"]
        self._backbone: torch.nn.Module | None = None
        self.train_set: UnlabelledWindows | None = None
        self.val_set: UnlabelledWindows | None = None

    @property
    def num_landmarks(self) -> int:
        return self.hparams.num_landmarks

    def _get_backbone(self) -> torch.nn.Module:
        if self._backbone is None:
            hp = self.hparams
            self._backbone = create_backbone(
                hp.backbone, hp.num_landmarks, hp.backbone_checkpoint, **(hp.backbone_kwargs or {})
            ).eval()
        return self._backbone

    def _image_size(self) -> int:
        return self.hparams.image_size or self._get_backbone().input_size[0]

    def cache_path(self, path: Path) -> Path:
        hp = self.hparams
        settings = {
            "version": CACHE_VERSION,
            "backbone": hp.backbone,
            "backbone_kwargs": hp.backbone_kwargs,
            "checkpoint": file_sha256(Path(hp.backbone_checkpoint))
            if hp.backbone_checkpoint
            else None,
            "image_size": hp.image_size,
            "enlarge": hp.enlarge,
            "detector_enlarge": hp.detector_enlarge,
            "box_shift": hp.box_shift,
            "crop_cutoff_hz": hp.crop_cutoff_hz,
            "detect_upsample": hp.detect_upsample,
            "max_frames": hp.max_frames,
        }
        key = hashlib.sha256(
            (file_sha256(path) + json.dumps(settings, sort_keys=True)).encode()
        ).hexdigest()[:20]
        return Path(hp.cache_dir) / f"{path.stem}-{key}.npz"

    def load_video(self, path: Path) -> dict[str, np.ndarray]:
        """The processed video (from the cache when present) with its pseudo labels."""
        hp = self.hparams
        cache = self.cache_path(path)
        video = read_cache(cache) if cache.is_file() else None
        if video is None:
            log.info("processing %s (detector + backbone on every frame)", path)
            video = process_video(
                path,
                self._get_backbone(),
                self._image_size(),
                hp.enlarge,
                hp.box_shift,
                hp.crop_cutoff_hz,
                hp.detect_upsample,
                hp.max_frames,
                hp.detector_enlarge,
            )
            with atomic_output(cache) as partial:
                np.savez_compressed(partial, **video)
        labels = pseudo_labels(video["raw"], float(video["fps"]), hp.cutoff_hz)
        video["labels"] = np.stack(
            [transform_points(p, a) for p, a in zip(labels, video["affines"])]
        )
        video["detected"] = video["detected"] & np.isfinite(video["raw"]).all(axis=(1, 2))
        return video

    def _train_windows(self, videos: list[dict[str, np.ndarray]]) -> list[tuple[int, int, int]]:
        hp = self.hparams
        windows = []
        for i, video in enumerate(videos):
            detected = video["detected"]
            for first in range(0, len(detected) - hp.seq_len + 1, hp.window_step):
                if detected[first : first + hp.seq_len].all():
                    windows.append((i, first, hp.seq_len))
        if not windows:
            raise ValueError(
                f"no window of {hp.seq_len} frames with a face in every frame in "
                f"{[str(p) for p in self.train_paths]}"
            )
        return windows

    def _val_windows(self, videos: list[dict[str, np.ndarray]]) -> list[tuple[int, int, int]]:
        step = self.hparams.val_window
        return [
            (i, first, min(step, len(v["detected"]) - first))
            for i, v in enumerate(videos)
            for first in range(0, len(v["detected"]), step)
        ]

    def _windows(
        self,
        videos: list[dict[str, np.ndarray]],
        windows: list[tuple[int, int, int]],
        offset: int,
        patch: int | None = None,
        augment: bool = False,
    ) -> UnlabelledWindows:
        render, stride = None, 4
        if self.hparams.precomputed_heatmaps:
            backbone = self._get_backbone()
            if not isinstance(backbone, CoordinateDetectorBackbone):
                raise ValueError(
                    f"precomputed_heatmaps needs a coordinate-detector backbone (e.g. dlib); "
                    f"{self.hparams.backbone!r} is not one (set precomputed_heatmaps: false)"
                )
            render, stride = backbone.render, backbone.stride
        return UnlabelledWindows(
            videos, windows, self.spec, offset, render, stride, patch, self.hparams.seed, augment
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            videos = [self.load_video(p) for p in self.train_paths]
            self.train_set = self._windows(
                videos,
                self._train_windows(videos),
                0,
                self.hparams.train_patch,
                self.hparams.augment,
            )
        if self.val_paths and self.val_set is None:
            videos = [self.load_video(p) for p in self.val_paths]
            self.val_set = self._windows(videos, self._val_windows(videos), len(self.train_paths))

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        generator = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(
            self.train_set,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=self.hparams.num_workers,
            drop_last=len(self.train_set) >= self.hparams.batch_size,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=1, shuffle=False)

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()
