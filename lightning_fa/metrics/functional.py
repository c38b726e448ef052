"""Pure metric functions (SPEC 5): accuracy per image / frame, stability per video.

Everything is torch in, torch out, batched over images / frames and landmarks. Units: ``nme``
returns fractions per sample; every other function returns a 0-dim tensor in the unit of SPEC 5
(% for FR, AUC, NRMSE and MCV; pixels^2 for MAV and the error jitter; pixels for Accel; the
``scales`` argument turns pixels into multiples of the given per-video size).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "accel",
    "auc",
    "error_jitter",
    "failure_rate",
    "first_occurrences",
    "mav",
    "mcv",
    "nme",
    "norm_distance",
    "nrmse",
]


def _check_points(name: str, points: Tensor, ndim: int = 3) -> None:
    """Points are a floating (..., L, 2) tensor with `ndim` dimensions."""
    if not isinstance(points, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(points).__name__}")
    if points.ndim != ndim or points.shape[-1] != 2 or not points.is_floating_point():
        layout = "(N, L, 2)" if ndim == 3 else "(T, L, 2)"
        raise ValueError(
            f"{name}: expected a floating tensor of shape {layout}, got {tuple(points.shape)} "
            f"{points.dtype}"
        )


def _check_finite(name: str, values: Tensor) -> None:
    if not torch.isfinite(values).all():
        raise ValueError(f"{name}: contains NaN or inf")


def _check_mask(name: str, mask: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A boolean mask of the given shape (0/1 integers are accepted)."""
    if not isinstance(mask, Tensor) or tuple(mask.shape) != shape:
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{name}: expected a bool tensor of shape {shape}, got {got}")
    return mask.bool()


def norm_distance(target: Tensor, norm_indices: tuple[int, int]) -> Tensor:
    """Distance (N,) between two ground-truth points of each sample (the inter-ocular distance)."""
    _check_points("target", target)
    if len(norm_indices) != 2:
        raise ValueError(f"norm_indices: expected two landmark indices, got {norm_indices!r}")
    num_points = target.shape[1]
    if not all(-num_points <= i < num_points for i in norm_indices):
        raise ValueError(
            f"norm_indices: {tuple(norm_indices)} out of range for {num_points} landmarks"
        )
    first, second = norm_indices
    return (target[:, first] - target[:, second]).norm(dim=-1)


def nme(
    pred: Tensor,
    target: Tensor,
    norm_indices: tuple[int, int] | None = (36, 45),
    box_size: Tensor | None = None,
    visible: Tensor | None = None,
) -> Tensor:
    """Per-sample normalised mean error (N,), as fractions: mean_k ||p_k - g_k|| / d.

    d is `box_size` (N,) when given (AFLW: sqrt(w * h); any per-sample normaliser in the same
    pixels as the points), otherwise the distance between the target points `norm_indices`.
    `visible` (N, L) restricts the mean to the visible points (COFW occlusion, AFLW missing
    points); the targets of invisible points are never read, so they may hold NaN.
    """
    _check_points("pred", pred)
    _check_points("target", target)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    num_samples, num_points = pred.shape[:2]
    if visible is None:
        visible = torch.ones(num_samples, num_points, dtype=torch.bool, device=pred.device)
    visible = _check_mask("visible", visible, (num_samples, num_points))
    if (visible.sum(dim=1) == 0).any():
        raise ValueError("visible: a sample has no visible landmark, its NME is undefined")
    _check_finite("pred", pred)
    _check_finite("target (visible points)", target[visible])

    if box_size is not None:
        if not isinstance(box_size, Tensor) or tuple(box_size.shape) != (num_samples,):
            raise ValueError(f"box_size: expected a tensor of shape ({num_samples},)")
        norm = box_size.to(pred.dtype)
    elif norm_indices is not None:
        norm = norm_distance(target, norm_indices)
    else:
        raise ValueError("nme: give norm_indices or box_size to define the normalising distance")
    _check_finite("normalising distance", norm)
    if (norm <= 0).any():
        raise ValueError("nme: a normalising distance is <= 0 (coincident eye corners or box_size)")

    # where() rather than a product: invisible targets may be NaN and NaN * 0 is NaN.
    errors = torch.where(visible, (pred - target).norm(dim=-1), torch.zeros((), dtype=pred.dtype))
    return errors.sum(dim=1) / visible.sum(dim=1) / norm


