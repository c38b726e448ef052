"""Face crops, sequence-consistent augmentation and per-frame degradations (numpy / OpenCV /
albumentations).

The crop matrix and warp (frame -> crop ``affine``, pixel-centre convention) are
``lightning_fa.geometry``'s. Geometric augmentation (scale, rotation, translation, horizontal
flip) is folded into that one matrix, so landmarks are transformed exactly (one warp from the full
frame; albumentations' geometric transforms are not used). Photometric work is albumentations
2.0.8: colour jitter (its torchvision-style brightness / contrast / saturation operations, with
the factors drawn once per sequence into ``AugmentParams``, so every frame gets the same change)
and the per-frame degradations (``GaussianBlur``, the line kernel of `motion_kernel` in a random
direction, ``GaussNoise``, seeded from the sample's numpy Generator so runs repeat exactly).

`Degradation` is the one vocabulary of camera degradations and `motion_kernel` the one motion-blur
kernel: generated video (``synthetic``) blurs along its known motion with the same kernel, and its
JPEG goes through ``degrade(image, rng, jpeg_quality=q)``. That path is kept bit-identical to the
earlier hand-written code: with no random step it draws nothing from ``rng``, and its JPEG round
trip is the same OpenCV encode / decode of the BGR view (through
albumentations' ``image_compression``; its ``ImageCompression`` transform is not used because it
hands RGB arrays to the encoder as if they were BGR, which moves the chroma subsampling onto the
wrong channels).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from data_modules.checks import check_finite_non_negative
from lightning_fa.checks import check_ints
from lightning_fa.geometry import DEFAULT_ENLARGE, crop_affine, warp_image

# albumentations' import asks PyPI for a newer release (a 2 s timeout offline, then a warning)
# unless told not to; it is imported inside the functions that use it, as it takes about a second
# and importers that only crop (unlabelled caching) never need it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def flip_landmarks(landmarks, width: int, permutation: Sequence[int]):
    """Mirror (..., L, 2) landmarks in an image of ``width`` and swap left/right indices.

    Works for numpy arrays and torch tensors. x -> width - 1 - x (0-based pixel centres); index
    i of the result holds the mirrored point ``permutation[i]`` (from ``DatasetSpec``).
    """
    perm = list(permutation)
    if len(perm) != landmarks.shape[-2]:
        raise ValueError(
            f"permutation has {len(perm)} entries but landmarks have {landmarks.shape[-2]} points"
        )
    mirrored = (
        landmarks[..., perm, :].clone()
        if torch.is_tensor(landmarks)
        else landmarks[..., perm, :].copy()
    )
    mirrored[..., 0] = (width - 1) - mirrored[..., 0]
    return mirrored


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the sequence-level augmentation (one draw per sequence).

    scale_jitter: the crop side is multiplied by a factor in [1 - s, 1 + s];
    rotation_deg: uniform in [-r, r]; translate: centre offset up to this fraction of the box side;
    flip_prob: probability of a horizontal mirror; brightness / contrast / saturation: factors
    in [1 - v, 1 + v] (0 = off).
    """

    scale_jitter: float = 0.25
    rotation_deg: float = 30.0
    translate: float = 0.05
    flip_prob: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the sequence-level augmentation, applied identically to every frame."""

    scale_factor: float = 1.0
    rotation_deg: float = 0.0
    translate: tuple[float, float] = (0.0, 0.0)  # fraction of the box side
    flip: bool = False
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0

    @property
    def is_identity(self) -> bool:
        return self == AugmentParams()


def sample_augmentation(rng: np.random.Generator, config: AugmentConfig) -> AugmentParams:
    """Draw one set of augmentation parameters from ``config`` with ``rng``."""

    def factor(v: float) -> float:
        return float(rng.uniform(1.0 - v, 1.0 + v))

    return AugmentParams(
        scale_factor=factor(config.scale_jitter),
        rotation_deg=float(rng.uniform(-config.rotation_deg, config.rotation_deg)),
        translate=(
            float(rng.uniform(-config.translate, config.translate)),
            float(rng.uniform(-config.translate, config.translate)),
        ),
        flip=bool(rng.random() < config.flip_prob),
        brightness=factor(config.brightness),
        contrast=factor(config.contrast),
        saturation=factor(config.saturation),
    )


def augmented_affine(
    center: Sequence[float] | np.ndarray,
    scale: float,
    output_size: tuple[int, int],
    params: AugmentParams,
    enlarge: float = DEFAULT_ENLARGE,
    shift: Sequence[float] | np.ndarray = (0.0, 0.0),
) -> np.ndarray:
    """``crop_affine`` with the geometric part of ``params`` folded in."""
    offset = np.asarray(params.translate, dtype=np.float64) * scale
    return crop_affine(
        np.asarray(center, dtype=np.float64) + offset,
        scale * params.scale_factor,
        output_size,
        rotation_deg=params.rotation_deg,
        enlarge=enlarge,
        flip=params.flip,
        shift=shift,
    )


def apply_colour(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Brightness, contrast and saturation factors of ``params`` on an RGB uint8 image.

    albumentations' torchvision-style operations (as in its ``ColorJitter``), in this fixed order,
    each rounded and clipped to uint8: brightness scales, contrast blends with the mean grey
    level of the image, saturation with each pixel's grey level. Deterministic given ``params``,
    so every frame of a sequence gets the same colour change.
    """
    if params.brightness == params.contrast == params.saturation == 1.0:
        return image
    from albumentations.augmentations.pixel import functional as albu

    out = albu.adjust_brightness_torchvision(image, params.brightness)
    out = albu.adjust_contrast_torchvision(out, params.contrast)
    return albu.adjust_saturation_torchvision(out, params.saturation)


