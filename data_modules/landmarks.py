"""Per-dataset landmark facts: number of points, normaliser, heatmap sigma, flip permutation.

The one source of these facts for the whole project. The left/right pairs are the standard ones
(the same pairs as mmpose's dataset configs and HRNet's ``MATCHED_PARTS``), written here 0-based.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

Normalisation = Literal["interocular", "box"]


def permutation_from_pairs(num_landmarks: int, pairs: Iterable[tuple[int, int]]) -> tuple[int, ...]:
    """Index permutation that swaps every (left, right) pair and keeps the other points.

    ``flipped[i] = original[perm[i]]`` after mirroring the x coordinates. Raises ValueError when
    an index is out of range or appears in two pairs (the result would not be an involution).
    """
    perm = list(range(num_landmarks))
    seen: set[int] = set()
    for a, b in pairs:
        for index in (a, b):
            if not 0 <= index < num_landmarks:
                raise ValueError(
                    f"flip pair ({a}, {b}) has index {index} outside 0..{num_landmarks - 1}"
                )
            if index in seen:
                raise ValueError(f"landmark {index} appears in more than one flip pair")
            seen.add(index)
        if a == b:
            raise ValueError(f"flip pair ({a}, {b}) pairs a landmark with itself")
        perm[a], perm[b] = b, a
    return tuple(perm)


def _mirror_run(first: int, last: int) -> list[tuple[int, int]]:
    """Pairs of a symmetric run of points first..last (e.g. a jaw line): (first, last), ..."""
    return [(first + i, last - i) for i in range((last - first + 1) // 2)]


@dataclass(frozen=True)
class DatasetSpec:
    """Facts about one landmark convention.

    norm_indices: the two ground-truth points whose distance normalises the error
    (outer eye corners), or None when the error is normalised by the box size (``norm="box"``).
    sigma: Gaussian target sigma in heatmap pixels.
    flip_permutation: the index permutation to apply after a horizontal mirror.
    """

    name: str
    num_landmarks: int
    norm_indices: tuple[int, int] | None
    norm: Normalisation
    sigma: float
    flip_permutation: tuple[int, ...]

    def __post_init__(self) -> None:
        perm = self.flip_permutation
        if sorted(perm) != list(range(self.num_landmarks)):
            raise ValueError(
                f"{self.name}: flip_permutation must be a permutation of 0..{self.num_landmarks - 1}"
            )
        if any(perm[perm[i]] != i for i in range(self.num_landmarks)):
            raise ValueError(f"{self.name}: flip_permutation must be an involution")
        if (self.norm == "interocular") != (self.norm_indices is not None):
            raise ValueError(
                f"{self.name}: norm='interocular' needs norm_indices, norm='box' must have None"
            )

    def interocular(self, landmarks: np.ndarray) -> np.ndarray:
        """Distance (...,) between the normalising points (outer eye corners) of landmarks
        (..., L, 2); for a ``norm="interocular"`` spec."""
        a, b = self.norm_indices
        return np.linalg.norm(landmarks[..., a, :] - landmarks[..., b, :], axis=-1)


_PAIRS_68 = [
    *_mirror_run(0, 16),  # jaw
    *_mirror_run(17, 26),  # eyebrows
    (31, 35),
    (32, 34),  # nostrils
    (36, 45),
    (37, 44),
    (38, 43),
    (39, 42),
    (40, 47),
    (41, 46),  # eyes
    *_mirror_run(48, 54),  # outer upper lip
    (55, 59),
    (56, 58),  # outer lower lip
    (60, 64),
    (61, 63),  # inner upper lip
    (65, 67),  # inner lower lip
]

_PAIRS_98 = [
    *_mirror_run(0, 32),  # contour
    *zip(range(33, 38), range(46, 41, -1)),  # upper eyebrow edges 33..37 <-> 46..42
    (38, 50),
    (39, 49),
    (40, 48),
    (41, 47),  # lower eyebrow edges
    (55, 59),
    (56, 58),  # nose bottom
    (60, 72),
    (61, 71),
    (62, 70),
    (63, 69),
    (64, 68),
    (65, 75),
    (66, 74),
    (67, 73),  # eyes
    (76, 82),
    (77, 81),
    (78, 80),
    (83, 87),
    (84, 86),  # outer lips
    (88, 92),
    (89, 91),
    (93, 95),  # inner lips
    (96, 97),  # pupils
]

_PAIRS_29 = [
    (0, 1),
    (2, 3),
    (4, 6),
    (5, 7),  # eyebrows
    (8, 9),
    (10, 11),
    (12, 14),
    (13, 15),
    (16, 17),  # eyes, pupils
    (18, 19),  # nose wings
    (22, 23),  # mouth corners
]

_PAIRS_19 = [*_mirror_run(0, 5), *_mirror_run(6, 11), (12, 14), (15, 17)]

_FLIP_68 = permutation_from_pairs(68, _PAIRS_68)

DATASETS: dict[str, DatasetSpec] = {
    "300w": DatasetSpec("300w", 68, (36, 45), "interocular", 1.0, _FLIP_68),
    "300vw": DatasetSpec("300vw", 68, (36, 45), "interocular", 1.0, _FLIP_68),
    "wflw": DatasetSpec(
        "wflw", 98, (60, 72), "interocular", 1.5, permutation_from_pairs(98, _PAIRS_98)
    ),
    "cofw": DatasetSpec(
        "cofw", 29, (8, 9), "interocular", 1.5, permutation_from_pairs(29, _PAIRS_29)
    ),
    "aflw": DatasetSpec("aflw", 19, None, "box", 1.5, permutation_from_pairs(19, _PAIRS_19)),
}


def get_spec(name: str) -> DatasetSpec:
    """The spec of a dataset by (case-insensitive) name; ValueError lists the known names."""
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[key]
