"""Synthetic talking-face videos with exact 68-point ground truth (the embedded default data).

Two generators share one motion model:

* ``procedural``: cartoon-like faces drawn with OpenCV (anti-aliased, sub-pixel ``shift``) from a
  hand-made 68-point iBUG template, with random identity (smooth shape modes + colours), pose
  (roll, scale, translation, yaw / pitch through a pseudo-depth per point) and expression (mouth
  open, smile, brows, blinks) over a cluttered background.
* ``warp``: real annotated stills (image + ``.pts``) moved along the same trajectories by a
  piecewise-affine warp of the landmark mesh, i.e. pseudo-videos with real texture.

Trajectories are keyframe segments (still / slow drift / fast move) joined by cubic smoothsteps
whose lengths are stretched until a per-channel acceleration limit holds, so the ground truth is
smooth by construction. Camera degradations (motion blur along the true motion, illumination
flicker, sensor noise, JPEG) are drawn per frame. Everything is deterministic by
``(seed, video index, frame index)``: any frame can be rendered on its own, by any worker.

Coordinates: (x, y), 0-based, pixel centres at integers; the frame is the crop (identity affine).
Canonical face units: the face is about 2 wide, y points down, the origin lies between the eyes
and the nose tip; outer eye corners are about 1.24 apart.

Modules, by job: ``face`` (template, identities, projection), ``motion`` (trajectories),
``rendering`` (procedural faces), ``degradation`` (per-frame camera degradations of generated
video), ``stills`` (warped real stills), ``datasets`` (videos and datasets), ``datamodule``.
This package's names below are its API.
"""

from data_modules.synthetic.datamodule import (
    SyntheticDataModule,
)
from data_modules.synthetic.datasets import (
    SPLIT_SEED_OFFSET,
    GeneratorMode,
    SyntheticFaceImages,
    SyntheticFaceVideos,
    SyntheticVideo,
    SyntheticVideoWindows,
)
from data_modules.synthetic.degradation import (
    VIDEO_LEVELS,
    apply_degradation,
)
from data_modules.synthetic.face import (
    CHANNELS,
    MEAN_DEPTH,
    MEAN_SHAPE,
    NUM_LANDMARKS,
    SPEC,
    Appearance,
    FaceIdentity,
    expression_fields,
    project,
    sample_appearance,
    sample_identity,
    sample_shape,
)
from data_modules.synthetic.motion import (
    PROCEDURAL_RANGES,
    WARP_RANGES,
    MotionStyle,
    PoseRanges,
    keyframe_track,
    sample_trajectory,
)
from data_modules.synthetic.rendering import (
    make_background,
    render_face,
)
from data_modules.synthetic.stills import (
    StillSources,
    piecewise_affine_warp,
    similarity_transform,
)

__all__ = [
    "CHANNELS",
    "MEAN_DEPTH",
    "MEAN_SHAPE",
    "NUM_LANDMARKS",
    "PROCEDURAL_RANGES",
    "SPEC",
    "SPLIT_SEED_OFFSET",
    "VIDEO_LEVELS",
    "WARP_RANGES",
    "Appearance",
    "FaceIdentity",
    "GeneratorMode",
    "MotionStyle",
    "PoseRanges",
    "StillSources",
    "SyntheticDataModule",
    "SyntheticFaceImages",
    "SyntheticFaceVideos",
    "SyntheticVideo",
    "SyntheticVideoWindows",
    "apply_degradation",
    "expression_fields",
    "keyframe_track",
    "make_background",
    "piecewise_affine_warp",
    "project",
    "render_face",
    "sample_appearance",
    "sample_identity",
    "sample_shape",
    "sample_trajectory",
    "similarity_transform",
]
