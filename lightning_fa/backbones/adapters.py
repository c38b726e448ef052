"""Adapters that make other detectors into backbones: any nn.Module, a TorchScript file, a
coordinate regressor (rendered into Gaussian heatmaps) and dlib's 68-point shape predictor."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_fa.heatmaps import crop_to_heatmap, render_gaussian

from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone, register_backbone

DLIB_INSTALL_HINT = "pip install lightning-fa[dlib]"


class ModuleBackbone(Backbone):
    """Wrap any module mapping normalised images (B, 3, H, W) to heatmaps (B, L, h, w)."""

    def __init__(
        self,
        module: nn.Module,
        num_landmarks: int,
        stride: int,
        input_size: tuple[int, int] = (256, 256),
        input_mean: tuple[float, float, float] = IMAGENET_MEAN,
        input_std: tuple[float, float, float] = IMAGENET_STD,
        channel_order: str = "RGB",
    ) -> None:
        super().__init__(num_landmarks, stride, input_size, input_mean, input_std, channel_order)
        # Named `net`, not `module`: checkpoint loading strips DataParallel's `module.` prefix.
        self.net = module

    def forward(self, x: Tensor) -> Tensor:
        heatmaps = self.net(x)
        if not isinstance(heatmaps, Tensor) or heatmaps.ndim != 4:
            shape = tuple(heatmaps.shape) if isinstance(heatmaps, Tensor) else type(heatmaps)
            raise ValueError(f"wrapped module must return (B, L, h, w) heatmaps, got {shape}")
        if heatmaps.shape[1] != self.num_landmarks:
            raise ValueError(
                f"wrapped module returned {heatmaps.shape[1]} heatmap channels, "
                f"expected num_landmarks={self.num_landmarks}"
            )
        return heatmaps


class TorchScriptBackbone(ModuleBackbone):
    """A TorchScript heatmap model loaded from `path` (onto the CPU; move it with `.to`).

    TorchScript is deprecated in recent torch; a `torch.export` program can be wrapped as
    `ModuleBackbone(torch.export.load(path).module(), ...)` instead. Only a path given in code or
    config is loaded: a checkpoint naming this class is refused unless you allow it
    (`allow_checkpoint_class`), since its spec would make the checkpoint load another file.
    """

    def __init__(
        self,
        path: str | Path,
        num_landmarks: int,
        stride: int,
        input_size: tuple[int, int] = (256, 256),
        input_mean: tuple[float, float, float] = IMAGENET_MEAN,
        input_std: tuple[float, float, float] = IMAGENET_STD,
        channel_order: str = "RGB",
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TorchScript file not found: {path}")
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"cannot load TorchScript model {path}: {err}") from err
        super().__init__(
            module, num_landmarks, stride, input_size, input_mean, input_std, channel_order
        )
        self.path = path


class CoordinateDetectorBackbone(Backbone):
    """Turn a detector of crop coordinates into heatmaps: one Gaussian per point.

    `detector(x)` gets this backbone's preprocessed input and returns (B, L, 2) crop-pixel (x, y)
    or a tuple (coords, confidence (B, L)); the Gaussian of each point is scaled by its confidence.
    """

    def __init__(
        self,
        detector: Callable[[Tensor], Tensor | tuple[Tensor, Tensor]],
        num_landmarks: int,
        stride: int = 4,
        sigma: float = 1.5,
        input_size: tuple[int, int] = (256, 256),
        input_mean: tuple[float, float, float] = IMAGENET_MEAN,
        input_std: tuple[float, float, float] = IMAGENET_STD,
        channel_order: str = "RGB",
    ) -> None:
        super().__init__(num_landmarks, stride, input_size, input_mean, input_std, channel_order)
        if not sigma > 0:
            raise ValueError(f"sigma must be positive (heatmap pixels), got {sigma}")
        self.detector = detector
        self.sigma = float(sigma)

    def forward(self, x: Tensor) -> Tensor:
        out = self.detector(x)
        coords, confidence = out if isinstance(out, tuple) else (out, None)
        expected = (x.shape[0], self.num_landmarks, 2)
        if tuple(coords.shape) != expected:
            raise ValueError(
                f"detector returned coordinates {tuple(coords.shape)}, expected {expected}"
            )
        height, width = x.shape[-2] // self.stride, x.shape[-1] // self.stride
        if confidence is not None and tuple(confidence.shape) != expected[:2]:
            raise ValueError(
                f"detector returned confidence {tuple(confidence.shape)}, expected {expected[:2]}"
            )
        return self.render(coords.to(x.device, torch.float32), height, width, confidence)

    def render(
        self, coords: Tensor, height: int, width: int, confidence: Tensor | None = None
    ) -> Tensor:
        """Heatmaps (..., L, height, width) of crop-pixel points (..., L, 2), as `forward` draws
        them; data modules use it to precompute the frozen backbone's output from cached points.
        Non-finite points give empty maps."""
        heatmaps = render_gaussian(crop_to_heatmap(coords, self.stride), height, width, self.sigma)
        if confidence is not None:
            heatmaps = heatmaps * confidence.to(heatmaps)[..., None, None]
        return heatmaps


def _import_dlib() -> Any:
    try:
        import dlib
    except ImportError as err:
        raise ImportError(f"the dlib backbone needs dlib: {DLIB_INSTALL_HINT}") from err
    return dlib


def dlib_face_detector() -> Any:
    """dlib's HOG frontal face detector: `detector(rgb_uint8_hwc, upsample) -> rectangles`."""
    return _import_dlib().get_frontal_face_detector()


