"""Image accuracy metric (NME, FR, AUC) and the per-sample list-state base that DDP needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from lightning_fa.metrics import functional as F


class SampleListMetric(Metric):
    """A Metric whose states are per-sample 1-D lists gathered with "cat".

    A rank that saw no data holds empty lists; torchmetrics then syncs a float32 placeholder,
    whose dtype breaks the all_gather of integer states. Before syncing we put a typed empty
    tensor in every empty list, so every rank sends the same dtype and number of dimensions
    (states are kept 1-D for that reason: the trailing shape is unknown to an empty rank).
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sample_dtypes: dict[str, torch.dtype | None] = {}

    def add_sample_state(self, name: str, dtype: torch.dtype | None) -> None:
        """A per-sample 1-D list state; dtype None means the metric's float dtype."""
        self.add_state(name, default=[], dist_reduce_fx="cat")
        self._sample_dtypes[name] = dtype

    def append_sample(self, name: str, values: Tensor) -> None:
        dtype = self._sample_dtypes[name] or self.dtype
        getattr(self, name).append(values.detach().reshape(-1).to(dtype=dtype))

    def sample_state(self, name: str) -> Tensor:
        """The concatenated state (synced or local, list or tensor), possibly empty."""
        value = getattr(self, name)
        if isinstance(value, list):
            dtype = self._sample_dtypes[name] or self.dtype
            value = [torch.zeros(0, dtype=dtype, device=self.device), *value]
        return dim_zero_cat(value)

    def sync(self, *args: Any, **kwargs: Any) -> None:
        for name, dtype in self._sample_dtypes.items():
            if isinstance(getattr(self, name), list) and not getattr(self, name):
                empty = torch.zeros(0, dtype=dtype or self.dtype, device=self.device)
                setattr(self, name, [empty])
        super().sync(*args, **kwargs)


def _threshold_key(threshold: float) -> str:
    """'0.10' for 0.1 (the usual way of writing FR@0.10), more digits only when needed."""
    return f"{threshold:.2f}" if round(threshold, 2) == threshold else f"{threshold:g}"


class LandmarkAccuracy(SampleListMetric):
    """NME, FR@tau and AUC@tau (all in %) over every sample seen, on all ranks.

    update(pred (N, L, 2), target (N, L, 2), box_size (N,) = None, visible (N, L) = None,
    index (N,) = None). With `index` (dataset sample ids) a sample delivered twice, e.g. padded
    in by a DistributedSampler, counts once. compute() -> {"nme", "fr@0.08", "auc@0.08", ...};
    NaN values when no sample was seen.
    """

    higher_is_better = None  # NME and FR: lower; AUC: higher.

    def __init__(
        self,
        norm_indices: tuple[int, int] | None = (36, 45),
        thresholds: Sequence[float] = (0.08, 0.10),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not thresholds or any(not t > 0 for t in thresholds):
            raise ValueError(f"thresholds: expected positive NME fractions, got {thresholds!r}")
        if len({_threshold_key(t) for t in thresholds}) != len(thresholds):
            raise ValueError(f"thresholds: expected distinct values, got {thresholds!r}")
        self.norm_indices = None if norm_indices is None else tuple(norm_indices)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.add_sample_state("nmes", None)
        self.add_sample_state("index", torch.long)

    def update(
        self,
        pred: Tensor,
        target: Tensor,
        box_size: Tensor | None = None,
        visible: Tensor | None = None,
        index: Tensor | None = None,
    ) -> None:
        nmes = F.nme(pred, target, self.norm_indices, box_size, visible)
        if index is None:
            index = torch.full_like(nmes, -1, dtype=torch.long)  # -1: no id, never deduplicated
        elif tuple(index.shape) != tuple(nmes.shape):
            raise ValueError(f"index: expected shape {tuple(nmes.shape)}, got {tuple(index.shape)}")
        self.append_sample("nmes", nmes)
        self.append_sample("index", index)

    def compute(self) -> dict[str, Tensor]:
        nmes = self.sample_state("nmes")
        index = self.sample_state("index")
        with_id = index >= 0
        keep = F.first_occurrences(index[with_id])
        nmes = torch.cat([nmes[~with_id], nmes[with_id][keep]])
        names = ["nme"] + [
            f"{kind}@{_threshold_key(t)}" for t in self.thresholds for kind in ("fr", "auc")
        ]
        if nmes.numel() == 0:
            nan = torch.tensor(float("nan"), dtype=self.dtype, device=self.device)
            return dict.fromkeys(names, nan)
        result = {"nme": 100.0 * nmes.mean()}
        for t in self.thresholds:
            result[f"fr@{_threshold_key(t)}"] = F.failure_rate(nmes, t)
            result[f"auc@{_threshold_key(t)}"] = F.auc(nmes, t)
        return result
