"""Options shared by the tracker, its loaders and detectors, and the commands over them: the
values they accept, the model / detector options of the commands (`add_model_options`) and the
checks that raise one clear ValueError naming the option."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

ENGINES = ("torch", "onnx")  # what `loading.load_step` runs the step on
DETECTORS = ("haar", "dlib", "blazeface")  # `detectors.make_detector`; blazeface: extra mediapipe


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options that choose the model and the face detector of a command that tracks video
    (`track`, `evaluate-video`): what `loading.load_step` and `detectors.make_detector` take."""
    parser.add_argument(
        "--checkpoint", type=Path, default=None,
        help="fine-tuned .ckpt (or .onnx with --engine onnx); default with the dlib backbone: "
        "the stage shipped with the package",
    )  # fmt: skip
    parser.add_argument("--backbone", default="dlib", help="backbone name when no checkpoint")
    parser.add_argument(
        "--num-landmarks", type=int, default=None,
        help="landmarks expected (default: the checkpoint's own; 68 for a bare backbone)",
    )  # fmt: skip
    parser.add_argument("--engine", choices=ENGINES, default="torch")
    parser.add_argument("--detector", choices=DETECTORS, default="dlib")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


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