def _dlib_predictor_path() -> str:
    try:
        import face_recognition_models
    except ImportError as err:
        raise ImportError(f"the dlib 68-point model is missing: {DLIB_INSTALL_HINT}") from err
    return face_recognition_models.pose_predictor_model_location()


class DlibShapePredictor:
    """Callable detector: dlib's 68-point predictor on each crop -> (B, 68, 2) crop pixels.

    Takes 0..255 float RGB (B, 3, H, W). The predictor needs a face box like the ones it was
    trained with (dlib's HOG detector boxes); with `detect_in_crop` the detector runs inside the
    crop, otherwise (or when it finds no face) the crop inset by `inset` per side is the box,
    which suits frontal faces only. dlib's points are integer pixel indices, centres at integers
    like ours.
    """

    def __init__(
        self,
        predictor_path: str | Path | None = None,
        inset: float = 0.1,
        detect_in_crop: bool = True,
    ) -> None:
        dlib = _import_dlib()
        path = Path(predictor_path) if predictor_path is not None else Path(_dlib_predictor_path())
        if not path.is_file():
            raise FileNotFoundError(f"dlib shape predictor model not found: {path}")
        if not 0.0 <= inset < 0.5:
            raise ValueError(f"inset must be in [0, 0.5) of the crop side, got {inset}")
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(path))
        self._face_detector = dlib.get_frontal_face_detector() if detect_in_crop else None
        self.predictor_path = path
        self.inset = inset

    def __reduce__(self) -> tuple[type, tuple[Path, float, bool]]:
        # dlib's objects neither pickle nor deep-copy (weight-averaging callbacks deep-copy the
        # whole LightningModule, spawn-based DDP pickles it): rebuild from the model file.
        return type(self), (self.predictor_path, self.inset, self._face_detector is not None)

    def _face_box(self, image: np.ndarray) -> Any:
        height, width = image.shape[:2]
        if self._face_detector is not None:
            # One upsampling: without it faces reaching past the crop border are often missed.
            faces = self._face_detector(image, 1)
            if len(faces):
                return max(faces, key=lambda r: r.area())
        dx, dy = round(self.inset * width), round(self.inset * height)
        return self._dlib.rectangle(dx, dy, width - 1 - dx, height - 1 - dy)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        batch = images.detach().round().clamp(0, 255).to("cpu", torch.uint8)
        batch = batch.permute(0, 2, 3, 1).contiguous().numpy()
        # dlib works one image at a time; there is no batched call.
        points = []
        for image in batch:
            image = np.ascontiguousarray(image)
            shape = self._predictor(image, self._face_box(image))
            points.append([(p.x, p.y) for p in shape.parts()])
        return torch.tensor(points, dtype=torch.float32, device=images.device)


@register_backbone("dlib")
class DlibBackbone(CoordinateDetectorBackbone):
    """dlib's 68-point iBUG shape predictor as a (non-differentiable, CPU) heatmap backbone.

    Licence: the bundled 68-point model is trained on 300-W, whose terms allow non-commercial
    research use only. Needs `pip install lightning-fa[dlib]`. See `DlibShapePredictor` for the
    face box used inside each crop.
    """

    def __init__(
        self,
        num_landmarks: int = 68,
        stride: int = 4,
        sigma: float = 1.5,
        inset: float = 0.1,
        detect_in_crop: bool = True,
        predictor_path: str | None = None,
        input_size: tuple[int, int] = (256, 256),
    ) -> None:
        if num_landmarks != 68:
            raise ValueError(
                f"dlib's shape predictor gives 68 landmarks, got num_landmarks={num_landmarks}"
            )
        # mean 0, std 1/255: preprocess hands the detector 0..255 RGB, as dlib wants.
        super().__init__(
            DlibShapePredictor(predictor_path, inset, detect_in_crop),
            num_landmarks,
            stride=stride,
            sigma=sigma,
            input_size=input_size,
            input_mean=(0.0, 0.0, 0.0),
            input_std=(1 / 255, 1 / 255, 1 / 255),
        )
