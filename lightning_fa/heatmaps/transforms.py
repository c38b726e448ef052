"""Coordinate transforms: heatmap pixels <-> crop pixels <-> frame pixels (batched, exportable).

Heatmap -> crop: x_crop = (x_hm + 0.5) * stride - 0.5 (pixel centres align). Crop <-> frame goes
through a sample's `affine` (2, 3), the matrix mapping frame -> crop coordinates.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_fa.heatmaps.checks import check_coords, tracing


def check_stride(stride: float) -> None:
    if not stride > 0:
        raise ValueError(f"stride must be positive; got {stride}")


def heatmap_to_crop(coords: Tensor, stride: float) -> Tensor:
    """Heatmap pixels -> crop pixels: x_crop = (x_hm + 0.5) * stride - 0.5 (pixel centres align)."""
    check_stride(stride)
    return (coords + 0.5) * stride - 0.5


def crop_to_heatmap(coords: Tensor, stride: float) -> Tensor:
    """Crop pixels -> heatmap pixels, the inverse of heatmap_to_crop."""
    check_stride(stride)
    return (coords + 0.5) / stride - 0.5


def _check_affine(matrix: Tensor, name: str = "matrix") -> None:
    if matrix.ndim < 2 or tuple(matrix.shape[-2:]) != (2, 3):
        raise ValueError(f"{name} must have shape (..., 2, 3); got {tuple(matrix.shape)}")


def apply_affine(coords: Tensor, matrix: Tensor) -> Tensor:
    """Points (..., L, 2) mapped by (..., 2, 3) matrices: p' = M[:, :2] @ p + M[:, 2]."""
    check_coords(coords)
    _check_affine(matrix)
    linear = matrix[..., :2].transpose(-1, -2).to(coords.dtype)
    return coords @ linear + matrix[..., 2].unsqueeze(-2).to(coords.dtype)


def invert_affine(matrix: Tensor) -> Tensor:
    """Inverse of (..., 2, 3) affine matrices (closed-form 2x2 inverse, batched, exportable)."""
    _check_affine(matrix)
    a, b, tx = matrix[..., 0, 0], matrix[..., 0, 1], matrix[..., 0, 2]
    c, d, ty = matrix[..., 1, 0], matrix[..., 1, 1], matrix[..., 1, 2]
    det = a * d - b * c
    if not tracing() and not (det != 0).all():
        raise ValueError(f"affine matrices of shape {tuple(matrix.shape)} include a singular one")
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    row0 = torch.stack((ia, ib, -(ia * tx + ib * ty)), -1)
    row1 = torch.stack((ic, id_, -(ic * tx + id_ * ty)), -1)
    return torch.stack((row0, row1), -2)


def frame_to_crop(coords: Tensor, affine: Tensor) -> Tensor:
    """Frame pixels -> crop pixels through a sample's `affine` (which maps frame -> crop)."""
    return apply_affine(coords, affine)


def crop_to_frame(coords: Tensor, affine: Tensor) -> Tensor:
    """Crop pixels -> frame pixels: applies the inverse of the frame -> crop `affine`."""
    return apply_affine(coords, invert_affine(affine))
