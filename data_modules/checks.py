"""Number checks shared by the data modules beyond the integer one (``lightning_fa.checks``): one
clear ValueError per bad setting, raised at construction rather than at the first batch."""

from __future__ import annotations

import math


def check_finite_non_negative(**values: float) -> None:
    """ValueError naming the first of ``values`` that is NaN, infinite or negative."""
    for name, value in values.items():
        if not 0 <= value < math.inf:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
