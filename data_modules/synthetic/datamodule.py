"""`SyntheticDataModule`: synthetic faces for backbone pretraining or temporal-stage fine-tuning."""

from __future__ import annotations

from typing import Literal

from torch.utils.data import DataLoader, Dataset

from data_modules.base import EpochSampler, FaceDataModule
from data_modules.synthetic.datasets import (
    SPLIT_SEED_OFFSET,
    GeneratorMode,
    SyntheticFaceImages,
    SyntheticFaceVideos,
    SyntheticVideoWindows,
)
from data_modules.synthetic.face import SPEC
from data_modules.transforms import Degradation
from lightning_fa.checks import check_ints

# --------------------------------------------------------------------------- DataModule


class SyntheticDataModule(FaceDataModule):
    """Synthetic faces for backbone pretraining (``mode="image"``) or ConvLSTM fine-tuning
    (``mode="sequence"``: random windows of ``seq_len`` frames from generated videos).

    Validation / test use held-out seeds (``seed + SPLIT_SEED_OFFSET`` and twice that); in
    sequence mode they stream whole videos with batch size 1. ``eval_degradation`` may list
    several presets (e.g. ["clean", "heavy"]): one val / test dataloader per entry, in order.
    """

    spec = SPEC

    def __init__(
        self,
        mode: Literal["image", "sequence"] = "sequence",
        generator: GeneratorMode = "procedural",
        source_dir: str | None = None,
        image_size: int = 128,
        seq_len: int = 8,
        batch_size: int = 8,
        num_workers: int = 0,
        train_samples: int = 2048,
        train_videos: int = 1024,
        train_video_frames: int = 150,
        val_samples: int = 256,
        val_videos: int = 4,
        val_frames: int = 100,
        test_samples: int = 512,
        test_videos: int = 8,
        test_frames: int = 200,
        degradation: str = "mild",
        eval_degradation: str | list[str] = "mild",
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if mode not in ("image", "sequence"):
            raise ValueError(f"mode must be 'image' or 'sequence', got {mode!r}")
        check_ints(
            seq_len=seq_len,
            batch_size=batch_size,
            train_samples=train_samples,
            train_videos=train_videos,
            train_video_frames=train_video_frames,
            val_samples=val_samples,
            val_videos=val_videos,
            val_frames=val_frames,
            test_samples=test_samples,
            test_videos=test_videos,
            test_frames=test_frames,
        )
        check_ints(32, image_size=image_size)
        self.check_loader_settings(num_workers, seed)
        if mode == "sequence" and seq_len > train_video_frames:
            raise ValueError(
                f"seq_len={seq_len} exceeds train_video_frames={train_video_frames} (the windows "
                "are cut from the training videos)"
            )
        self.save_hyperparameters()
        evals = [eval_degradation] if isinstance(eval_degradation, str) else list(eval_degradation)
        for name in [degradation, *evals]:
            Degradation.resolve(name)  # fail at construction, not at the first batch
        self.eval_degradations = evals

    @property
    def eval_loader_names(self) -> list[str]:
        """Metric prefixes of the evaluation loaders: one per degradation level."""
        return list(self.eval_degradations)

    def _common(self, degradation: str, split: int) -> dict:
        h = self.hparams
        return {
            "image_size": h.image_size,
            "degradation": degradation,
            "seed": h.seed + split * SPLIT_SEED_OFFSET,
            "mode": h.generator,
            "source_dir": h.source_dir,
        }

    def _eval_sets(self, split: int, samples: int, videos: int, frames: int) -> list[Dataset]:
        if self.hparams.mode == "image":
            return [SyntheticFaceImages(samples, **self._common(d, split)) for d in self.eval_degradations]  # fmt: skip
        return [SyntheticFaceVideos(videos, frames, **self._common(d, split)) for d in self.eval_degradations]  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if h.mode == "image":
            self.train_set = SyntheticFaceImages(h.train_samples, **self._common(h.degradation, 0))
        else:
            videos = SyntheticFaceVideos(
                h.train_videos, h.train_video_frames, **self._common(h.degradation, 0)
            )
            self.train_set = SyntheticVideoWindows(videos, h.train_samples, h.seq_len)
        self.val_sets = self._eval_sets(1, h.val_samples, h.val_videos, h.val_frames)
        self.test_sets = self._eval_sets(2, h.test_samples, h.test_videos, h.test_frames)

    def train_dataloader(self) -> DataLoader:
        # Shuffled from (seed, epoch), not from the global RNG, so a resumed run replays the
        # same order (checkpoints do not store RNG states).
        sampler = EpochSampler(len(self.train_set), seed=self.hparams.seed, with_epoch=False)
        return self.loader(self.train_set, self.hparams.batch_size, sampler)

    def _eval_loaders(self, sets: list[Dataset]) -> DataLoader | list[DataLoader]:
        # Whole videos one at a time (the temporal state runs through each video in order).
        batch = self.hparams.batch_size if self.hparams.mode == "image" else 1
        loaders = [self.loader(s, batch) for s in sets]
        return loaders[0] if len(loaders) == 1 else loaders

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._eval_loaders(self.val_sets)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._eval_loaders(self.test_sets)
