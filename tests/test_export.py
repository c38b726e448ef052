"""ONNX export of the streaming step: onnxruntime matches PyTorch over a stream with state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_fa.backbones import create_backbone
from lightning_fa.heatmaps import heatmap_to_crop, pdc
from lightning_fa.inference.onnx import OnnxStep, StreamingStep, export_onnx, heatmap_confidence
from lightning_fa.systems.finetune import StableAlignmentModule
from lightning_fa.temporal import ConvLSTM, FaceMotionStage, GatedBlendConvLSTM

pytest.importorskip("onnxruntime")


def _module(temporal: ConvLSTM | None = None) -> StableAlignmentModule:
    torch.manual_seed(0)
    backbone = create_backbone("hrnet_lite", 68)  # 128 x 128 input, random weights
    with torch.no_grad():
        # Random weights give flat maps near 0; an offset of 1 keeps every value above the PDC
        # threshold, so no comparison hinges on a value within float rounding of theta_pdc.
        heads = [m for m in backbone.modules() if getattr(m, "out_channels", None) == 68]
        heads[-1].bias.add_(1.0)
    module = StableAlignmentModule(backbone=backbone, temporal=temporal).eval()
    with torch.no_grad():  # a non-trivial ConvLSTM, so the carried state matters
        for parameter in module.temporal.parameters():
            parameter.normal_(0.0, 0.1)
    return module


@pytest.fixture(scope="module")
def module() -> StableAlignmentModule:
    return _module()


@pytest.fixture(scope="module")
def blend_module() -> StableAlignmentModule:
    """The landmark-wise gated blend: its state carries the previous output maps."""
    temporal = GatedBlendConvLSTM(68, 4)
    module = _module(temporal)
    with torch.no_grad():
        module.temporal.blend_strength.fill_(0.8)
    return module


@pytest.fixture(scope="module")
def face_motion_module() -> StableAlignmentModule:
    """The face-level motion filter: its state is coordinates, its output rendered maps."""
    module = _module(FaceMotionStage(68))
    with torch.no_grad():
        module.temporal.strength.copy_(torch.tensor([0.5, 0.3, 0.7]))
    return module


@pytest.fixture(scope="module")
def held_face_motion_module() -> StableAlignmentModule:
    """The same with the still hold, re-holding after 3 quiet frames. On the test's stream it
    holds, releases at frame 2 and holds again from frame 4: the exported graph must switch as
    PyTorch does."""
    module = _module(FaceMotionStage(68, hold_threshold=1.0, rehold_after=3))
    with torch.no_grad():
        module.temporal.strength.copy_(torch.tensor([0.5, 0.3, 0.7]))
    return module


def test_streaming_step_is_backbone_convlstm_pdc(module: StableAlignmentModule) -> None:
    step = StreamingStep(module).eval()
    images = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8)
    coords, raw, confidence, *state = step(images, *step.init_state(2))
    with torch.no_grad():
        heatmaps = module.backbone(module.backbone.preprocess(images))
        stabilised, expected_state = module.temporal(heatmaps, None)
    torch.testing.assert_close(raw, heatmap_to_crop(pdc(heatmaps), 4.0))
    torch.testing.assert_close(coords, heatmap_to_crop(pdc(stabilised), 4.0))
    assert not torch.allclose(coords, raw)  # the ConvLSTM changed something
    peaks = heatmaps.flatten(2).max(-1).values.mean(-1).clamp(0, 1)
    torch.testing.assert_close(confidence, peaks)
    torch.testing.assert_close(state[0], expected_state[0][0])


@pytest.mark.parametrize(
    ("fixture", "frames"),
    [
        ("module", 5),
        ("blend_module", 5),
        ("face_motion_module", 5),
        ("held_face_motion_module", 8),
        pytest.param("module", 30, marks=pytest.mark.slow),
    ],
)
def test_onnx_matches_pytorch_over_stream(request, tmp_path, fixture: str, frames: int) -> None:
    module = request.getfixturevalue(fixture)
    path = export_onnx(module, tmp_path / "step.onnx")
    runtime = OnnxStep(path)
    step = StreamingStep(module).eval()
    assert runtime.input_size == (128, 128)
    assert runtime.num_landmarks == 68
    assert runtime.output_names[-1] == "landmark_scores"
    torch_state, onnx_state = step.init_state(1), runtime.init_state(1)
    holding = []
    generator = torch.Generator().manual_seed(1)
    base = torch.randint(0, 256, (1, 3, 128, 128), dtype=torch.uint8, generator=generator)
    for t in range(frames):
        # A slowly drifting image plus noise: a stream, not 30 unrelated pictures.
        noise = torch.randint(-8, 9, base.shape, generator=generator)
        images = (base.int().roll(t, dims=-1) + noise).clamp(0, 255).to(torch.uint8)
        expected = step(images, *torch_state)
        got = runtime(images.numpy(), *onnx_state)
        # coords, raw, confidence first; the per-landmark scores last, after the state.
        names = ("coords", "raw", "confidence", "landmark_scores")
        for name, a, b in zip(names, (*expected[:3], expected[-1]), (*got[:3], got[-1])):
            np.testing.assert_allclose(b, a.numpy(), atol=1e-4, rtol=0, err_msg=f"{name} t={t}")
        torch_state, onnx_state = list(expected[3:-1]), list(got[3:-1])
        if "hold_active" in step.state_names:
            holding.append(float(onnx_state[step.state_names.index("hold_active")][0, 0]))
    for a, b in zip(torch_state, onnx_state):
        np.testing.assert_allclose(b, a.numpy(), atol=1e-4, rtol=0)
    if holding:
        assert holding == [1, 1, 0, 0, 1, 1, 1, 1]


def test_heatmap_confidence_closed_form() -> None:
    heatmaps = torch.zeros(1, 2, 4, 4)
    heatmaps[0, 0, 1, 1] = 1.0
    heatmaps[0, 1, 2, 3] = 0.5
    assert heatmap_confidence(heatmaps).item() == pytest.approx(0.75)
    assert heatmap_confidence(heatmaps * 5).item() == 1.0


def test_onnx_step_rejects_missing_and_foreign_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        OnnxStep(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    with pytest.raises(ValueError, match="cannot load ONNX model"):
        OnnxStep(bad)


class _GroupedStage(torch.nn.Module):
    """A third-party stage without `state_names`: an (h, c) pair and a group of three."""

    def init_state(self, batch, height, width, device=None, dtype=None):
        zeros = [torch.zeros(batch, 1, height, width, device=device) for _ in range(5)]
        return ((zeros[0], zeros[1]), (zeros[2], zeros[3], zeros[4]))

    def forward(self, heatmaps, state=None):
        if state is None:
            state = self.init_state(heatmaps.shape[0], *heatmaps.shape[-2:], heatmaps.device)
        # Each group gets its own increment, so a misgrouped state would show.
        return heatmaps, tuple(tuple(t + k + 1 for t in group) for k, group in enumerate(state))


def test_streaming_step_names_and_regroups_a_stage_without_state_names() -> None:
    module = StableAlignmentModule(
        backbone=create_backbone("hrnet_lite", 68), temporal=_GroupedStage()
    )
    step = StreamingStep(module.eval()).eval()
    assert step.state_names == ["h0", "c0", "state1_0", "state1_1", "state1_2"]
    images = torch.randint(0, 256, (1, 3, 128, 128), dtype=torch.uint8)
    _, _, _, h, c, a, b, last, _ = step(images, *step.init_state(1))
    for tensor, frames in ((h, 1), (c, 1), (a, 2), (b, 2), (last, 2)):
        assert torch.all(tensor == frames)