@dataclass(frozen=True)
class Degradation:
    """Per-frame camera degradations, one vocabulary for every data source (all off by default,
    and off for evaluation unless asked for).

    noise_sigma: std of additive Gaussian sensor noise, grey levels; jpeg_quality: re-encode at
    this quality (None = off). Frames of unknown motion (image and 300VW crops, ``apply``):
    blur_kernel: odd Gaussian kernel size (0 = off; sigma as OpenCV derives it from the size);
    motion_blur_length: odd length in pixels of a centred linear motion blur in a random direction
    (0 = off); applied in the order blur, motion blur, noise, JPEG. Generated video, whose motion
    is known (`data_modules.synthetic`): blur_exposure: motion-blur length as a fraction of the
    face's per-frame motion (shutter time / frame time, 0..2); flicker: std of a per-frame global
    gain (illumination flicker, < 0.5). Both blurs use `motion_kernel`.
    """

    noise_sigma: float = 0.0
    blur_kernel: int = 0
    motion_blur_length: int = 0
    jpeg_quality: int | None = None
    blur_exposure: float = 0.0
    flicker: float = 0.0

    def __post_init__(self) -> None:
        check_finite_non_negative(noise_sigma=self.noise_sigma)
        check_ints(0, blur_kernel=self.blur_kernel, motion_blur_length=self.motion_blur_length)
        for name in ("blur_kernel", "motion_blur_length"):
            size = getattr(self, name)
            if size and size % 2 == 0:
                raise ValueError(f"{name} must be odd (or 0 for off), got {size}")
        quality = self.jpeg_quality
        if quality is not None and (isinstance(quality, bool) or quality not in range(1, 101)):
            raise ValueError(f"jpeg_quality must be in 1..100 (or None for off), got {quality!r}")
        if not 0 <= self.blur_exposure <= 2 or not 0 <= self.flicker < 0.5:
            raise ValueError(
                f"Degradation expects blur_exposure in [0, 2] and flicker in [0, 0.5); got {self}"
            )

    @classmethod
    def resolve(cls, value: str | Degradation) -> Degradation:
        """A Degradation from itself or a preset name (`DEGRADATION_PRESETS`)."""
        if isinstance(value, Degradation):
            return value
        if value not in DEGRADATION_PRESETS:
            raise ValueError(
                f"unknown degradation {value!r}; expected one of {sorted(DEGRADATION_PRESETS)}"
            )
        return DEGRADATION_PRESETS[value]

    def check_levels(self, *names: str, source: str) -> None:
        """ValueError when a level other than ``names`` is on: ``source`` cannot apply it."""
        on = [
            f.name
            for f in dataclasses.fields(self)
            if getattr(self, f.name) and f.name not in names
        ]
        if on:
            raise ValueError(f"{source} cannot apply {', '.join(on)} ({self})")

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Degrade an RGB uint8 image of unknown motion; the albumentations steps are seeded by
        one draw from ``rng`` (nothing is drawn when only JPEG is on)."""
        self.check_levels(*IMAGE_LEVELS, source="a frame of unknown motion")
        out = image
        steps = _albumentations_steps(self)
        if steps is not None:
            steps.set_random_seed(int(rng.integers(2**32)))
            out = steps(image=out)["image"]
        if self.jpeg_quality is not None:
            out = _jpeg(out, self.jpeg_quality)
        return out


# The levels `Degradation.apply` knows; generated video uses the others (`data_modules.synthetic`).
IMAGE_LEVELS = ("noise_sigma", "blur_kernel", "motion_blur_length", "jpeg_quality")

# The generated videos' camera presets (`data_modules.synthetic`, the embedded benchmark).
DEGRADATION_PRESETS = {
    "clean": Degradation(),
    "mild": Degradation(noise_sigma=2.0, blur_exposure=0.5, jpeg_quality=90, flicker=0.02),
    "heavy": Degradation(noise_sigma=10.0, blur_exposure=1.0, jpeg_quality=40, flicker=0.08),
}

# cv2 drawing takes integer points; ``shift`` fractional bits give 1/16-pixel accuracy.
DRAW_SHIFT = 4
DRAW_ONE = 1 << DRAW_SHIFT


def fixed_point(points: np.ndarray) -> np.ndarray:
    """Float pixel coordinates -> cv2 fixed-point int32 (for ``shift=DRAW_SHIFT``)."""
    return np.round(points * DRAW_ONE).astype(np.int32)


def motion_kernel(displacement: np.ndarray) -> np.ndarray:
    """Normalised line kernel spanning ``displacement`` (px), centred (sub-pixel endpoints)."""
    half = math.ceil(float(np.abs(displacement).max()) / 2) + 1
    kernel = np.zeros((2 * half + 1, 2 * half + 1), np.float32)
    ends = fixed_point(np.array([half, half]) + np.outer([-0.5, 0.5], displacement))
    cv2.line(kernel, ends[0], ends[1], 1.0, 1, cv2.LINE_AA, DRAW_SHIFT)
    return kernel / kernel.sum()


def motion_blur(image: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """``image`` (any dtype) smeared along ``displacement`` (px) with `motion_kernel`."""
    return cv2.filter2D(image, -1, motion_kernel(displacement), borderType=cv2.BORDER_REFLECT)


def _line_motion_blur(length: int):
    """albumentations step: `motion_blur` of ``length`` px (one pixel centre to the other) in a
    direction drawn from the step's seeded generator (a line: 180 degrees cover them all)."""
    import albumentations as A

    class LineMotionBlur(A.ImageOnlyTransform):
        def get_params(self) -> dict[str, float]:
            return {"angle": self.py_random.uniform(0.0, math.pi)}

        def apply(self, img: np.ndarray, angle: float, **params) -> np.ndarray:
            span = (length - 1) * np.array([math.cos(angle), math.sin(angle)])
            return motion_blur(img, span)

    return LineMotionBlur(p=1.0)


