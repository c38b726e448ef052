"""The embedded default's data: synthetic talking heads, fine-tuning windows over the frozen
backbone's heatmaps, and the held-out sets it is evaluated on (`experiments/embedded.yaml`).

`EmbeddedWindowsDataModule` trains on ``windows_per_epoch`` windows per epoch cut from the frozen
backbone's heatmaps of ``train_videos`` generated videos (`HeatmapWindows`). The heatmaps are
computed once, in ``setup("fit")``, by the LightningModule the trainer fits: it must have
``backbone_heatmaps(images)`` (`StableAlignmentModule` does). The data side never imports or
builds a model; it asks the one it serves, so the backbone is configured once, under ``model``.
Validation and test stream whole held-out videos (validation- and test-split seeds), one loader
per set of ``test_sets`` (and a ``still`` set for test), so ``test`` after ``fit`` reports the
NRMSE / MCV / MAV of the raw and the fine-tuned tracks on the demo's evaluation sets.

Everything is generated from (seed, index): reruns give the same data. The training heatmaps of
the last fit are kept in memory and reused by the next fit in the same process when the backbone
checkpoint and the training videos are the same (the points of `lightning-fa sweep-local`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from data_modules.base import EpochSampler, FaceDataModule
from data_modules.synthetic import (
    CHANNELS,
    NUM_LANDMARKS,
    SPEC,
    SPLIT_SEED_OFFSET,
    SyntheticFaceVideos,
    SyntheticVideo,
    project,
)
from data_modules.transforms import Degradation
from lightning_fa.checks import check_ints
from lightning_fa.heatmaps import landmark_patches

# The last training heatmaps computed in this process and what they depend on (`_heatmap_key`):
# the points of a local sweep (`lightning-fa sweep-local`, one process) share one backbone and
# one set of training videos, so only the first point runs the backbone over them.
_HEATMAPS: dict[str, Any] = {}
# (name, degradation preset, head motion, expression motion) of each held-out set (`slow_video`).
HeldOutSet = tuple[str, str, float, float]
HELD_OUT_SETS: tuple[HeldOutSet, ...] = (
    ("degraded", "heavy", 1.0, 1.0),
    ("degraded-slow", "heavy", 0.02, 0.25),
    ("clean", "clean", 1.0, 1.0),
)


# --------------------------------------------------------------------------- videos


def still_video(videos: SyntheticFaceVideos, index: int) -> SyntheticVideo:
    """Video ``index`` frozen at its first pose with open eyes: the face does not move, only the
    per-frame camera degradation changes (the paper's Figure 1 case)."""
    return freeze_video(videos.video(index))


def freeze_video(video: SyntheticVideo) -> SyntheticVideo:
    """``video`` (changed in place and returned) frozen at its first pose with open eyes."""
    params = np.repeat(video.params[:1], len(video), axis=0)
    params[:, CHANNELS.index("blink_left") :] = 0.0
    video.params = params
    video.points = project(video.identity, params, video.image_size)
    video.landmarks = video.points[:, :NUM_LANDMARKS]
    video.motion = np.zeros_like(video.motion)
    return video


def slow_video(
    video: SyntheticVideo, head_motion: float, expression: float = 1.0
) -> SyntheticVideo:
    """``video`` (changed in place and returned) with its head pose (scale, translation,
    rotations) pulled towards its mean pose, every excursion scaled by ``head_motion``, and its
    expressions (mouth, smile, brows) by ``expression``; blinks unchanged. Mean and frames lie in
    the generator's convex admissible sets, so every blend does too."""
    for name, value in (("head_motion", head_motion), ("expression", expression)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    params = video.params.copy()
    blink = CHANNELS.index("blink_left")
    for channels, factor in ((slice(0, CHANNELS.index("pitch") + 1), head_motion),
                             (slice(CHANNELS.index("mouth_open"), blink), expression)):  # fmt: skip
        mean = params[:, channels].mean(axis=0)
        params[:, channels] = mean + factor * (params[:, channels] - mean)
    video.params = params
    video.points = project(video.identity, params, video.image_size)
    video.landmarks = video.points[:, :NUM_LANDMARKS]
    # Motion blur follows the new (slower) motion.
    video.motion = np.gradient(video.landmarks.mean(axis=1), axis=0)
    return video


def render(video: SyntheticVideo) -> tuple[torch.Tensor, np.ndarray]:
    """All frames uint8 (T, 3, H, W) and landmarks (T, L, 2) of a generated video."""
    frames = np.stack([video.frame(t) for t in range(len(video))])
    return torch.from_numpy(frames.transpose(0, 3, 1, 2).copy()), video.landmarks.astype(np.float32)


class _Rendered(Dataset):
    """Renders whole videos in a DataLoader worker while the main process runs the models."""

    def __init__(self, videos: list[SyntheticVideo]) -> None:
        self.videos = videos

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, np.ndarray]:
        return render(self.videos[index])


def rendered(videos: list[SyntheticVideo], num_workers: int) -> DataLoader:
    return DataLoader(
        _Rendered(videos), batch_size=None, num_workers=num_workers, collate_fn=lambda x: x
    )


def training_videos(
    count: int,
    frames: int,
    image_size: int,
    degradations: Sequence[str],
    slowed_fraction: float,
    slowed_motion: Sequence[float],
    seed: int,
    still_fraction: float = 0.0,
) -> list[SyntheticVideo]:
    """The fine-tuning videos: an equal share per degradation preset (training-split seeds),
    ``slowed_fraction`` of them nearly still talking heads (`slow_video` with ``slowed_motion``
    = head pose and expression scales), spread evenly over the list, and ``still_fraction`` of
    them frozen faces (`freeze_video`: only the camera noise changes), taken evenly from the
    videos not slowed."""
    per_set = -(-count // len(degradations))
    videos = []
    for i, degradation in enumerate(degradations):
        ds = SyntheticFaceVideos(
            per_set, frames, image_size=image_size, degradation=degradation, seed=seed + i
        )
        videos += [ds.video(k) for k in range(per_set)]
    videos = videos[:count]
    slowed = round(slowed_fraction * len(videos))
    slowed_indices = np.linspace(0, len(videos) - 1, slowed).round().astype(int)
    for i in slowed_indices:
        videos[i] = slow_video(videos[i], *slowed_motion)
    moving = [i for i in range(len(videos)) if i not in set(slowed_indices.tolist())]
    frozen = min(round(still_fraction * len(videos)), len(moving))
    for j in np.linspace(0, len(moving) - 1, frozen).round().astype(int):
        videos[moving[j]] = freeze_video(videos[moving[j]])
    return videos


def held_out_videos(
    videos: int, frames: int, image_size: int, degradation: str | Degradation, seed: int
) -> SyntheticFaceVideos:
    """Held-out videos: test-split seeds (``seed + 2 * SPLIT_SEED_OFFSET``), disjoint from
    training; validation passes ``seed - SPLIT_SEED_OFFSET`` to get validation-split ones."""
    return SyntheticFaceVideos(
        videos,
        frames,
        image_size=image_size,
        degradation=degradation,
        seed=seed + 2 * SPLIT_SEED_OFFSET,
    )


def held_out_sources(
    sets: Sequence[Sequence[Any]],
    videos: int,
    frames: int,
    image_size: int,
    seed: int,
    still: tuple[int, int, str] | None = None,
) -> dict[str, Callable[[], list[SyntheticVideo]]]:
    """Set name -> the SyntheticVideo objects it streams (lazy: the report re-renders them).

    ``sets``: (name, degradation, head motion, expression motion) rows (`HELD_OUT_SETS`); slowed
    sets get their own faces (seed offset by the set's position). ``still``: (videos, frames,
    degradation) of the ``still`` set of frozen faces (`still_video`), or None.
    """
    sources: dict[str, Callable[[], list[SyntheticVideo]]] = {}
    for i, (name, degradation, head, expression) in enumerate(sets):
        generated = head == expression == 1.0
        ds = held_out_videos(videos, frames, image_size, degradation, seed + (0 if generated else 10 + i))  # fmt: skip
        sources[name] = lambda ds=ds, m=(head, expression), g=generated: [
            ds.video(k) if g else slow_video(ds.video(k), *m) for k in range(len(ds))
        ]
    if still is not None:
        frozen = held_out_videos(still[0], still[1], image_size, still[2], seed + 7)
        sources["still"] = lambda: [still_video(frozen, i) for i in range(len(frozen))]
    return sources


# --------------------------------------------------------------------------- datasets


class HeatmapWindows(Dataset):
    """Training windows over precomputed backbone heatmaps, as sequence-mode batches whose
    ``backbone_heatmaps`` the system uses instead of running the backbone.

    Item ``(epoch, i)`` (or ``i`` for epoch 0) is ``seq_len`` frames of one video, the video, the
    start and the patch shifts drawn from (seed, epoch, i): every epoch sees new windows
    (`EpochSampler` passes the epoch). ``frames`` is an empty (T, 3, 0, 0) tensor: the system
    reads only its batch and time sizes when heatmaps are given. With ``crop``, landmark k's
    heatmaps are cut to the crop x crop patch around its mean ground-truth position in the
    window (shifted by up to 2 pixels) and its landmarks moved into that patch.

    Args:
        heatmaps: (V, F, L, h, w) backbone heatmaps of V videos of F frames.
        landmarks: (V, F, L, 2) ground truth in crop pixels.
        stride: crop pixels per heatmap pixel.
        num_windows: windows per epoch.
    """

    def __init__(
        self,
        heatmaps: torch.Tensor,
        landmarks: torch.Tensor,
        stride: float,
        seq_len: int,
        num_windows: int,
        crop: int | None = None,
        seed: int = 0,
    ) -> None:
        if heatmaps.ndim != 5 or tuple(landmarks.shape) != (*heatmaps.shape[:3], 2):
            raise ValueError(
                "heatmaps must be (V, F, L, h, w) and landmarks (V, F, L, 2); got "
                f"{tuple(heatmaps.shape)} and {tuple(landmarks.shape)}"
            )
        frames, size = heatmaps.shape[1], min(heatmaps.shape[-2:])
        if not 1 <= seq_len <= frames or num_windows < 1:
            raise ValueError(
                f"seq_len must be in 1..{frames} (frames per video) and num_windows >= 1; got "
                f"seq_len={seq_len}, num_windows={num_windows}"
            )
        if crop is not None and not 1 <= crop <= size:
            raise ValueError(f"crop must be in 1..{size} (the heatmap size), got {crop}")
        self.heatmaps, self.landmarks, self.stride = heatmaps, landmarks, stride
        self.seq_len, self.num_windows, self.crop, self.seed = seq_len, num_windows, crop, seed

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if not 0 <= index < self.num_windows:
            raise IndexError(f"index {index} out of range for {self.num_windows} windows")
        rng = np.random.default_rng((self.seed, epoch, index))
        video = int(rng.integers(len(self.heatmaps)))
        start = int(rng.integers(self.heatmaps.shape[1] - self.seq_len + 1))
        window = slice(start, start + self.seq_len)
        heatmaps, landmarks = self.heatmaps[video, window], self.landmarks[video, window]
        if self.crop is not None:
            heatmaps, landmarks = landmark_patches(heatmaps, landmarks, self.stride, self.crop, rng)
        return {
            "frames": torch.zeros((self.seq_len, 3, 0, 0), dtype=torch.uint8),
            "landmarks": landmarks,
            "backbone_heatmaps": heatmaps,
        }


class VideoClips(Dataset):
    """Whole generated videos as sequence-mode samples (frames, landmarks, identity affine, valid,
    inter-ocular norm_size, video_id, frame_index), rendered when read."""

    def __init__(self, source: Callable[[], list[SyntheticVideo]]) -> None:
        self.videos = source()

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        frames, landmarks = render(self.videos[index])
        length = len(frames)
        return {
            "frames": frames,
            "landmarks": torch.from_numpy(landmarks),
            "affine": torch.eye(2, 3).expand(length, 2, 3).clone(),
            "valid": torch.ones(length, dtype=torch.bool),
            "norm_size": torch.from_numpy(SPEC.interocular(landmarks).astype(np.float32)),
            "video_id": torch.tensor(index, dtype=torch.int64),
            "frame_index": torch.arange(length, dtype=torch.int64),
        }


@torch.no_grad()
def video_heatmaps(
    backbone_heatmaps: Callable[[torch.Tensor], torch.Tensor],
    videos: list[SyntheticVideo],
    batch_size: int,
    num_workers: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(V, T, L, h, w) float16 heatmaps of the frozen backbone over whole videos (on the CPU),
    ``batch_size`` frames per backbone call."""
    out = []
    for frames, _ in tqdm(rendered(videos, num_workers), desc="backbone", unit="video"):
        maps = torch.cat([backbone_heatmaps(c.to(device)) for c in frames.split(batch_size)])
        out.append(maps.to("cpu", torch.float16))
    return torch.stack(out)


# --------------------------------------------------------------------------- data module


class EmbeddedWindowsDataModule(FaceDataModule):
    """The embedded default's fine-tuning windows and held-out sets (module docstring).

    Args:
        image_size: frame size (the backbone's input size).
        train_videos / video_frames / degradations: the training videos, an equal share per
            degradation preset.
        slowed_fraction / slowed_motion: share of nearly still talking heads among them and their
            (head pose, expression) motion scales.
        still_fraction: share of frozen faces among them (only the camera noise changes; taken
            from the videos not slowed; 0: none, the embedded default).
        windows_per_epoch / batch_size / seq_len: training windows drawn afresh each epoch.
        crop: cut each landmark's window to a crop x crop patch around it (a landmark-wise
            temporal stage sees each map alone: ~7x fewer pixels per step at 12 of 32); None:
            whole maps.
        heatmap_batch_size: frames per backbone call when the heatmaps are computed.
        val_videos / val_frames: per set of ``test_sets``, on validation-split seeds (0: none).
        test_videos / test_frames / test_sets: the held-out sets (`HELD_OUT_SETS`), test seeds.
        still_videos / still_frames / still_degradation: the frozen-face test set (0: none).
        test_seed: seed of the held-out videos (validation and test).
    """

    spec = SPEC

    def __init__(
        self,
        image_size: int = 128,
        train_videos: int = 32,
        video_frames: int = 90,
        degradations: Sequence[str] = ("mild", "heavy"),
        slowed_fraction: float = 0.5,
        slowed_motion: tuple[float, float] = (0.02, 0.25),
        still_fraction: float = 0.0,
        windows_per_epoch: int = 480,
        batch_size: int = 4,
        seq_len: int = 16,
        crop: int | None = 12,
        seed: int = 100,
        heatmap_batch_size: int = 32,
        num_workers: int = 1,
        val_videos: int = 2,
        val_frames: int = 60,
        test_videos: int = 6,
        test_frames: int = 150,
        test_sets: Sequence[tuple[str, str, float, float]] = HELD_OUT_SETS,
        still_videos: int = 4,
        still_frames: int = 30,
        still_degradation: str = "heavy",
        test_seed: int = 0,
    ) -> None:
        super().__init__()
        check_ints(
            train_videos=train_videos,
            video_frames=video_frames,
            windows_per_epoch=windows_per_epoch,
            batch_size=batch_size,
            seq_len=seq_len,
            heatmap_batch_size=heatmap_batch_size,
            test_videos=test_videos,
            test_frames=test_frames,
            val_frames=val_frames,
            still_frames=still_frames,
        )
        check_ints(32, image_size=image_size)
        check_ints(0, seed=seed, test_seed=test_seed, num_workers=num_workers)
        check_ints(0, val_videos=val_videos, still_videos=still_videos)
        if video_frames < seq_len:
            raise ValueError(f"video_frames ({video_frames}) must be >= seq_len ({seq_len})")
        for name, share in (
            ("slowed_fraction", slowed_fraction),
            ("still_fraction", still_fraction),
        ):
            if not 0.0 <= share <= 1.0:
                raise ValueError(
                    f"{name} is a share of the training videos, in [0, 1]; got {share}"
                )
        if slowed_fraction + still_fraction > 1.0:
            raise ValueError(
                f"slowed_fraction + still_fraction must be <= 1 (shares of the same videos), "
                f"got {slowed_fraction} + {still_fraction}"
            )
        if not degradations or not test_sets:
            raise ValueError("degradations and test_sets must each name at least one entry")
        if crop is not None:
            check_ints(crop=crop)
        for name in [*degradations, still_degradation, *(row[1] for row in test_sets)]:
            Degradation.resolve(name)  # fail at construction, not at the first batch
        names = [row[0] for row in test_sets]
        if len(set(names)) != len(names) or "still" in names:
            raise ValueError(f"test_sets need distinct names other than 'still', got {names}")
        self.save_hyperparameters()
        self.train_set: HeatmapWindows | None = None

    @property
    def eval_loader_names(self) -> list[str]:
        """Metric prefixes of the validation / test loaders, in order."""
        names = [row[0] for row in self.hparams.test_sets]
        testing = self.trainer is not None and self.trainer.testing
        return [*names, "still"] if testing and self.hparams.still_videos else names

    def training_videos(self) -> list[SyntheticVideo]:
        h = self.hparams
        return training_videos(
            h.train_videos,
            h.video_frames,
            h.image_size,
            h.degradations,
            h.slowed_fraction,
            h.slowed_motion,
            h.seed,
            h.still_fraction,
        )

    def held_out(self, split: str) -> dict[str, Callable[[], list[SyntheticVideo]]]:
        """The validation or test sets, by name (test also holds ``still``)."""
        h = self.hparams
        if split == "test":
            still = (
                (h.still_videos, h.still_frames, h.still_degradation) if h.still_videos else None
            )
            return held_out_sources(h.test_sets, h.test_videos, h.test_frames, h.image_size, h.test_seed, still)  # fmt: skip
        return held_out_sources(h.test_sets, h.val_videos, h.val_frames, h.image_size, h.test_seed - SPLIT_SEED_OFFSET)  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        if stage not in ("fit", None) or self.train_set is not None:
            return
        h = self.hparams
        model = self.trainer.lightning_module if self.trainer is not None else None
        if not callable(getattr(model, "backbone_heatmaps", None)):
            raise ValueError(
                "EmbeddedWindowsDataModule trains on the frozen backbone's heatmaps, which the "
                "fitted LightningModule computes: it needs a backbone_heatmaps(images) method "
                "(StableAlignmentModule has one)"
            )
        temporal = getattr(model, "temporal", None)
        if h.crop is not None and getattr(temporal, "landmark_wise", None) is False:
            raise ValueError(
                "data.crop cuts every landmark's heatmap to its own patch, which only a "
                f"landmark_wise temporal stage can train on; got crop={h.crop} with "
                f"{type(temporal).__name__} (landmark_wise=False; set data.init_args.crop=null)"
            )
        videos = self.training_videos()
        landmarks = torch.from_numpy(np.stack([v.landmarks for v in videos]).astype(np.float32))
        key = self._heatmap_key(model)
        if key is not None and _HEATMAPS.get("key") == key:
            heatmaps = _HEATMAPS["heatmaps"]
        else:
            _HEATMAPS.clear()
            heatmaps = video_heatmaps(
                model.backbone_heatmaps, videos, h.heatmap_batch_size, h.num_workers, model.device
            )
            if key is not None:
                _HEATMAPS.update(key=key, heatmaps=heatmaps)
        self.train_set = HeatmapWindows(
            heatmaps, landmarks, model.stride, h.seq_len, h.windows_per_epoch, h.crop, seed=h.seed
        )

    def _heatmap_key(self, model: Any) -> str | None:
        """What the training heatmaps depend on: the backbone (its checkpoint's SHA-256 and
        constructor, `StableAlignmentModule.backbone_reference`) and the training videos. None
        (no reuse) for a backbone without a checkpoint file."""
        reference = getattr(model, "backbone_reference", None) or {}
        if not reference.get("sha256"):
            return None
        h = self.hparams
        videos = ("image_size", "train_videos", "video_frames", "degradations", "slowed_fraction",
                  "slowed_motion", "seed", "heatmap_batch_size")  # fmt: skip
        settings = {name: h[name] for name in videos}
        if h.still_fraction:  # absent at 0, so the default's key (and cache) stays as it was
            settings["still_fraction"] = h.still_fraction
        return json.dumps([reference, settings, str(model.device)], sort_keys=True, default=str)

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        # EpochSampler hands the epoch to the windows, so each epoch draws new ones. They are in
        # memory: batches are slices, no worker needed.
        return DataLoader(
            self.train_set,
            batch_size=h.batch_size,
            sampler=EpochSampler(len(self.train_set), seed=h.seed),
            drop_last=len(self.train_set) >= h.batch_size,
        )

    def _loaders(self, split: str) -> list[DataLoader]:
        # Whole videos one at a time: the temporal state runs through each video in order.
        workers = self.hparams.num_workers
        return [
            DataLoader(VideoClips(source), batch_size=1, num_workers=workers)
            for source in self.held_out(split).values()
        ]

    def val_dataloader(self) -> list[DataLoader]:
        return self._loaders("val") if self.hparams.val_videos else []

    def test_dataloader(self) -> list[DataLoader]:
        return self._loaders("test")
