"""The per-frame step the tracker runs (`load_step`: a checkpoint, the shipped stage or a bare
backbone, on PyTorch or ONNX Runtime) and the checks that refuse an untrained model."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch

from lightning_fa.checks import check_ints
from lightning_fa.heatmaps import PDC_THRESHOLD, pdc
from lightning_fa.tracking.options import ENGINES, check_device
from lightning_fa.tracking.shipped import default_stage, load_stage_file


def load_step(
    checkpoint: str | Path | None = None,
    backbone: str = "dlib",
    engine: str = "torch",
    num_landmarks: int | None = None,
    device: str = "cpu",
    allow_untrained: bool = True,
) -> Any:
    """The per-frame step: `StreamingStep` (PyTorch) or `OnnxStep` (onnxruntime).

    `checkpoint`: a fine-tuned StableAlignmentModule (.ckpt) or, with engine "onnx", an exported
    .onnx file (a .ckpt is exported to a temporary file first). Without a checkpoint the dlib
    backbone runs under the shipped trained stage (`lightning_fa.tracking.shipped`), any other
    backbone under an untrained temporal stage (the identity at initialisation) and its own random
    weights.
    `num_landmarks`: the count the caller expects (None: the checkpoint's own, 68 for a bare
    backbone); a model with another count is refused, naming both.
    `allow_untrained=False` refuses a backbone with random weights and a stage that is still the
    identity (an exported .onnx graph is not inspected).
    """
    from lightning_fa.inference.onnx import OnnxStep, StreamingStep, export_onnx

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    check_ints(need=">= 1", none_allowed=True, **{"--num-landmarks": num_landmarks})
    check_device(device)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    module = None
    if engine == "onnx" and checkpoint is not None and Path(checkpoint).suffix == ".onnx":
        step = OnnxStep(checkpoint)
    else:
        module = _load_module(checkpoint, backbone, num_landmarks or 68)
        if engine == "onnx":
            # Their points come from numpy / C++ code: a trace would freeze one frame's points.
            if type(module.backbone).__name__ in ("DlibBackbone", "MediaPipeFaceMesh"):
                raise ValueError(
                    "--engine onnx needs a PyTorch backbone; dlib and the MediaPipe mesh "
                    "cannot be exported"
                )
            path = Path(tempfile.mkdtemp(prefix="lightning_fa_")) / "step.onnx"
            step = OnnxStep(export_onnx(module, path))
        else:
            step = StreamingStep(module).eval().to(device)
    if num_landmarks is not None and step.num_landmarks != num_landmarks:
        source = checkpoint if checkpoint is not None else f"backbone {backbone!r}"
        raise ValueError(
            f"{source} predicts {step.num_landmarks} landmarks, but --num-landmarks is "
            f"{num_landmarks}; drop the option or use a {num_landmarks}-point model"
        )
    reason = untrained_reason(module, checkpoint, backbone) if module is not None else None
    if reason is not None and not allow_untrained:
        raise ValueError(
            f"{reason}, so its landmarks mean nothing; pass a fine-tuned --checkpoint, or "
            "--allow-untrained to run it anyway"
        )
    return step


def _load_module(checkpoint: str | Path | None, backbone: str, num_landmarks: int) -> Any:
    from lightning_fa.backbones import create_backbone
    from lightning_fa.systems.finetune import StableAlignmentModule

    if checkpoint is not None:
        return StableAlignmentModule.from_checkpoint(checkpoint)
    stage_file = default_stage(checkpoint, backbone)
    if stage_file is not None:
        return load_stage_file(stage_file)
    return StableAlignmentModule(backbone=create_backbone(backbone, num_landmarks)).eval()


def untrained_reason(module: Any, checkpoint: str | Path | None, backbone: str) -> str | None:
    """Why `module`'s landmarks are meaningless, or None: a backbone built without a checkpoint
    that has weights (so they are random), or a temporal stage that is still the identity."""
    if checkpoint is None and next(iter(module.backbone.state_dict()), None) is not None:
        return f"--backbone {backbone} without --checkpoint has random weights"
    if is_identity_stage(module.temporal, module.backbone.num_landmarks):
        source = checkpoint if checkpoint is not None else f"--backbone {backbone}"
        return f"{source}: the stabiliser is untrained (the identity: it returns the raw maps)"
    return None


@torch.no_grad()
def is_identity_stage(stage: torch.nn.Module, num_landmarks: int, frames: int = 3) -> bool:
    """True when `stage` changes nothing over a few frames of random maps with the state
    carried: what every stage of the contract does before training. A stage that renders its
    own maps (`FaceMotionStage`) is the identity on the decoded landmarks, so the maps are
    compared as PDC reads them, at the stage's own threshold where it has one. A still hold
    (`FaceMotionStage(hold_threshold=...)`) has no parameters and holds even untrained, so the
    stage is judged without it: what training changes is its filter."""
    if getattr(stage, "hold", None) is not None:
        stage = copy.copy(stage)  # shares the parameters; only the copy loses its hold
        stage.hold = None
    generator = torch.Generator().manual_seed(0)
    device = next(stage.parameters(), torch.empty(0)).device
    threshold = getattr(stage, "threshold", PDC_THRESHOLD)
    state = None
    for _ in range(frames):
        maps = torch.rand(1, num_landmarks, 16, 16, generator=generator).to(device)
        out, state = stage(maps, state)
        if torch.equal(out, maps):
            continue
        if not torch.allclose(pdc(out, threshold), pdc(maps, threshold), rtol=0, atol=1e-4):
            return False
    return True
