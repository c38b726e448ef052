"""Pseudo-labelling of unlabelled video: the frozen backbone's own predictions, smoothed offline,
become the labels (`data_modules.unlabelled` turns them into training windows).

For every video (once; cached as .npz keyed by the file's SHA-256 and the settings):
1. dlib's face detector on every frame -> face boxes; their centre and size are smoothed with
   the zero-phase low-pass (`crop_cutoff_hz`); a first backbone pass on crops around them
   (`detector_enlarge` x the box side, shifted down by `box_shift` of the side, since dlib's box
   sits above the face centre) gives rough landmarks;
2. the final crops are framed like `tracking.tracker.StreamingTracker`'s: the box of those
   landmarks (side = max(w, h)), smoothed the same zero-phase way, x `enlarge` (1.25), so the
   temporal stage sees faces at the scale and place it will see when tracking; the frozen
   backbone runs on them -> its points in crop pixels (for a coordinate detector such as dlib:
   the detector's own points, from which `render` redraws its heatmaps exactly) and the raw track
   (PDC-decoded, frame pixels).
When a video is loaded the raw track is smoothed forward-backward (`zero_phase_smooth`,
`cutoff_hz`: no lag) and mapped into each frame's crop: these pseudo labels are the targets of
the Jitter loss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from lightning_fa.backbones import (
    Backbone,
    CoordinateDetectorBackbone,
    create_backbone,
    dlib_face_detector,
    load_checkpoint,
)
from lightning_fa.geometry import (
    DEFAULT_ENLARGE,
    crop_affine,
    invert_affine,
    landmarks_box,
    transform_points,
    warp_image,
)
from lightning_fa.heatmaps import HeatmapCodec
from lightning_fa.outputs import atomic_output, file_sha256
from lightning_fa.temporal.filters import zero_phase_smooth

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: landmark-box framing, crop_points stored
# What every cache entry holds (a coordinate detector adds its own points and confidences).
CACHED_ARRAYS = ("fps", "crops", "affines", "raw", "detected")


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
    codec = HeatmapCodec(stride=backbone.stride)  # PDC at the default threshold
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
        decoded.append(codec.decode(heatmaps).numpy())
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


class PseudoLabeller:
    """Processes videos into crops, the frozen backbone's track and its pseudo labels, cached.

    Args:
        backbone: the frozen backbone whose predictions become the labels (the one being
            stabilised; the CLI links the model's backbone here). None: dlib's 68 points.
        backbone_checkpoint: weights loaded into ``backbone`` (linked from the model's).
        cache_dir: where the per-video .npz caches go.
        image_size: crop side (default: the backbone's input size).
        cutoff_hz: pseudo-label low-pass cutoff; crop_cutoff_hz: crop-box low-pass cutoff.
        enlarge: crop side / side of the landmarks' box (the tracker's framing, default 1.25);
            detector_enlarge / box_shift: the first pass's crop around the smoothed detector box
            (side x detector_enlarge, centre moved down box_shift x side: dlib's box sits high).
        detect_upsample: dlib detector upsampling (finds smaller faces, slower).
        max_frames: use at most this many frames of each video (quick runs).
    """

    def __init__(
        self,
        backbone: Backbone | None = None,
        backbone_checkpoint: str | None = None,
        cache_dir: str = ".cache/unlabelled",
        image_size: int | None = None,
        cutoff_hz: float = 3.0,
        crop_cutoff_hz: float = 1.0,
        enlarge: float = DEFAULT_ENLARGE,
        detector_enlarge: float = 1.3,
        box_shift: float = 0.1,
        detect_upsample: int = 0,
        max_frames: int | None = None,
    ) -> None:
        self._backbone = backbone
        self._loaded = False  # backbone_checkpoint not yet read into the backbone
        self.backbone_checkpoint = backbone_checkpoint
        self.cache_dir = Path(cache_dir)
        self.image_size = image_size
        self.cutoff_hz = cutoff_hz
        self.crop_cutoff_hz = crop_cutoff_hz
        self.enlarge = enlarge
        self.detector_enlarge = detector_enlarge
        self.box_shift = box_shift
        self.detect_upsample = detect_upsample
        self.max_frames = max_frames
        # What the cached arrays depend on besides the video (read before any model is built).
        self.settings = {
            "version": CACHE_VERSION,
            "backbone": getattr(backbone, "spec", type(backbone).__qualname__)
            if backbone is not None
            else "dlib",
            "checkpoint": file_sha256(Path(backbone_checkpoint)) if backbone_checkpoint else None,
            "image_size": image_size,
            "enlarge": enlarge,
            "detector_enlarge": detector_enlarge,
            "box_shift": box_shift,
            "crop_cutoff_hz": crop_cutoff_hz,
            "detect_upsample": detect_upsample,
            "max_frames": max_frames,
        }

    def _get_backbone(self) -> torch.nn.Module:
        """The frozen backbone, built (dlib) and given its checkpoint on first use."""
        if self._backbone is None:
            self._backbone = create_backbone("dlib", 68)
        if not self._loaded:
            if self.backbone_checkpoint is not None:
                load_checkpoint(self._backbone, self.backbone_checkpoint)
            self._backbone.eval()
            self._loaded = True
        return self._backbone

    def cache_path(self, path: Path) -> Path:
        key = hashlib.sha256(
            (file_sha256(path) + json.dumps(self.settings, sort_keys=True, default=str)).encode()
        ).hexdigest()[:20]
        return self.cache_dir / f"{path.stem}-{key}.npz"

    def load(self, path: Path) -> dict[str, np.ndarray]:
        """The processed video (from the cache when present) with its pseudo labels in crop
        pixels (``labels``); ``detected`` is False where no face or no finite track was found."""
        cache = self.cache_path(path)
        video = read_cache(cache) if cache.is_file() else None
        if video is None:
            log.info("processing %s (detector + backbone on every frame)", path)
            backbone = self._get_backbone()
            video = process_video(
                path,
                backbone,
                self.image_size or backbone.input_size[0],
                self.enlarge,
                self.box_shift,
                self.crop_cutoff_hz,
                self.detect_upsample,
                self.max_frames,
                self.detector_enlarge,
            )
            with atomic_output(cache) as partial:
                np.savez_compressed(partial, **video)
        labels = pseudo_labels(video["raw"], float(video["fps"]), self.cutoff_hz)
        video["labels"] = np.stack(
            [transform_points(p, a) for p, a in zip(labels, video["affines"])]
        )
        video["detected"] = video["detected"] & np.isfinite(video["raw"]).all(axis=(1, 2))
        return video

    def heatmap_renderer(self) -> tuple[Callable[..., torch.Tensor], int]:
        """``render(points, height, width, confidence)`` redrawing the backbone's heatmaps from
        its cached points, and its stride; only a coordinate detector (dlib) has one."""
        backbone = self._get_backbone()
        if not isinstance(backbone, CoordinateDetectorBackbone):
            raise ValueError(
                f"precomputed_heatmaps needs a coordinate-detector backbone (e.g. dlib); "
                f"{type(backbone).__name__} is not one (set precomputed_heatmaps: false)"
            )
        return backbone.render, backbone.stride
