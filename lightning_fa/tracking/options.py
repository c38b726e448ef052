"""Option checks shared by the tracker, its loaders and detectors, and the commands over them:
one clear ValueError naming the option."""

from __future__ import annotations

import torch


def check_fraction(value: float, what: str) -> None:
    """A number in [0, 1] (NaN refused)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be a number in [0, 1], got {value}")


def check_device(device: str, what: str = "--device") -> None:
    """Refuse a device this torch cannot use before any model is built on it."""
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"{what} {device!r} is not a device (expected cpu or cuda[:N])") from error
    if parsed.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ValueError(f"{what} {device}: CUDA is not available to this torch; use --device cpu")
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"{what} {device}: no such GPU ({torch.cuda.device_count()} visible)")
