"""Generated videos (`SyntheticVideo`: exact landmarks up front, frames rendered on demand) and the
datasets over them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from data_modules.synthetic.degradation import apply_degradation
from data_modules.synthetic.face import (
    _C,
    MEAN_DEPTH,
    MEAN_SHAPE,
    NUM_LANDMARKS,
    SPEC,
    FaceIdentity,
    expression_fields,
    project,
    sample_identity,
)
from data_modules.synthetic.motion import PROCEDURAL_RANGES, WARP_RANGES, sample_trajectory
from data_modules.synthetic.rendering import make_background, render_face
from data_modules.synthetic.stills import StillSources, piecewise_affine_warp, similarity_transform
from data_modules.transforms import Degradation, flip_landmarks, to_chw_tensor
from lightning_fa.checks import check_ints

# --------------------------------------------------------------------------- videos


GeneratorMode = Literal["procedural", "warp"]


class SyntheticVideo:
    """One generated video: exact landmarks of every frame up front, frames rendered on demand.

    key: integers that seed everything (video-level draws from ``key + (0,)``, frame ``t``'s
    degradation from ``key + (1, t)``), so a frame is the same whichever clip asks for it.
    """

    def __init__(
        self,
        key: tuple[int, ...],
        num_frames: int,
        image_size: int,
        degradation: Degradation,
        sources: StillSources | None = None,
    ) -> None:
        self.key, self.image_size, self.degradation = key, image_size, degradation
        rng = np.random.default_rng((*key, 0))
        if sources is None:
            ranges = PROCEDURAL_RANGES
            self.identity = sample_identity(rng)
            self.background = make_background(rng, image_size)
        else:
            ranges = WARP_RANGES
            image, points = sources.load(int(rng.integers(len(sources))), 0.5 * image_size)
            if rng.uniform() < 0.5:
                image = image[:, ::-1]
                points = flip_landmarks(points, image.shape[1], SPEC.flip_permutation)
            self.source_image, self.source_points = image, points
            lm = MEAN_SHAPE[:NUM_LANDMARKS]
            to_canonical = similarity_transform(points, lm)
            shape = points @ to_canonical[:, :2].T + to_canonical[:, 2]
            self.identity = FaceIdentity(
                shape, MEAN_DEPTH[:NUM_LANDMARKS].copy(), expression_fields(shape)
            )
        radius = self.identity.radius(ranges.expression_max())
        self.params = sample_trajectory(rng, num_frames, image_size, radius, ranges)
        self.points = project(self.identity, self.params, image_size)
        self.landmarks = self.points[:, :NUM_LANDMARKS]
        centre = self.landmarks.mean(axis=1)
        self.motion = np.gradient(centre, axis=0) if num_frames > 1 else np.zeros_like(centre)

    def __len__(self) -> int:
        return len(self.params)

    def render_clean(self, t: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Frame t before degradation, and the moving layer's coverage (None: whole frame)."""
        if self.identity.appearance is None:
            image = piecewise_affine_warp(
                self.source_image, self.source_points, self.landmarks[t], self.image_size
            )
            return image, None
        scale = float(self.params[t, _C["scale"]])
        return render_face(self.background, self.points[t], self.identity.appearance, scale)

    def frame(self, t: int) -> np.ndarray:
        """Frame t, (H, W, 3) uint8 RGB, degraded."""
        image, coverage = self.render_clean(t)
        background = None if coverage is None else self.background
        rng = np.random.default_rng((*self.key, 1, t))
        return apply_degradation(image, self.degradation, rng, self.motion[t], background, coverage)


_VIDEO_STREAM, _IMAGE_STREAM, _WINDOW_STREAM = 0, 1, 2
# Held-out splits use these seed offsets (val: seed + 1e6, test: seed + 2e6).
SPLIT_SEED_OFFSET = 1_000_000


class _Generated(Dataset):
    """Shared configuration of the synthetic datasets."""

    def __init__(
        self,
        count: int,
        image_size: int,
        degradation: str | Degradation,
        seed: int,
        mode: GeneratorMode,
        source_dir: str | Path | None,
    ) -> None:
        check_ints(count=count)
        check_ints(32, image_size=image_size)
        check_ints(0, seed=seed)
        if mode not in ("procedural", "warp"):
            raise ValueError(f"mode must be 'procedural' or 'warp', got {mode!r}")
        if (mode == "warp") != (source_dir is not None):
            raise ValueError(
                f"mode='warp' needs a source_dir of image + .pts pairs and 'procedural' takes none; "
                f"got mode={mode!r}, source_dir={source_dir!r}"
            )
        self.count, self.image_size, self.seed, self.mode = count, image_size, seed, mode
        self.degradation = Degradation.resolve(degradation)
        self.sources = StillSources(source_dir) if source_dir is not None else None

    def __len__(self) -> int:
        return self.count

    def _check_index(self, index: int) -> int:
        if not -self.count <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} items")
        return index % self.count


