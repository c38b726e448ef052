"""Decoders: heatmaps (..., L, H, W) -> heatmap-pixel (x, y) (argmax, argmax_quarter, PDC).

Conventions (SPEC 1): coordinates are (x, y), 0-based, pixel centres at integers, float, never
truncated. Every function here is a batched tensor op that runs on whatever device its inputs
live on. The decoders never read a value back to the host except in CPU eager mode (no host
syncs on a GPU, one graph under torch.compile): there NaN / +inf maps raise ValueError;
compiled, traced or on an accelerator those landmarks decode to NaN.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_fa.heatmaps.checks import coord_dtype, tracing

DECODERS = ("pdc", "argmax", "argmax_quarter")
# The PDC threshold (paper Algorithm 1) that every default decoder setting uses.
PDC_THRESHOLD = 0.2


def _can_read_back(tensor: Tensor) -> bool:
    """True where a decoder may branch on a value it computed: eager mode on the CPU. Under a
    trace or torch.compile the branch cannot be followed (a graph break, or one outcome baked
    in), and on an accelerator reading a value back stalls the host until the device has
    caught up, every step."""
    return tensor.device.type == "cpu" and not tracing()


def _check_heatmaps(heatmaps: Tensor) -> None:
    """Shape and dtype of (..., L, H, W) heatmaps; raises ValueError."""
    if not isinstance(heatmaps, Tensor):
        raise ValueError(
            f"heatmaps must be a torch.Tensor of shape (..., L, H, W); got {type(heatmaps)}"
        )
    if heatmaps.ndim < 3:
        raise ValueError(
            f"heatmaps must have shape (..., L, H, W) (at least 3 dims); got {tuple(heatmaps.shape)}"
        )
    if heatmaps.shape[-1] == 0 or heatmaps.shape[-2] == 0:
        raise ValueError(
            f"heatmaps must have non-empty spatial dims (H, W); got {tuple(heatmaps.shape)}"
        )
    if not heatmaps.is_floating_point():
        raise ValueError(f"heatmaps must be floating point; got dtype {heatmaps.dtype}")


def _check_finite(heatmaps: Tensor, per_map: Tensor, coords: Tensor) -> Tensor:
    """Decoded `coords` (..., L, 2), checked against `per_map` (..., L), a reduction the decoder
    computed anyway that turns NaN or inf when a NaN or +inf enters the map (peak value,
    thresholded mass, per-map max); reusing it avoids a separate pass over the heatmaps.

    In CPU eager mode NaN / +inf input raises ValueError. Where no value may be read back
    (`_can_read_back`: compiled, traced, on an accelerator) the check cannot raise, so those
    landmarks decode to NaN instead, without a host sync. An isolated -inf is below any peak
    or threshold and decodes like a very low value.
    """
    finite = torch.isfinite(per_map)
    if not _can_read_back(heatmaps):
        return torch.where(finite[..., None], coords, float("nan"))
    if finite.all():
        return coords
    bad = int((~torch.isfinite(heatmaps)).sum())
    raise ValueError(
        f"heatmaps of shape {tuple(heatmaps.shape)} must be finite; found {bad} NaN/inf values"
    )


def _argmax_xy(heatmaps: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Integer peak (x, y) as int64 tensors (..., L), the flat index into H * W and the peak
    values (..., L); argmax picks a NaN as the peak, so the peak values reveal NaN / +inf input."""
    width = heatmaps.shape[-1]
    flat = heatmaps.flatten(-2)
    flat_index = flat.argmax(-1)
    peak = flat.gather(-1, flat_index[..., None]).squeeze(-1)
    return flat_index % width, flat_index // width, flat_index, peak


def argmax(heatmaps: Tensor) -> Tensor:
    """Integer peak location of (..., L, H, W) heatmaps -> (..., L, 2) float (x, y)."""
    _check_heatmaps(heatmaps)
    x, y, _, peak = _argmax_xy(heatmaps)
    return _check_finite(heatmaps, peak, torch.stack((x, y), -1).to(coord_dtype(heatmaps.dtype)))


def argmax_quarter(heatmaps: Tensor) -> Tensor:
    """Integer peak moved 0.25 px toward the higher neighbour on each axis (HRNet / mmpose).

    An axis is refined only where the peak has both neighbours on it (not on the border); equal
    neighbours leave it in place. The result stays float (HRNet truncates; we do not).
    """
    _check_heatmaps(heatmaps)
    height, width = heatmaps.shape[-2:]
    x, y, flat_index, peak = _argmax_xy(heatmaps)
    flat = heatmaps.flatten(-2)
    dtype = coord_dtype(heatmaps.dtype)

    def step(index_step: int, position: Tensor, size: int) -> Tensor:
        interior = (position > 0) & (position < size - 1)
        # Clamp keeps border gathers in range; their result is masked out by `interior`.
        after = flat.gather(-1, (flat_index + index_step).clamp(max=flat.shape[-1] - 1)[..., None])
        before = flat.gather(-1, (flat_index - index_step).clamp(min=0)[..., None])
        # Compare instead of sign(after - before): two -inf neighbours must mean "no step", not
        # a NaN difference whose sign is left to the backend.
        direction = (after > before).to(dtype) - (after < before).to(dtype)
        return direction.squeeze(-1) * interior

    refined_x = x.to(dtype) + 0.25 * step(1, x, width)
    refined_y = y.to(dtype) + 0.25 * step(width, y, height)
    return _check_finite(heatmaps, peak, torch.stack((refined_x, refined_y), -1))


_scratch = threading.local()


