"""300VW videos: per-frame face crops, training windows, streamed evaluation, DDP sharding (the
files, frames and annotations: `data_modules.video_files`).

Frames with broken annotations (the project's resource list) stay in the stream with
``valid=False``; their crop box is interpolated from the valid neighbours. ``frame_index`` is the
0-based position in the video (annotation number - 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from data_modules.base import EpochSampler, FaceDataModule
from data_modules.formats import OnError
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
from data_modules.video_files import (
    DEFAULT_VAL_VIDEOS_300VW,
    SPLITS_300VW,
    CacheFormat,
    FrameStore,
    VideoRecord,
    load_300vw_split,
)
from lightning_fa.checks import check_ints
from lightning_fa.geometry import (
    DEFAULT_ENLARGE,
    landmarks_to_crop,
)

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
