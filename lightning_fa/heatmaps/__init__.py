"""Heatmap codec: Gaussian targets, decoders (argmax, argmax_quarter, PDC), coordinate transforms.

Conventions (SPEC 1): coordinates are (x, y), 0-based, pixel centres at integers, float, never
truncated. Heatmaps are (..., L, H, W); every function is a batched tensor op that runs on
whatever device its inputs live on.

    encoding.py    Gaussian targets, per-landmark training patches
    decoders.py    argmax, argmax_quarter, pdc, decode (no host syncs off the CPU)
    transforms.py  heatmap <-> crop <-> frame coordinates
    codec.py       HeatmapCodec: one backbone's stride, sigma, decoder and threshold together
"""

from lightning_fa.heatmaps.codec import HeatmapCodec
from lightning_fa.heatmaps.decoders import (
    DECODERS,
    PDC_THRESHOLD,
    argmax,
    argmax_quarter,
    decode,
    pdc,
)
from lightning_fa.heatmaps.encoding import augment_patches, landmark_patches, render_gaussian
from lightning_fa.heatmaps.transforms import (
    apply_affine,
    crop_to_frame,
    crop_to_heatmap,
    frame_to_crop,
    heatmap_to_crop,
    invert_affine,
)

__all__ = [
    "DECODERS",
    "PDC_THRESHOLD",
    "HeatmapCodec",
    "apply_affine",
    "argmax",
    "argmax_quarter",
    "augment_patches",
    "crop_to_frame",
    "crop_to_heatmap",
    "decode",
    "frame_to_crop",
    "heatmap_to_crop",
    "invert_affine",
    "landmark_patches",
    "pdc",
    "render_gaussian",
]