def _check_nmes(nmes: Tensor, threshold: float) -> None:
    if not isinstance(nmes, Tensor) or nmes.ndim != 1 or nmes.numel() == 0:
        raise ValueError("nmes: expected a non-empty 1-D tensor of per-sample NMEs (fractions)")
    _check_finite("nmes", nmes)
    if not threshold > 0:
        raise ValueError(f"threshold: expected > 0, got {threshold}")


def failure_rate(nmes: Tensor, threshold: float = 0.10) -> Tensor:
    """FR@threshold in %: the share of samples whose NME (fraction) exceeds the threshold."""
    _check_nmes(nmes, threshold)
    return 100.0 * (nmes > threshold).to(nmes.dtype).mean()


def auc(nmes: Tensor, threshold: float = 0.10) -> Tensor:
    """AUC@threshold in %: the area under the CED curve on [0, threshold], normalised to 1.

    Integrating the step CED(e) = mean_i [nme_i <= e] gives exactly mean_i max(0, tau - nme_i).
    """
    _check_nmes(nmes, threshold)
    # Dividing each term by tau before the mean keeps a perfect score exactly 100 (tau / tau = 1).
    return 100.0 * ((threshold - nmes).clamp(min=0) / threshold).mean()


def nrmse(
    pred: Tensor,
    target: Tensor,
    norm_indices: tuple[int, int] | None = (36, 45),
    box_size: Tensor | None = None,
    visible: Tensor | None = None,
) -> Tensor:
    """NRMSE in % (300VW, following FAB): the per-frame `nme` averaged over all given frames.

    The caller keeps only the evaluated frames (broken annotations removed).
    """
    return 100.0 * nme(pred, target, norm_indices, box_size, visible).mean()


def _check_videos(
    name: str, videos: Sequence[Tensor], min_frames: int, scales: Sequence[float] | Tensor | None
) -> list[Tensor]:
    """Validate a list of (T, L, 2) videos, all with the landmark count of the first, and
    return them divided by their scales."""
    if isinstance(videos, Tensor) or len(videos) == 0:
        raise ValueError(f"{name}: expected a non-empty list of (T, L, 2) tensors")
    for i, video in enumerate(videos):
        _check_points(f"{name}[{i}]", video)
        if video.shape[1] != videos[0].shape[1]:
            raise ValueError(
                f"{name}[{i}]: {video.shape[1]} landmarks, but {name}[0] has "
                f"{videos[0].shape[1]} (every video needs the same landmark count)"
            )
        if video.shape[0] < min_frames:
            raise ValueError(
                f"{name}[{i}]: needs at least {min_frames} frames, got {video.shape[0]}"
            )
        _check_finite(f"{name}[{i}]", video)
    if scales is None:
        return list(videos)
    if len(scales) != len(videos):
        raise ValueError(
            f"scales: expected {len(videos)} values (one per video), got {len(scales)}"
        )
    result = []
    for i, (video, scale) in enumerate(zip(videos, scales)):
        scale = float(scale)
        if not scale > 0:  # also catches NaN
            raise ValueError(f"scales[{i}]: expected a positive size, got {scale}")
        result.append(video / scale)
    return result


def _mean_over_videos(values: list[Tensor]) -> Tensor:
    return torch.stack(values).mean()


def mcv(videos: Sequence[Tensor]) -> Tensor:
    """MCV in % (paper Eq. 9/10): 100 * mean over videos of CVar_i.

    CVar_i = mean over landmarks and axes of std_t (ddof=1) / mean_t of the coordinates.
    Coordinates must be in original-frame pixels: the ratio is scale-free but not
    translation-invariant, so there is no normalised variant.
    """
    cvars = []
    for i, video in enumerate(_check_videos("videos", videos, 2, None)):
        mean = video.mean(dim=0)
        if (mean == 0).any():
            raise ValueError(f"videos[{i}]: a coordinate has mean 0 over time, CVar is undefined")
        cvars.append((video.std(dim=0, correction=1) / mean).mean())
    return 100.0 * _mean_over_videos(cvars)