def _output_buffer(like: Tensor) -> Tensor | None:
    """A reusable buffer for the thresholded copy when no graph is needed, on CPU.

    A fresh buffer the size of a (64, 68, 64, 64) batch (71 MB) is mapped and page-faulted on
    every call, which costs more than the thresholding itself; CUDA's caching allocator already
    reuses memory. One buffer per thread and mode, replaced when the shape or dtype changes.
    """
    if like.device.type != "cpu" or (torch.is_grad_enabled() and like.requires_grad):
        return None
    # A buffer made under inference mode cannot be written outside it (and vice versa is fine,
    # but keep one per mode so alternating validation and training never reallocates).
    name = "inference" if torch.is_inference_mode_enabled() else "normal"
    buffer = getattr(_scratch, name, None)
    if buffer is None or buffer.shape != like.shape or buffer.dtype != like.dtype:
        buffer = torch.empty_like(like, memory_format=torch.contiguous_format)
        setattr(_scratch, name, buffer)
    return buffer


def _threshold_below(heatmaps: Tensor, threshold: float) -> Tensor:
    """Copy of heatmaps with every value < threshold set to 0 (values == threshold survive)."""
    if tracing():  # ONNX has no non-zero threshold op; where() exports everywhere
        # "< threshold" is false for NaN, which so stays and reaches the mass, as below.
        return torch.where(heatmaps < threshold, 0.0, heatmaps)
    # F.threshold keeps x > t in one kernel and one output (where() also allocates a mask: ~2x
    # slower on CPU); stepping t down by one ulp of the heatmaps' dtype (float32 or float64,
    # see pdc) turns its strict ">" into Algorithm 1's ">=". NumPy does the step on the host.
    ulp_dtype = np.float32 if heatmaps.dtype == torch.float32 else np.float64
    just_below = float(np.nextafter(ulp_dtype(threshold), ulp_dtype(-np.inf)))
    buffer = _output_buffer(heatmaps)
    if buffer is None:
        return F.threshold(heatmaps, just_below, 0.0)
    return torch.threshold(heatmaps.contiguous(), just_below, 0.0, out=buffer)


def _check_threshold(threshold: float) -> None:
    # A plain float check: a tensor op here would sync with the device on every decode.
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number; got {threshold!r}")


def pdc(
    heatmaps: Tensor,
    threshold: float = PDC_THRESHOLD,
    relative: bool = False,
    return_valid: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Probability Density Centralization (paper Algorithm 1), 0-based: (..., L, H, W) -> (..., L, 2).

    Values < threshold are zeroed (relative=True: threshold * per-map max), then the centre of
    mass is taken through the row / column marginals. Where nothing positive survives the
    threshold the landmark falls back to argmax; return_valid=True also returns the (..., L)
    bool mask, True where PDC was used. Differentiable w.r.t. the heatmaps (the threshold mask
    is a constant).
    """
    _check_threshold(threshold)
    _check_heatmaps(heatmaps)
    heatmaps = heatmaps.to(coord_dtype(heatmaps.dtype))
    height, width = heatmaps.shape[-2:]
    if relative:
        peak = heatmaps.detach().amax((-2, -1), keepdim=True)
        kept = torch.where(heatmaps >= threshold * peak, heatmaps, 0.0)
    else:
        kept = _threshold_below(heatmaps, threshold)
    column_mass = kept.sum(-2)  # (..., L, W)
    row_mass = kept.sum(-1)  # (..., L, H)
    mass = row_mass.sum(-1)
    # The threshold keeps NaN and +inf, so they reach the mass; relative=True compares with a
    # NaN peak (always False) instead, and the peak shows them.
    per_map = peak[..., 0, 0] if relative else mass
    valid = mass > 0
    # The weighted sums run on the small marginals in float64 (float32 loses ~1e-5 px at x ~ 64;
    # MPS has no float64 and keeps the input precision).
    exact = torch.float32 if kept.device.type == "mps" else torch.float64
    xs = torch.arange(width, dtype=exact, device=kept.device)
    ys = torch.arange(height, dtype=exact, device=kept.device)
    # Dividing by 1 where invalid keeps inf/NaN out of the (discarded) branch and its gradient.
    safe_mass = torch.where(valid, mass, 1.0).to(exact)
    centre = torch.stack(
        ((column_mass.to(exact) * xs).sum(-1), (row_mass.to(exact) * ys).sum(-1)), -1
    )
    centre = (centre / safe_mass[..., None]).to(kept.dtype)
    # The argmax fallback costs a full pass. In CPU eager mode skip it when every landmark kept
    # some mass; elsewhere it always runs (branch-free: no host sync, and torch.compile can
    # fuse its reduction with the ones above).
    if not _can_read_back(heatmaps) or not valid.all():
        x, y, _, _ = _argmax_xy(heatmaps)
        fallback = torch.stack((x, y), -1).to(centre.dtype)
        centre = torch.where(valid[..., None], centre, fallback)
    centre = _check_finite(heatmaps, per_map, centre)
    return (centre, valid) if return_valid else centre


def decode(
    heatmaps: Tensor,
    method: str = "pdc",
    threshold: float = PDC_THRESHOLD,
    relative: bool = False,
) -> Tensor:
    """Heatmaps (..., L, H, W) -> (..., L, 2) heatmap-pixel (x, y) with the named decoder."""
    _check_threshold(threshold)  # also for the decoders that ignore it: the setting is wrong
    if method == "pdc":
        return pdc(heatmaps, threshold=threshold, relative=relative)
    if method == "argmax":
        return argmax(heatmaps)
    if method == "argmax_quarter":
        return argmax_quarter(heatmaps)
    raise ValueError(f"decode method must be one of {DECODERS}; got {method!r}")
