"""lightning_fa: stable video face alignment.

tracker = lightning_fa.Tracker()   # dlib + the shipped stabiliser (lightning_fa.api)
faces = tracker(frame_rgb)         # per frame: track_id, confidence, landmarks (68, 2)
"""

from typing import Any

__all__ = ["Tracker"]


def __getattr__(name: str) -> Any:
    # `import lightning_fa` stays cheap (the command line's --help, subpackages): torch, OpenCV
    # and the tracker load on first use of the API.
    if name == "Tracker":
        from lightning_fa.api import Tracker

        return Tracker
    raise AttributeError(f"module 'lightning_fa' has no attribute {name!r}")
