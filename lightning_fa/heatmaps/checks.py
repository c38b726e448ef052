"""Checks and dtype rules shared by the heatmap modules (encoding, decoders, transforms)."""

from __future__ import annotations

import torch
from torch import Tensor


def coord_dtype(dtype: torch.dtype) -> torch.dtype:
    """Coordinates are float32 at least: half precision cannot hold centres of mass accurately."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def tracing() -> bool:
    """True under jit.trace / ONNX export / torch.compile, which cannot follow data-dependent
    Python branches (value checks, the skipped argmax fallback) nor export every op."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def check_coords(coords: Tensor, name: str = "coords") -> None:
    if coords.ndim < 2 or coords.shape[-1] != 2:
        raise ValueError(
            f"{name} must have shape (..., L, 2) with (x, y) last; got {tuple(coords.shape)}"
        )
