"""Argument checks shared by the data modules: one clear ValueError per bad setting, raised at
construction rather than at the first batch (a DataLoader, ``range`` or RNG far from the
setting would otherwise fail with a message that does not name it)."""

from __future__ import annotations

import math

import numpy as np


def check_ints(minimum: int = 1, **values: object) -> None:
    """ValueError naming the first of ``values`` that is not an integer >= ``minimum``.

    Floats are refused even when whole (8.0), and so are NaN and bools: these are counts and
    sizes in frames or pixels.
    """
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
            need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ValueError(f"{name} must be {need}, got {value!r}")


def check_finite_non_negative(**values: float) -> None:
    """ValueError naming the first of ``values`` that is NaN, infinite or negative."""
    for name, value in values.items():
        if not 0 <= value < math.inf:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
