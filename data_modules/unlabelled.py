"""Learning from unlabelled video: sequence batches whose labels are the frozen backbone's own
predictions, smoothed offline (`lightning_fa.labelling.PseudoLabeller` makes them, injected).

Batches follow the sequence-mode contract of docs/architecture.md (frames uint8 crops,
landmarks = pseudo labels in crop pixels, affine, valid, norm_size, video_id, frame_index, and
`backbone_heatmaps` rendered from the cached points, so training and validation never run the
slow detector again: only the temporal stage costs). Training draws windows of `seq_len` frames;
validation streams each held-out video whole, in consecutive windows of `val_window` frames
(batch size 1) that the module chains by frame_index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data_modules.base import FaceDataModule
from data_modules.landmarks import DatasetSpec, get_spec
from lightning_fa.heatmaps import augment_patches, landmark_patches

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


class VideoLabeller(Protocol):
    """What the data module needs of its labeller (`lightning_fa.labelling.PseudoLabeller`)."""

    def load(self, path: Path) -> dict[str, np.ndarray]:
        """A processed video: crops, affines, fps, raw track, detected, pseudo labels."""
        ...

    def heatmap_renderer(self) -> tuple[Callable[..., torch.Tensor], int]:
        """``render(points, height, width, confidence)`` of the backbone's heatmaps, stride."""
        ...


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
            return self.spec.interocular(labels)
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


class UnlabelledVideoDataModule(FaceDataModule):
    """Sequence batches from unlabelled videos with offline-smoothed pseudo labels.

    Args:
        videos: training videos: a folder or a list of files.
        labeller: turns each video into crops, the frozen backbone's track and pseudo labels
            (`lightning_fa.labelling.PseudoLabeller`; the CLI links the model's backbone into it).
        val_videos: held-out videos streamed whole for validation (none: no validation).
        num_landmarks: the backbone's landmark count (68: the 300W left/right and normaliser).
        seq_len: frames per training window; window_step: frames between window starts.
        val_window: frames per validation window (consecutive, state carried by the module).
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
    """

    def __init__(
        self,
        videos: str | list[str],
        labeller: VideoLabeller,
        val_videos: str | list[str] | None = None,
        num_landmarks: int = 68,
        seq_len: int = 16,
        window_step: int = 4,
        val_window: int = 50,
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
        self.save_hyperparameters(ignore=["labeller"])
        self.labeller = labeller
        self.train_paths = list_videos(videos)
        self.val_paths = list_videos(val_videos) if val_videos else []
        self.spec = get_spec("300w") if num_landmarks == 68 else None
        self.train_set: UnlabelledWindows | None = None
        self.val_set: UnlabelledWindows | None = None

    @property
    def num_landmarks(self) -> int:
        return self.hparams.num_landmarks

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
            render, stride = self.labeller.heatmap_renderer()
        return UnlabelledWindows(
            videos, windows, self.spec, offset, render, stride, patch, self.hparams.seed, augment
        )

    def check_stage(self, temporal: object) -> None:
        """Refuse per-landmark patches for a stage that needs every landmark's map at once."""
        patch = self.hparams.train_patch
        if patch is not None and getattr(temporal, "landmark_wise", None) is False:
            raise ValueError(
                "data.train_patch cuts every landmark's heatmap to its own patch, which only a "
                f"landmark_wise temporal stage can train on; got train_patch={patch} with "
                f"{type(temporal).__name__} (landmark_wise=False; set "
                "data.init_args.train_patch=null)"
            )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            model = self.trainer.lightning_module if self.trainer is not None else None
            self.check_stage(getattr(model, "temporal", None))
            videos = [self.labeller.load(p) for p in self.train_paths]
            self.train_set = self._windows(
                videos,
                self._train_windows(videos),
                0,
                self.hparams.train_patch,
                self.hparams.augment,
            )
        if self.val_paths and self.val_set is None:
            videos = [self.labeller.load(p) for p in self.val_paths]
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
