"""The camera degradations of generated video, per frame: motion blur along the true motion,
illumination flicker, sensor noise, JPEG (the vocabulary is
`data_modules.transforms.Degradation`)."""

from __future__ import annotations

import numpy as np

from data_modules.transforms import Degradation, motion_blur
from data_modules.transforms import degrade as degrade_jpeg

# --------------------------------------------------------------------------- degradations

# The levels of `Degradation` generated video applies (per frame, `apply_degradation`).
VIDEO_LEVELS = ("noise_sigma", "jpeg_quality", "blur_exposure", "flicker")


def apply_degradation(
    image: np.ndarray,
    degradation: Degradation,
    rng: np.random.Generator,
    motion: np.ndarray,
    background: np.ndarray | None = None,
    coverage: np.ndarray | None = None,
) -> np.ndarray:
    """Motion blur along ``motion`` (px / frame), flicker, noise, JPEG on an RGB uint8 frame.

    With ``background`` and ``coverage`` (the static scene and the moving layer's alpha) only the
    moving layer is smeared: out = B (1 - blur(a)) + blur(I - B (1 - a)); else the whole frame.
    """
    d = degradation
    d.check_levels(*VIDEO_LEVELS, source="generated video (it blurs along its own motion)")
    out = image
    streak = np.asarray(motion, float) * d.blur_exposure
    if np.hypot(*streak) >= 0.5:

        def blur(x: np.ndarray) -> np.ndarray:
            return motion_blur(x, streak)

        frame = image.astype(np.float32)
        if background is None or coverage is None:
            smeared = blur(frame)
        else:
            b = background.astype(np.float32)
            alpha = coverage.astype(np.float32) / 255.0
            moving = frame - b * (1.0 - alpha[..., None])
            smeared = b * (1.0 - blur(alpha)[..., None]) + blur(moving)
        out = np.clip(smeared + 0.5, 0, 255).astype(np.uint8)
    if d.flicker > 0 or d.noise_sigma > 0:
        # Gain and noise in one float32 pass (float32 draws: half the cost of float64 ones).
        gain = 1.0 + d.flicker * float(np.clip(rng.standard_normal(), -3, 3))
        noisy = out.astype(np.float32) * np.float32(gain) + np.float32(0.5)
        if d.noise_sigma > 0:
            noisy += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(d.noise_sigma)
        out = np.clip(noisy, 0, 255).astype(np.uint8)
    return degrade_jpeg(out, rng, jpeg_quality=d.jpeg_quality)
