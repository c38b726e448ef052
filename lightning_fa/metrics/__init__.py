"""Metrics (SPEC 5): pure functions in `functional`, DDP-correct torchmetrics classes."""

from lightning_fa.metrics import functional
from lightning_fa.metrics.image import LandmarkAccuracy, SampleListMetric
from lightning_fa.metrics.video import VideoStability

__all__ = ["LandmarkAccuracy", "SampleListMetric", "VideoStability", "functional"]
