"""What every data module of the project shares: the properties the systems and the CLI read of
each (``num_landmarks``, linked into the backbone; ``eval_loader_names``, the metric prefixes of
the evaluation loaders), the loader settings (``batch_size``, ``num_workers``, ``pin_memory``,
``seed``) and the epoch-seeded sampler that makes a resumed run replay the same order."""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data_modules.landmarks import DatasetSpec
from lightning_fa.checks import check_ints


class EpochSampler(Sampler[tuple[int, int] | int]):
    """Yields ``(epoch, index)`` so workers can seed each sample from (seed, epoch, index).

    The order is shuffled from (seed, epoch) when ``shuffle``. The epoch advances by one each
    time the sampler is iterated; Lightning's ``set_epoch`` (also used on resume) sets it, so a
    resumed run replays the same order. ``with_epoch=False`` yields bare indices, for datasets
    whose samples do not depend on the epoch.
    """

    def __init__(
        self, num_samples: int, shuffle: bool = True, seed: int = 0, with_epoch: bool = True
    ) -> None:
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.with_epoch = with_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int] | int]:
        epoch = self.epoch
        self.epoch += 1
        order = (
            np.random.default_rng((self.seed, epoch)).permutation(self.num_samples)
            if self.shuffle
            else np.arange(self.num_samples)
        )
        if not self.with_epoch:
            return iter(order.tolist())
        return iter([(epoch, int(i)) for i in order])


class FaceDataModule(L.LightningDataModule):
    """Base of the image, 300VW, synthetic, unlabelled and embedded data modules.

    A subclass sets ``spec`` (its landmark scheme; ``num_landmarks`` follows from it), saves its
    own hyper-parameters (``save_hyperparameters()``: among them ``num_workers`` and, where it
    has one, ``pin_memory``), checks its loader settings with `check_loader_settings` and names
    its evaluation loaders when there are several kinds (default: none, so metrics are prefixed
    ``set0``, ``set1``, ...).
    """

    spec: DatasetSpec | None = None

    @property
    def num_landmarks(self) -> int:
        return self.spec.num_landmarks

    @property
    def eval_loader_names(self) -> list[str]:
        """Metric prefixes of the evaluation loaders, in order."""
        return []

    @staticmethod
    def check_loader_settings(num_workers: int, seed: int, **counts: object) -> None:
        """``counts`` (batch sizes, lengths) positive integers, ``num_workers`` and ``seed`` >= 0."""
        check_ints(**counts)
        check_ints(0, num_workers=num_workers, seed=seed)

    def loader(
        self,
        dataset: Dataset,
        batch_size: int,
        sampler: Sampler | None = None,
        num_workers: int | None = None,
    ) -> DataLoader:
        """A loader over ``dataset`` in ``sampler``'s order (default: in order) with the module's
        workers (kept alive across epochs) and, on a GPU machine, pinned memory."""
        workers = self.hparams.num_workers if num_workers is None else num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=workers,
            pin_memory=self.hparams.get("pin_memory", False) and torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader | list[DataLoader]:
        return self.test_dataloader()