def _allan(videos: list[Tensor], valid: Sequence[Tensor] | None) -> Tensor:
    """Mean over videos of mean_k sum_t ||u_{t+1,k} - u_{t,k}||^2 / (2 * pairs).

    Only consecutive pairs with both frames valid count; pairs = T - 1 without masks.
    """
    avars = []
    for i, video in enumerate(videos):
        squared_steps = (video[1:] - video[:-1]).pow(2).sum(dim=-1)  # (T-1, L)
        if valid is None:
            pair_ok = torch.ones(video.shape[0] - 1, dtype=torch.bool, device=video.device)
        else:
            frame_ok = valid[i]
            pair_ok = frame_ok[1:] & frame_ok[:-1]
        pairs = int(pair_ok.sum())
        if pairs == 0:
            raise ValueError(
                f"valid[{i}]: no two consecutive valid frames, the jitter is undefined"
            )
        steps = torch.where(pair_ok[:, None], squared_steps, torch.zeros((), dtype=video.dtype))
        avars.append((steps.sum(dim=0) / (2 * pairs)).mean())
    return _mean_over_videos(avars)


def mav(videos: Sequence[Tensor], scales: Sequence[float] | Tensor | None = None) -> Tensor:
    """MAV (paper Eq. 11): mean over videos of the Allan variance, in pixels^2.

    With `scales` (one size per video, e.g. its mean inter-ocular distance) the coordinates are
    divided by it first, giving a unitless value.
    """
    return _allan(_check_videos("videos", videos, 2, scales), None)


def accel(videos: Sequence[Tensor], scales: Sequence[float] | Tensor | None = None) -> Tensor:
    """Mean over videos of the mean ||u_{t+1} - 2 u_t + u_{t-1}|| (pixels, or per `scales`)."""
    values = [
        (video[2:] - 2 * video[1:-1] + video[:-2]).norm(dim=-1).mean()
        for video in _check_videos("videos", videos, 3, scales)
    ]
    return _mean_over_videos(values)


def error_jitter(
    pred_videos: Sequence[Tensor],
    target_videos: Sequence[Tensor],
    valid: Sequence[Tensor] | None = None,
    scales: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """The Allan formula of `mav` applied to the error e_t = u_t - g_t (pixels^2 or per `scales`).

    `valid` (one (T,) bool mask per video) drops frames with broken labels: only consecutive
    pairs of valid frames count, and the targets of invalid frames are never read.
    """
    preds = _check_videos("pred_videos", pred_videos, 2, scales)
    if isinstance(target_videos, Tensor) or len(target_videos) != len(preds):
        raise ValueError(f"target_videos: expected a list of {len(preds)} (T, L, 2) tensors")
    if valid is not None and len(valid) != len(preds):
        raise ValueError(f"valid: expected {len(preds)} masks (one per video), got {len(valid)}")
    masks = []
    errors = []
    for i, (pred, target) in enumerate(zip(pred_videos, target_videos)):
        _check_points(f"target_videos[{i}]", target)
        if target.shape != pred.shape:
            raise ValueError(
                f"target_videos[{i}]: shape {tuple(target.shape)} differs from the prediction's "
                f"{tuple(pred.shape)}"
            )
        mask = torch.ones(pred.shape[0], dtype=torch.bool, device=pred.device)
        if valid is not None:
            mask = _check_mask(f"valid[{i}]", valid[i], (pred.shape[0],))
        _check_finite(f"target_videos[{i}] (valid frames)", target[mask])
        scale = 1.0 if scales is None else float(scales[i])
        # NaN errors of invalid frames are harmless: _allan selects (never multiplies) by mask.
        errors.append(preds[i] - target / scale)
        masks.append(mask)
    return _allan(errors, masks)


def first_occurrences(keys: Tensor) -> Tensor:
    """Indices of the first row of each distinct key, ordered by key (lexicographic).

    keys: (N,) or (N, K) int64, e.g. (video_id, frame_index). Used to drop the duplicates that a
    DistributedSampler pads in, and to make results independent of the order ranks deliver rows.
    """
    if keys.ndim == 1:
        keys = keys[:, None]
    if keys.ndim != 2:
        raise ValueError(f"keys: expected shape (N,) or (N, K), got {tuple(keys.shape)}")
    if keys.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=keys.device)
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    rows = torch.arange(keys.shape[0], device=keys.device)
    first = torch.full((unique.shape[0],), keys.shape[0], dtype=torch.long, device=keys.device)
    return first.scatter_reduce(0, inverse, rows, reduce="amin")