@functools.lru_cache(maxsize=16)
def _albumentations_steps(config: Degradation):
    """albumentations pipeline of ``config``'s blur, motion blur and noise (None when all off).

    Built once per config and reseeded for every frame (each DataLoader worker process has its
    own copy; not for concurrent use from threads).
    """
    import albumentations as A

    steps = []
    if config.blur_kernel > 1:
        k = config.blur_kernel
        sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for a k x k kernel
        steps.append(A.GaussianBlur(blur_limit=(k, k), sigma_limit=(sigma, sigma), p=1.0))
    if config.motion_blur_length > 1:
        steps.append(_line_motion_blur(config.motion_blur_length))
    if config.noise_sigma > 0:
        # std as a fraction of uint8's 255. Its noise field comes from cv2.randn seeded with one
        # of 2**16 values drawn from the step's seed: fields can repeat across many frames.
        std = config.noise_sigma / 255.0
        steps.append(A.GaussNoise(std_range=(std, std), mean_range=(0.0, 0.0), p=1.0))
    return A.Compose(steps) if steps else None


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip of an RGB uint8 image, encoded in the BGR order OpenCV's codec expects.

    cvtColor rather than a reversed view: the same bytes reach the codec, without the slow
    strided copies (0.25 instead of 0.55 ms per 256x256 crop).
    """
    from albumentations.augmentations.pixel.functional import image_compression

    bgr = image_compression(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), int(quality), ".jpg")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def degrade(
    image: np.ndarray,
    rng: np.random.Generator,
    noise_sigma: float = 0.0,
    blur_kernel: int = 0,
    motion_blur_length: int = 0,
    jpeg_quality: int | None = None,
) -> np.ndarray:
    """Degrade an RGB uint8 image: blur, motion blur, Gaussian noise, then JPEG (each optional).

    ``Degradation(...).apply``: random draws (noise, motion direction) are seeded from ``rng``
    only, so results are reproducible; all levels off returns ``image`` itself.
    """
    config = Degradation(noise_sigma, blur_kernel, motion_blur_length, jpeg_quality)
    return config.apply(image, rng)


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) RGB uint8 array -> (3, H, W) uint8 tensor (grey images are repeated to 3)."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.dtype != np.uint8 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def crop_frame(
    image: np.ndarray,
    affine: np.ndarray,
    output_size: tuple[int, int],
    params: AugmentParams,
    degradation: Degradation | None,
    rng: np.random.Generator,
) -> torch.Tensor:
    """One training / evaluation crop: warp, the sequence's colour jitter, this frame's
    degradation, as a (3, H, W) uint8 tensor."""
    crop = apply_colour(warp_image(image, affine, output_size), params)
    if degradation is not None:
        crop = degradation.apply(crop, rng)
    return to_chw_tensor(crop)
