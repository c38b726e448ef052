"""The face model: the 68-point iBUG template with its extra render points, random identities
(shape modes, colours), expressions, and the projection of a pose into the frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_modules.landmarks import get_spec

SPEC = get_spec("300w")
NUM_LANDMARKS = SPEC.num_landmarks

# Extra (non-landmark) render points appended after the 68 landmarks, by group.
_FOREHEAD = slice(68, 79)  # 11 points, right temple -> left temple (closes the jaw polygon)
_HAIRLINE = slice(79, 92)  # 13 points, right temple -> left temple
_HAIR_OUTER = slice(92, 107)  # 15 points around the skull
_NECK = slice(107, 111)
_NOSTRILS = slice(111, 113)
_NUM_RENDER_POINTS = 113

# Landmark groups of the iBUG 68-point topology.
_JAW = np.arange(0, 17)
_BROW_L, _BROW_R = np.arange(17, 22), np.arange(22, 27)
_EYE_L, _EYE_R = np.arange(36, 42), np.arange(42, 48)
_UPPER_LID_L, _LOWER_LID_L = np.array([37, 38]), np.array([41, 40])  # paired top/bottom
_UPPER_LID_R, _LOWER_LID_R = np.array([43, 44]), np.array([47, 46])
_MOUTH_OUTER, _MOUTH_INNER = np.arange(48, 60), np.arange(60, 68)

# Per-frame parameter channels (columns of a trajectory array).
CHANNELS = (
    "scale",  # pixels per canonical unit
    "tx",  # face origin offset from the frame centre, pixels
    "ty",
    "roll",  # in-plane rotation, radians
    "yaw",  # radians, orthographic rotation about the vertical axis
    "pitch",
    "mouth_open",  # canonical units of lower-lip drop
    "smile",
    "brow_raise",
    "blink_left",  # 0 open .. 1 closed (image-left eye, points 36-41)
    "blink_right",
)
_C = {name: i for i, name in enumerate(CHANNELS)}
_EXPRESSIONS = ("mouth_open", "smile", "brow_raise", "blink_left", "blink_right")


# --------------------------------------------------------------------------- template


def _arc(n: int, x_radius: float, y_centre: float, y_radius: float, a0: float, a1: float):
    """Points of an elliptic arc from angle a0 to a1 (x = r cos a, y = centre - r sin a)."""
    a = np.linspace(a0, a1, n)
    return np.stack([x_radius * np.cos(a), y_centre - y_radius * np.sin(a)], axis=1)


def _template() -> tuple[np.ndarray, np.ndarray]:
    """Mean face: (113, 2) canonical points (68 landmarks + render extras) and their depth."""
    p = np.zeros((_NUM_RENDER_POINTS, 2))
    a = np.linspace(0.0, np.pi, 17)
    # Jaw 0 (image left, the subject's right) -> chin 8 -> 16; slightly square.
    p[_JAW, 0] = -0.98 * np.sign(np.cos(a)) * np.abs(np.cos(a)) ** 0.85
    p[_JAW, 1] = -0.22 + 1.27 * np.sin(a)
    u = np.linspace(0.0, 1.0, 5)
    brow_x = -0.78 + 0.6 * u
    brow_y = -0.5 - 0.13 * np.sin(np.pi * (0.15 + 0.8 * u)) + 0.03 * u
    p[_BROW_L] = np.stack([brow_x, brow_y], 1)
    p[_BROW_R] = np.stack([-brow_x[::-1], brow_y[::-1]], 1)
    p[27:31] = np.stack([np.zeros(4), np.linspace(-0.36, 0.18, 4)], 1)
    p[31:36] = np.stack([np.linspace(-0.19, 0.19, 5), [0.27, 0.3, 0.32, 0.3, 0.27]], 1)
    eye_l = [(-0.62, -0.3), (-0.5, -0.37), (-0.34, -0.375), (-0.22, -0.3), (-0.34, -0.245)]
    eye_l.append((-0.5, -0.24))
    p[_EYE_L] = eye_l
    # Right eye: mirror of the left with the iBUG order (42 inner corner, 45 outer corner).
    p[_EYE_R] = p[list(SPEC.flip_permutation[42:48])] * (-1.0, 1.0)
    p[_MOUTH_OUTER] = [
        (-0.36, 0.62), (-0.24, 0.56), (-0.1, 0.525), (0.0, 0.54), (0.1, 0.525), (0.24, 0.56),
        (0.36, 0.62), (0.24, 0.7), (0.12, 0.74), (0.0, 0.75), (-0.12, 0.74), (-0.24, 0.7),
    ]  # fmt: skip
    p[_MOUTH_INNER] = [
        (-0.3, 0.62), (-0.1, 0.6), (0.0, 0.605), (0.1, 0.6),
        (0.3, 0.62), (0.1, 0.64), (0.0, 0.645), (-0.1, 0.64),
    ]  # fmt: skip
    p[_FOREHEAD] = _arc(13, 0.98, -0.22, 1.05, 0.0, np.pi)[1:-1]
    p[_HAIRLINE] = _arc(13, 0.95, -0.22, 0.68, 0.0, np.pi)
    p[_HAIR_OUTER] = _arc(15, 1.1, -0.22, 1.25, -0.3, np.pi + 0.3)
    p[_NECK] = [(-0.5, 0.6), (-0.6, 3.0), (0.6, 3.0), (0.5, 0.6)]
    p[_NOSTRILS] = [(-0.1, 0.265), (0.1, 0.265)]

    # Pseudo-depth (toward the camera): an ellipsoidal face surface, silhouettes at 0, a nose.
    x, y = p[:, 0], p[:, 1]
    depth = (
        0.55
        * np.sqrt(np.clip(1.0 - x**2, 0.0, None))
        * np.sqrt(np.clip(1.0 - ((y - 0.1) / 1.6) ** 2, 0.0, None))
    )
    depth[_JAW] = 0.45 * np.sin(a) ** 2
    depth[_FOREHEAD] = 0.0
    depth[_HAIR_OUTER] = -0.25
    depth[_NECK] = -0.3
    depth[np.r_[_EYE_L, _EYE_R]] -= 0.08
    depth[27:31] += [0.0, 0.08, 0.16, 0.25]
    depth[31:36] += [0.05, 0.1, 0.13, 0.1, 0.05]
    depth[_NOSTRILS] += 0.1
    return p, depth


MEAN_SHAPE, MEAN_DEPTH = _template()


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class Appearance:
    """Colours (RGB, 0-255) and lighting of one procedural face."""

    skin: tuple[float, float, float]
    lips: tuple[float, float, float]
    mouth: tuple[float, float, float]
    brows: tuple[float, float, float]
    hair: tuple[float, float, float] | None
    iris: tuple[float, float, float]
    sclera: tuple[float, float, float]
    lashes: tuple[float, float, float]
    nose_highlight: tuple[float, float, float]
    light_dir: tuple[float, float]
    shading: float  # strength of the linear light gradient across the face


@dataclass(frozen=True)
class FaceIdentity:
    """Canonical shape (N, 2), depth (N,), expression displacement fields (E, N, 2), colours."""

    shape: np.ndarray
    depth: np.ndarray
    expression: np.ndarray
    appearance: Appearance | None = None

    def radius(self, expression_max: np.ndarray) -> float:
        """Bound on the canonical 3D distance of any landmark from the origin, over all poses and
        expressions within ``expression_max`` (E,) (triangle inequality: exact for rotations)."""
        lm = slice(0, NUM_LANDMARKS)
        neutral = np.sqrt((self.shape[lm] ** 2).sum(1) + self.depth[lm] ** 2)
        motion = np.linalg.norm(self.expression[:, lm], axis=2)  # (E, 68)
        return float((neutral + np.abs(expression_max) @ motion).max())


def _scale_about(points: np.ndarray, index: np.ndarray, factor: tuple[float, float]) -> None:
    centre = points[index].mean(axis=0)
    points[index] = centre + (points[index] - centre) * factor


def sample_shape(rng: np.random.Generator) -> np.ndarray:
    """A random identity: the template under smooth low-dimensional modes + tiny point noise."""

    def mode(std: float) -> float:
        return float(np.clip(rng.normal(0.0, std), -2.5 * std, 2.5 * std))

    p = MEAN_SHAPE.copy()
    p[:, 0] *= 1.0 + mode(0.06)  # face width
    p[:, 1] *= 1.0 + mode(0.05)  # face height
    lower = np.clip((p[:, 1] + 0.2) / 1.3, 0.0, 1.0)
    jaw_like = np.r_[_JAW, np.arange(_NECK.start, _NECK.stop)]
    p[jaw_like, 0] *= 1.0 + mode(0.07) * lower[jaw_like]  # jaw width
    eyes = np.r_[_EYE_L, _EYE_R]
    spacing = mode(0.03)
    p[eyes, 0] += np.sign(p[eyes, 0]) * spacing
    p[17:27, 0] += np.sign(p[17:27, 0]) * 0.5 * spacing
    eye_size = 1.0 + mode(0.08)
    _scale_about(p, _EYE_L, (eye_size, eye_size * (1.0 + mode(0.1))))
    _scale_about(p, _EYE_R, (eye_size, eye_size * (1.0 + mode(0.1))))
    nose_len = mode(0.05)
    p[28:36, 1] += nose_len * np.array([0.33, 0.66, 1, 1, 1, 1, 1, 1])
    p[_NOSTRILS, 1] += nose_len
    nose_w = 1.0 + mode(0.1)
    p[31:36, 0] *= nose_w
    p[_NOSTRILS, 0] *= nose_w
    mouth = np.r_[_MOUTH_OUTER, _MOUTH_INNER]
    _scale_about(p, mouth, (1.0 + mode(0.08), 1.0 + mode(0.12)))
    p[mouth, 1] += mode(0.04)
    p[17:27, 1] += mode(0.03)
    p[_HAIRLINE, 1] = -0.22 + (p[_HAIRLINE, 1] + 0.22) * rng.uniform(0.75, 1.2)
    p[_HAIR_OUTER] *= rng.uniform(1.0, 1.15)
    p[:NUM_LANDMARKS] += rng.normal(0.0, 0.006, (NUM_LANDMARKS, 2))
    return p


def expression_fields(shape: np.ndarray) -> np.ndarray:
    """Displacement (E, N, 2) per unit of each expression channel, for this identity's shape.

    Blinks move the lids of the shape onto the closure line (70 % of the way down from the
    upper lid), so a blink of 1 closes the eye exactly.
    """
    fields = np.zeros((len(_EXPRESSIONS), len(shape), 2))
    mouth_open, smile, brows, blink_l, blink_r = fields
    mouth_open[[55, 56, 57, 58, 59, 65, 66, 67], 1] = 1.0
    mouth_open[[48, 54, 60, 64], 1] = 0.45
    mouth_open[_JAW[4:13], 1] = 0.6 * np.sin(np.linspace(0.0, np.pi, 11)[1:-1]) ** 2
    for corner, side in ((48, -1.0), (60, -1.0), (54, 1.0), (64, 1.0)):
        smile[corner] = (0.5 * side, -0.35)
    smile[[49, 59, 61, 67], :] = (-0.15, -0.15)
    smile[[53, 55, 63, 65], :] = (0.15, -0.15)
    brows[17:27, 1] = -1.0
    for field, upper, lower in ((blink_l, _UPPER_LID_L, _LOWER_LID_L), (blink_r, _UPPER_LID_R, _LOWER_LID_R)):  # fmt: skip
        closure = 0.3 * shape[upper, 1] + 0.7 * shape[lower, 1]
        field[upper, 1] = closure - shape[upper, 1]
        field[lower, 1] = closure - shape[lower, 1]
    return fields


def _colour(rng: np.random.Generator, base, jitter: float) -> tuple[float, float, float]:
    c = np.clip(np.asarray(base, float) * rng.uniform(1 - jitter, 1 + jitter, 3), 0.0, 255.0)
    return (float(c[0]), float(c[1]), float(c[2]))


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Random skin tone, hair, eye colours and light direction."""
    tone = rng.uniform()
    skin = np.array([95.0, 62.0, 45.0]) * (1 - tone) + np.array([240.0, 200.0, 175.0]) * tone
    skin_c = _colour(rng, skin, 0.06)
    hair_base = [(25, 20, 18), (60, 40, 25), (110, 75, 40), (190, 160, 100), (150, 150, 150)]
    hair = _colour(rng, hair_base[rng.integers(len(hair_base))], 0.15)
    iris_base = [(70, 45, 25), (50, 70, 100), (60, 80, 50), (40, 30, 25)]
    angle = rng.uniform(0.0, 2.0 * np.pi)
    return Appearance(
        skin=skin_c,
        lips=_colour(rng, np.array(skin_c) * (0.8, 0.55, 0.55) + (30, 0, 5), 0.08),
        mouth=_colour(rng, (70, 25, 30), 0.2),
        brows=hair if rng.uniform() < 0.7 else _colour(rng, (40, 30, 25), 0.3),
        hair=hair if rng.uniform() < 0.85 else None,
        iris=_colour(rng, iris_base[rng.integers(len(iris_base))], 0.15),
        sclera=_colour(rng, (235, 232, 225), 0.05),
        lashes=_colour(rng, (30, 22, 20), 0.2),
        nose_highlight=tuple(float(min(255.0, c * 1.12 + 8.0)) for c in skin_c),
        light_dir=(float(np.cos(angle)), float(np.sin(angle))),
        shading=float(rng.uniform(0.05, 0.3)),
    )


