"""The integer check every layer shares: counts and sizes (frames, pixels, landmarks, layers,
workers, seeds) are refused at construction with one ValueError naming the setting, instead of
failing later in a DataLoader, ``range``, RNG or convolution far from it."""

from __future__ import annotations

import numpy as np


def check_ints(
    minimum: int = 1,
    /,
    *,
    need: str | None = None,
    none_allowed: bool = False,
    **values: object,
) -> None:
    """ValueError naming the first of ``values`` that is not an integer >= ``minimum``.

    Floats are refused even when whole (8.0), and so are NaN, text and bools: a count given as
    8.0 or "68" must not be converted silently. ``none_allowed``: ``None`` means "no limit" and
    passes. ``need`` is the requirement as the message states it (default "a positive integer",
    or "an integer >= minimum"); callers whose messages users and tests already know pass theirs.
    Names that are not identifiers (command-line options) are given as ``**{"--max-frames": n}``.
    """
    for name, value in values.items():
        if value is None and none_allowed:
            continue
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
            if need is None:
                need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ValueError(f"{name} must be {need}, got {value!r}")
