"""`HeatmapCodec`: one backbone's heatmap settings (stride, sigma, decoder, threshold), so that
training targets, the loss's decoding and every inference path read them from one place."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from lightning_fa.heatmaps.decoders import PDC_THRESHOLD, decode
from lightning_fa.heatmaps.encoding import render_gaussian
from lightning_fa.heatmaps.transforms import crop_to_heatmap, heatmap_to_crop


@dataclass(frozen=True)
class HeatmapCodec:
    """Landmarks (crop pixels) <-> heatmaps of a backbone with output stride ``stride``.

    Args:
        stride: crop pixels per heatmap pixel (the backbone's).
        sigma: width of the Gaussian targets in heatmap pixels.
        decoder / threshold / relative: how `decode` reads a heatmap (`heatmaps.decode`).
    """

    stride: float
    sigma: float = 1.0
    decoder: str = "pdc"
    threshold: float = PDC_THRESHOLD
    relative: bool = False

    def encode(self, landmarks: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Crop-pixel landmarks (..., L, 2) -> (Gaussian targets (..., L, height, width), the
        landmarks in heatmap pixels)."""
        coords = crop_to_heatmap(landmarks, self.stride)
        return render_gaussian(coords, height, width, self.sigma), coords

    def locate(self, heatmaps: Tensor) -> Tensor:
        """Heatmaps (..., L, h, w) -> heatmap-pixel (x, y) (..., L, 2) with this decoder."""
        return decode(
            heatmaps, method=self.decoder, threshold=self.threshold, relative=self.relative
        )

    def decode(self, heatmaps: Tensor) -> Tensor:
        """Heatmaps (..., L, h, w) -> crop-pixel (x, y) (..., L, 2)."""
        return heatmap_to_crop(self.locate(heatmaps), self.stride)
