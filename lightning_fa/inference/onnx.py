"""The per-frame step (`lightning_fa.inference.step`) as one module with the state as flat
tensors, its ONNX export and an onnxruntime runner with the same interface.

    lightning-fa export CKPT --out model.onnx [--opset 17]   (lightning_fa.commands.export)

The exported graph takes `images` uint8 (B, 3, H, W) RGB crops and the temporal stage's state as
plain tensors named by the stage (the ConvLSTM's `h0, c0, h1, c1, ...`, (B, hidden, h, w)) and
returns `coords`, `raw_coords` (B, L, 2) crop pixels, `confidence` (B,), the new state (the same
names with `_out`: `h0_out, c0_out, ...`) and, last, `landmark_scores` (B, L): each raw heatmap's
peak in [0, 1] (graphs exported before it existed end with the state; `OnnxStep` runs both). A
new track feeds zeros (`init_state`), which is what `state=None` means in PyTorch.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_fa.inference.state import flatten_state, state_sizes, unflatten_state
from lightning_fa.inference.step import FrameStep

DEFAULT_OPSET = 17
# CastLike (the PDC threshold's symbolic) needs 15; the TorchScript exporter stops at 20.
OPSETS = range(15, 21)


def landmark_peaks(heatmaps: Tensor) -> Tensor:
    """Each landmark's heatmap peak (B, L) from heatmaps (B, L, h, w), unclipped."""
    return heatmaps.amax(dim=(-2, -1))


def landmark_scores(heatmaps: Tensor) -> Tensor:
    """Per-landmark confidence (B, L): each map's peak clipped to [0, 1] (a Gaussian target peaks
    at 1, an empty map at 0)."""
    return landmark_peaks(heatmaps).clamp(0.0, 1.0)


def heatmap_confidence(heatmaps: Tensor) -> Tensor:
    """Per-face confidence (B,) from heatmaps (B, L, h, w): the mean over landmarks of each map's
    peak, clipped to [0, 1]."""
    return landmark_peaks(heatmaps).mean(dim=-1).clamp(0.0, 1.0)


def _fallback_state_names(sizes: list[int]) -> list[str]:
    """h0, c0, h1, c1, ... for (h, c) pairs; state<k>_<j> for groups of another size."""
    names: list[str] = []
    for k, size in enumerate(sizes):
        names += [f"h{k}", f"c{k}"] if size == 2 else [f"state{k}_{j}" for j in range(size)]
    return names


class StreamingStep(nn.Module):
    """One frame of a `StableAlignmentModule` with the state as explicit flat tensors.

    `forward(images, *state) -> (coords, raw_coords, confidence, *new_state, landmark_scores)`;
    both scores are those of the raw backbone heatmaps (`heatmap_confidence`, `landmark_scores`).
    The per-landmark scores come last so that the outputs before them keep their positions.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        backbone = module.backbone
        self.input_size = tuple(backbone.input_size)
        self.num_landmarks = int(backbone.num_landmarks)
        self.heatmap_size = (
            self.input_size[0] // backbone.stride,
            self.input_size[1] // backbone.stride,
        )
        # How the flat state tensors group (layers' (h, c), the blend's group).
        self.state_sizes = state_sizes(module.temporal.init_state(1, 1, 1))
        # Every TemporalStage names its state tensors; a stage without `state_names` gets generic ones.
        if hasattr(module.temporal, "state_names"):
            self.state_names = module.temporal.state_names()
        else:
            self.state_names = _fallback_state_names(self.state_sizes)

    def init_state(self, batch: int, device: torch.device | str | None = None) -> list[Tensor]:
        """Zero state (flat) for `batch` new tracks."""
        return flatten_state(self.module.temporal.init_state(batch, *self.heatmap_size, device))

    @torch.no_grad()
    def forward(self, images: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        # The step holds no weights of its own (the traced ones stay the module's): built per call.
        step = FrameStep(self.module.backbone, self.module.temporal, self.module.codec)
        out = step(images, unflatten_state(state, self.state_sizes))
        return (
            out.coords,
            out.raw_coords,
            heatmap_confidence(out.raw_heatmaps),
            *flatten_state(out.state),
            landmark_scores(out.raw_heatmaps),
        )


def _threshold_symbolic(g: Any, x: Any, threshold: Any, value: Any) -> Any:
    """ONNX for `F.threshold` (x > t ? x : value), which PDC uses and the TorchScript exporter
    only knows for t = 0: Where(Greater(x, t), x, value)."""
    t = g.op("CastLike", threshold, x)
    return g.op("Where", g.op("Greater", x, t), x, g.op("CastLike", value, x))


def check_opset(opset: int, name: str = "opset") -> None:
    if opset not in OPSETS:
        raise ValueError(f"{name} must be {OPSETS.start}..{OPSETS.stop - 1}, got {opset}")


def export_onnx(module: nn.Module, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export the streaming step of `module` (a StableAlignmentModule) to ONNX at `path`.

    The batch dimension (number of faces) is dynamic; the crop size is the backbone's input_size.
    """
    path = Path(path)
    check_opset(opset)
    torch.onnx.register_custom_op_symbolic("aten::threshold", _threshold_symbolic, opset)
    step = StreamingStep(module).eval()
    height, width = step.input_size
    images = torch.zeros(1, 3, height, width, dtype=torch.uint8)
    state = step.init_state(1)
    inputs = ["images", *step.state_names]
    outputs = [
        "coords",
        "raw_coords",
        "confidence",
        *(f"{n}_out" for n in step.state_names),
        "landmark_scores",
    ]
    with warnings.catch_warnings():
        # The trace fixes shapes and the PDC threshold constant; that is what we export.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            step,
            (images, *state),
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in inputs + outputs},
            opset_version=opset,
            dynamo=False,
        )
    return path


class OnnxStep:
    """Runs an exported step with onnxruntime; same call and `init_state` as `StreamingStep`
    (numpy in and out)."""

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise ValueError(f"cannot load ONNX model {path}: {error}") from error
        inputs = self.session.get_inputs()
        if not inputs or inputs[0].name != "images":
            raise ValueError(f"{path} is not a lightning-fa streaming step (no 'images' input)")
        self.input_names = [i.name for i in inputs]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_size = tuple(int(v) for v in inputs[0].shape[2:])
        self.state_shapes = [tuple(int(v) for v in i.shape[1:]) for i in inputs[1:]]
        self.num_landmarks = int(self.session.get_outputs()[0].shape[1])

    def init_state(self, batch: int, device: Any = None) -> list[np.ndarray]:
        return [np.zeros((batch, *shape), dtype=np.float32) for shape in self.state_shapes]

    def __call__(self, images: np.ndarray | Tensor, *state: np.ndarray) -> tuple[np.ndarray, ...]:
        if isinstance(images, Tensor):
            images = images.cpu().numpy()
        feed = {"images": np.ascontiguousarray(images, dtype=np.uint8)}
        for name, value in zip(self.input_names[1:], state):
            feed[name] = np.ascontiguousarray(
                value.cpu().numpy() if isinstance(value, Tensor) else value, dtype=np.float32
            )
        return tuple(self.session.run(self.output_names, feed))
