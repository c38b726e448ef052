"""Replaceable heatmap backbones: protocol, registry, safe checkpoints, built-in models.

Importing this package registers the built-in names (hrnet_w18, hrnet_lite, hourglass, cpm, dlib,
mediapipe); their classes are the ones a checkpoint may ask to rebuild (`allow_checkpoint_class`
adds more).
"""

from .adapters import (
    CoordinateDetectorBackbone,
    DlibBackbone,
    ModuleBackbone,
    TorchScriptBackbone,
    dlib_face_detector,
)
from .base import (
    Backbone,
    allow_checkpoint_class,
    build_from_spec,
    create_backbone,
    list_backbones,
    load_checkpoint,
    read_checkpoint,
    register_backbone,
)
from .cpm import CPM
from .hourglass import StackedHourglass
from .hrnet import HRNet, HRNetConfig
from .mediapipe import IBUG68_FROM_MESH, MediaPipeFaceMesh

__all__ = [
    "CPM",
    "IBUG68_FROM_MESH",
    "Backbone",
    "CoordinateDetectorBackbone",
    "DlibBackbone",
    "HRNet",
    "HRNetConfig",
    "MediaPipeFaceMesh",
    "ModuleBackbone",
    "StackedHourglass",
    "TorchScriptBackbone",
    "allow_checkpoint_class",
    "build_from_spec",
    "create_backbone",
    "dlib_face_detector",
    "list_backbones",
    "load_checkpoint",
    "read_checkpoint",
    "register_backbone",
]