def sample_identity(rng: np.random.Generator) -> FaceIdentity:
    shape = sample_shape(rng)
    return FaceIdentity(shape, MEAN_DEPTH.copy(), expression_fields(shape), sample_appearance(rng))


# --------------------------------------------------------------------------- pose / projection


def project(identity: FaceIdentity, params: np.ndarray, image_size: int) -> np.ndarray:
    """Frame pixel coordinates (T, N, 2) of all points for per-frame parameters (T, channels).

    Canonical shape + expression -> 3D rotation (yaw, then pitch) with orthographic projection
    -> in-plane roll, scale and translation about the frame centre.
    """
    expr = params[:, [_C[name] for name in _EXPRESSIONS]]
    pts = identity.shape[None] + np.einsum("te,end->tnd", expr, identity.expression)
    x, y, z = pts[..., 0], pts[..., 1], identity.depth[None]
    yaw, pitch, roll = (params[:, _C[k], None] for k in ("yaw", "pitch", "roll"))
    x_rot = x * np.cos(yaw) + z * np.sin(yaw)
    z_rot = -x * np.sin(yaw) + z * np.cos(yaw)
    y_rot = y * np.cos(pitch) - z_rot * np.sin(pitch)
    scale = params[:, _C["scale"], None]
    cos_r, sin_r = np.cos(roll), np.sin(roll)
    centre = (image_size - 1) / 2.0
    u = centre + params[:, _C["tx"], None] + scale * (cos_r * x_rot - sin_r * y_rot)
    v = centre + params[:, _C["ty"], None] + scale * (sin_r * x_rot + cos_r * y_rot)
    return np.stack([u, v], axis=-1)
