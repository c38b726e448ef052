"""Encoding: Gaussian heatmap targets at sub-pixel landmarks, and the per-landmark training
patches (windows of the maps around each landmark, with random symmetries)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from lightning_fa.heatmaps.checks import check_coords, coord_dtype
from lightning_fa.heatmaps.transforms import check_stride, crop_to_heatmap, heatmap_to_crop


def render_gaussian(coords: Tensor, height: int, width: int, sigma: float) -> Tensor:
    """Gaussian targets exp(-d^2 / (2 sigma^2)), peak 1 at the exact sub-pixel (x, y).

    coords (..., L, 2) in heatmap pixels -> (..., L, height, width), on coords' device. Built as
    the outer product of two 1-D Gaussians (the 2-D one is separable). A landmark with a
    non-finite coordinate (missing / unlabelled) gets an all-zero map.
    """
    check_coords(coords)
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive; got height={height}, width={width}")
    if not 0 < sigma < math.inf:
        raise ValueError(f"sigma must be positive and finite (heatmap pixels); got {sigma}")
    dtype = coord_dtype(coords.dtype) if coords.is_floating_point() else torch.float32
    coords = coords.to(dtype)
    finite = torch.isfinite(coords).all(-1, keepdim=True)  # (..., L, 1)
    # Zero the coordinates before the exp so that NaNs never enter the graph.
    coords = torch.where(finite, coords, 0.0)
    xs = torch.arange(width, dtype=dtype, device=coords.device)
    ys = torch.arange(height, dtype=dtype, device=coords.device)
    scale = -0.5 / float(sigma) ** 2
    gx = torch.exp(scale * (xs - coords[..., 0:1]) ** 2) * finite  # (..., L, W)
    gy = torch.exp(scale * (ys - coords[..., 1:2]) ** 2)  # (..., L, H)
    return gy.unsqueeze(-1) * gx.unsqueeze(-2)


def landmark_patches(
    heatmaps: Tensor,
    landmarks: Tensor,
    stride: float,
    size: int,
    rng: np.random.Generator | None = None,
    max_shift: int = 2,
) -> tuple[Tensor, Tensor]:
    """Each landmark's own ``size`` x ``size`` window of (T, L, H, W) heatmaps, for training a
    landmark-wise temporal model on a fraction of the pixels.

    Landmark k's window is centred on its mean position over the T frames (``landmarks``
    (T, L, 2), crop pixels), rounded and kept inside the map; with ``rng``, moved by a whole
    number of heatmap pixels drawn from -max_shift..max_shift per axis, so that the peak is not
    always in the middle of its patch.
    Returns the (T, L, size, size) patches and the landmarks in *patch-crop* pixels (the crop
    pixels that the window's heatmap pixels map to), so heatmap_to_crop / crop_to_heatmap keep
    their meaning inside every patch.
    """
    check_stride(stride)
    if heatmaps.ndim != 4 or tuple(landmarks.shape) != (*heatmaps.shape[:2], 2):
        raise ValueError(
            "heatmaps must be (T, L, H, W) and landmarks (T, L, 2); got "
            f"{tuple(heatmaps.shape)} and {tuple(landmarks.shape)}"
        )
    height, width = heatmaps.shape[-2:]
    if not 1 <= size <= min(height, width):
        raise ValueError(f"size must be in 1..{min(height, width)} (the heatmap side), got {size}")
    centre = crop_to_heatmap(landmarks, stride).mean(dim=0)  # (L, 2) x, y
    if rng is not None:
        shift = rng.integers(-max_shift, max_shift + 1, tuple(centre.shape))
        centre = centre + torch.from_numpy(shift).to(centre)
    origin = torch.round(centre - size / 2).long()
    origin[:, 0].clamp_(0, width - size)
    origin[:, 1].clamp_(0, height - size)
    offsets = torch.arange(size, device=heatmaps.device)
    rows = (origin[:, 1, None] + offsets)[:, :, None]  # (L, size, 1)
    cols = (origin[:, 0, None] + offsets)[:, None, :]  # (L, 1, size)
    channels = torch.arange(heatmaps.shape[1], device=heatmaps.device)[:, None, None]
    # Heatmap -> crop is affine with slope `stride`: moving the origin is a plain offset.
    return heatmaps[:, channels, rows, cols], landmarks - stride * origin.to(landmarks.dtype)


def augment_patches(
    patches: Tensor, landmarks: Tensor, stride: float, rng: np.random.Generator
) -> tuple[Tensor, Tensor]:
    """A random symmetry of landmark patches (`landmark_patches`' output), for training a
    landmark-wise temporal model on more varied motion than a few clips hold.

    Each landmark's (T, S, S) sequence gets its own element of the square's 8 symmetries
    (mirror x, mirror y, swap the axes), so one window shows the shared cell eight motion
    directions (a coordinate detector's maps are isotropic Gaussians, so the mirrored sequences
    are as real as the originals). ``landmarks`` (T, L, 2) are patch-crop pixels and move with
    their maps. Returns new tensors; the inputs are not changed.
    """
    check_stride(stride)
    if patches.ndim != 4 or patches.shape[-1] != patches.shape[-2]:
        raise ValueError(f"patches must be (T, L, S, S); got {tuple(patches.shape)}")
    if tuple(landmarks.shape) != (*patches.shape[:2], 2):
        raise ValueError(
            f"landmarks must be (T, L, 2) = {(*patches.shape[:2], 2)}; got {tuple(landmarks.shape)}"
        )
    last = patches.shape[-1] - 1  # a mirror maps heatmap pixel x to last - x
    out, coords = patches.clone(), crop_to_heatmap(landmarks, stride).clone()
    mirror_x, mirror_y, swap = torch.from_numpy(rng.integers(0, 2, (3, patches.shape[1])) == 1)
    out[:, mirror_x] = out[:, mirror_x].flip(-1)
    coords[:, mirror_x, 0] = last - coords[:, mirror_x, 0]
    out[:, mirror_y] = out[:, mirror_y].flip(-2)
    coords[:, mirror_y, 1] = last - coords[:, mirror_y, 1]
    out[:, swap] = out[:, swap].transpose(-1, -2)
    coords[:, swap] = coords[:, swap].flip(-1)
    return out, heatmap_to_crop(coords, stride)