class SyntheticFaceVideos(_Generated):
    """``num_videos`` synthetic videos of ``num_frames`` frames as sequence-mode samples.

    Item i is video i whole: frames uint8 (T, 3, H, W) RGB, landmarks float32 (T, 68, 2),
    affine identity (T, 2, 3) (the frame is the crop), valid all True, norm_size inter-ocular
    distance per frame, video_id, frame_index. Use ``clip`` for a window of a video.
    """

    def __init__(
        self,
        num_videos: int,
        num_frames: int,
        image_size: int = 128,
        degradation: str | Degradation = "mild",
        seed: int = 0,
        mode: GeneratorMode = "procedural",
        source_dir: str | Path | None = None,
    ) -> None:
        super().__init__(num_videos, image_size, degradation, seed, mode, source_dir)
        check_ints(num_frames=num_frames)
        self.num_frames = num_frames

    def video(self, index: int) -> SyntheticVideo:
        index = self._check_index(index)
        return SyntheticVideo(
            (self.seed, _VIDEO_STREAM, index),
            self.num_frames,
            self.image_size,
            self.degradation,
            self.sources,
        )

    def clip(self, index: int, start: int = 0, length: int | None = None) -> dict:
        """Frames start .. start + length - 1 of video ``index`` (rendering only those)."""
        length = self.num_frames - start if length is None else length
        if start < 0 or length < 1 or start + length > self.num_frames:
            raise ValueError(
                f"clip [{start}, {start + length}) outside the video's 0..{self.num_frames} frames"
            )
        video = self.video(index)
        frames = np.stack([video.frame(t) for t in range(start, start + length)])
        landmarks = video.landmarks[start : start + length].astype(np.float32)
        return {
            "frames": torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))),
            "landmarks": torch.from_numpy(landmarks),
            "affine": torch.eye(2, 3).expand(length, 2, 3).clone(),
            "valid": torch.ones(length, dtype=torch.bool),
            "norm_size": torch.from_numpy(SPEC.interocular(landmarks).astype(np.float32)),
            "video_id": torch.tensor(self._check_index(index), dtype=torch.int64),
            "frame_index": torch.arange(start, start + length, dtype=torch.int64),
        }

    def __getitem__(self, index: int) -> dict:
        return self.clip(index)


class SyntheticVideoWindows(Dataset):
    """Training windows: item i is ``seq_len`` consecutive frames of a video, the video and the
    start both drawn from (seed, i) (deterministic per index, so workers agree)."""

    def __init__(self, videos: SyntheticFaceVideos, num_windows: int, seq_len: int) -> None:
        check_ints(num_windows=num_windows, seq_len=seq_len)
        if seq_len > videos.num_frames:
            raise ValueError(f"seq_len {seq_len} exceeds the videos' {videos.num_frames} frames")
        self.videos, self.num_windows, self.seq_len = videos, num_windows, seq_len

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_windows:
            raise IndexError(f"index {index} out of range for {self.num_windows} windows")
        rng = np.random.default_rng((self.videos.seed, _WINDOW_STREAM, index))
        video = int(rng.integers(len(self.videos)))
        start = int(rng.integers(self.videos.num_frames - self.seq_len + 1))
        return self.videos.clip(video, start, self.seq_len)


class SyntheticFaceImages(_Generated):
    """``num_images`` random synthetic faces as image-mode samples (backbone pretraining).

    Each is the middle frame of its own 3-frame clip, so motion blur follows a real motion.
    """

    def __init__(
        self,
        num_images: int,
        image_size: int = 128,
        degradation: str | Degradation = "mild",
        seed: int = 0,
        mode: GeneratorMode = "procedural",
        source_dir: str | Path | None = None,
    ) -> None:
        super().__init__(num_images, image_size, degradation, seed, mode, source_dir)

    def __getitem__(self, index: int) -> dict:
        index = self._check_index(index)
        key = (self.seed, _IMAGE_STREAM, index)
        video = SyntheticVideo(key, 3, self.image_size, self.degradation, self.sources)
        landmarks = video.landmarks[1].astype(np.float32)
        return {
            "image": to_chw_tensor(video.frame(1)),
            "landmarks": torch.from_numpy(landmarks),
            "affine": torch.eye(2, 3),
            "visible": torch.ones(NUM_LANDMARKS, dtype=torch.bool),
            "norm_size": torch.tensor(float(SPEC.interocular(landmarks)), dtype=torch.float32),
            "index": torch.tensor(index, dtype=torch.int64),
        }
