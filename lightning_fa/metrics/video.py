"""Video metric: NRMSE and stability (MCV, MAV, Accel, error jitter) over whole videos, DDP-safe."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lightning_fa.metrics import functional as F
from lightning_fa.metrics.image import SampleListMetric

_KEYS = (
    "nrmse",
    "mcv",
    "mav",
    "accel",
    "error_jitter",
    "mav_norm",
    "accel_norm",
    "error_jitter_norm",
)


class VideoStability(SampleListMetric):
    """Accuracy and stability of landmark streams, frames gathered from every rank.

    update(pred (N, L, 2), target (N, L, 2), video_id (N,), frame_index (N,), valid (N,) = None,
    norm_size (N,) = None): N frames of any videos in any order, all points in original-frame
    pixels. `valid` False marks a broken annotation: the frame still counts for the prediction
    metrics (mcv, mav, accel: the stream saw it) but not for the label-based ones (nrmse,
    error_jitter). `norm_size` is the per-frame normaliser; by default the distance between the
    target points `norm_indices`. Every frame must have the same L: compute() refuses a mix.

    compute() drops repeated (video_id, frame_index) rows (DistributedSampler padding), orders
    frames by (video_id, frame_index) and returns, in the units of SPEC 5:
    nrmse (%), mcv (%), mav (px^2), accel (px), error_jitter (px^2), and `*_norm` variants of the
    last three on coordinates divided by each video's mean norm_size over its valid frames (MCV is
    scale-free, so it has none). A video enters a metric only if it is long enough for it (2
    frames, accel 3) and, for label-based ones, has valid frames (error_jitter: two consecutive
    ones); a metric no video qualifies for is NaN.
    """

    higher_is_better = False

    def __init__(self, norm_indices: tuple[int, int] = (36, 45), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.norm_indices = tuple(norm_indices)
        for name, dtype in (
            ("video_id", torch.long),
            ("frame_index", torch.long),
            ("pred", None),  # flattened (L * 2) per frame: states stay 1-D, see SampleListMetric
            ("target", None),
            ("valid", torch.bool),
            ("norm_size", None),
            # Per frame: the flattened pred / target states cannot tell 68 from 98 landmarks.
            ("num_landmarks", torch.long),
        ):
            self.add_sample_state(name, dtype)

    def update(
        self,
        pred: Tensor,
        target: Tensor,
        video_id: Tensor,
        frame_index: Tensor,
        valid: Tensor | None = None,
        norm_size: Tensor | None = None,
    ) -> None:
        if pred.ndim != 3 or pred.shape[-1] != 2 or pred.shape != target.shape:
            raise ValueError(
                "pred and target: expected equal shapes (N, L, 2), got "
                f"{tuple(pred.shape)} and {tuple(target.shape)}"
            )
        num_frames = pred.shape[0]
        if valid is None:
            valid = torch.ones(num_frames, dtype=torch.bool, device=pred.device)
        if norm_size is None:
            norm_size = F.norm_distance(target, self.norm_indices)
        for name, value in (
            ("video_id", video_id),
            ("frame_index", frame_index),
            ("valid", valid),
            ("norm_size", norm_size),
        ):
            if not isinstance(value, Tensor) or tuple(value.shape) != (num_frames,):
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{name}: expected shape ({num_frames},), got {got}")
        self.append_sample("video_id", video_id)
        self.append_sample("frame_index", frame_index)
        self.append_sample("pred", pred)
        self.append_sample("target", target)
        self.append_sample("valid", valid)
        self.append_sample("norm_size", norm_size)
        self.append_sample(
            "num_landmarks",
            torch.full((num_frames,), pred.shape[1], dtype=torch.long, device=pred.device),
        )

    def compute(self) -> dict[str, Tensor]:
        video_id = self.sample_state("video_id")
        frame_index = self.sample_state("frame_index")
        rows = F.first_occurrences(torch.stack([video_id, frame_index], dim=1))
        num_frames = video_id.numel()
        landmark_counts = torch.unique(self.sample_state("num_landmarks")).tolist()
        if len(landmark_counts) > 1:
            raise ValueError(
                f"VideoStability: frames with {landmark_counts[0]} and {landmark_counts[1]} "
                "landmarks were given (update calls or ranks mixed them); one metric takes one "
                "landmark count"
            )
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.device)
        if num_frames == 0:
            return dict.fromkeys(_KEYS, nan)
        # float64 for the sums over long videos; states are stored in the metric's dtype.
        pred = self.sample_state("pred").to(torch.float64).reshape(num_frames, -1, 2)[rows]
        target = self.sample_state("target").to(torch.float64).reshape(num_frames, -1, 2)[rows]
        valid = self.sample_state("valid")[rows]
        norm_size = self.sample_state("norm_size").to(torch.float64)[rows]

        # Rows are sorted by (video_id, frame_index): each video is one consecutive run.
        counts = torch.unique_consecutive(video_id[rows], return_counts=True)[1].tolist()
        videos = [
            _Video(*parts)
            for parts in zip(*(x.split(counts) for x in (pred, target, valid, norm_size)))
        ]
        long2 = [v for v in videos if v.pred.shape[0] >= 2]
        long3 = [v for v in videos if v.pred.shape[0] >= 3]
        paired = [v for v in videos if v.has_valid_pair]

        def over(chosen: list[_Video], metric: Callable[[list[_Video]], Tensor]) -> Tensor:
            return metric(chosen) if chosen else nan

        def preds(vs: list[_Video]) -> list[Tensor]:
            return [v.pred for v in vs]

        def scales(vs: list[_Video]) -> list[Tensor]:
            return [v.scale for v in vs]

        def jitter(vs: list[_Video], scaled: bool) -> Tensor:
            return F.error_jitter(
                preds(vs),
                [v.target for v in vs],
                [v.valid for v in vs],
                scales(vs) if scaled else None,
            )

        long2_labelled = [v for v in long2 if v.valid.any()]
        long3_labelled = [v for v in long3 if v.valid.any()]
        return {
            "nrmse": F.nrmse(pred[valid], target[valid], None, norm_size[valid])
            if valid.any()
            else nan,
            "mcv": over(long2, lambda vs: F.mcv(preds(vs))),
            "mav": over(long2, lambda vs: F.mav(preds(vs))),
            "accel": over(long3, lambda vs: F.accel(preds(vs))),
            "error_jitter": over(paired, lambda vs: jitter(vs, scaled=False)),
            "mav_norm": over(long2_labelled, lambda vs: F.mav(preds(vs), scales(vs))),
            "accel_norm": over(long3_labelled, lambda vs: F.accel(preds(vs), scales(vs))),
            "error_jitter_norm": over(paired, lambda vs: jitter(vs, scaled=True)),
        }


class _Video(NamedTuple):
    """One video's frames in order; valid marks usable labels."""

    pred: Tensor
    target: Tensor
    valid: Tensor
    norm_size: Tensor

    @property
    def has_valid_pair(self) -> bool:
        return bool((self.valid[1:] & self.valid[:-1]).any())

    @property
    def scale(self) -> Tensor:
        """The video's mean normaliser over its labelled frames."""
        return self.norm_size[self.valid].mean()
