"""BlazeFace, MediaPipe's face detector, for the tracker (`--detector blazeface`; optional extra
`mediapipe`, see `lightning_fa.backbones.mediapipe` for the install)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightning_fa.backbones.mediapipe import (
    ImageGraph,
    bundled_model,
    check_model_file,
    import_mediapipe,
    proto_string,
)
from lightning_fa.tracking.boxes import BoxCalibration
from lightning_fa.tracking.options import check_fraction

# Short range: faces within about 2 m of a phone camera (the bundled default); full range: small
# faces too, slower. Per range: its subgraph, the model file the wheel bundles for it, and its
# box calibration, measured like the other detectors' (median over every 5th frame of the four
# clips in ../shared/data/videos against dlib's 68-point landmark boxes).
_RANGES = {
    False: ("FaceDetectionShortRange", "mediapipe/modules/face_detection/face_detection_short_range.tflite", BoxCalibration(dy=0.01, scale=0.98)),
    True: ("FaceDetectionFullRange", "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite", BoxCalibration(dy=0.07, scale=0.92)),
}  # fmt: skip

_DETECTION_GRAPH = """
input_stream: "image"
output_stream: "detections"
node {
  calculator: "%(subgraph)s"
  input_stream: "IMAGE:image"
  output_stream: "DETECTIONS:detections"
  node_options { [type.googleapis.com/mediapipe.FaceDetectionOptions] {
    model_path: "%(model)s"
    min_score_thresh: %(min_score)r
    delegate { xnnpack {} }
  } }
}
"""


class BlazeFaceDetector:
    """MediaPipe's BlazeFace. Returns boxes (N, 5): x1, y1, x2, y2, score, like the tracker's
    other detectors.

    `full_range`: the full-range model (smaller faces, slower) instead of the short-range one.
    `model_path`: a BlazeFace `.tflite` in place of the bundled one (the same architecture as
    the chosen range; newer MediaPipe releases bundle none). `min_score`: detections below it
    are dropped.
    """

    def __init__(
        self, full_range: bool = False, model_path: str | Path | None = None, min_score: float = 0.5
    ) -> None:
        check_fraction(min_score, "min_score")
        import_mediapipe()
        from mediapipe.python import packet_getter

        subgraph, bundled, self.calibration = _RANGES[bool(full_range)]
        if model_path is None:
            model = bundled_model(bundled)
        else:
            model = check_model_file(model_path, (".tflite",), "face detector model")
        self._graph = ImageGraph(
            _DETECTION_GRAPH
            % {"subgraph": subgraph, "model": proto_string(model), "min_score": float(min_score)},
            {"detections": packet_getter.get_proto_list},
            model=model,
        )

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        boxes = []
        for detection in self._graph(rgb).get("detections", []):
            box = detection.location_data.relative_bounding_box
            x1, y1 = box.xmin * width, box.ymin * height
            boxes.append(
                [x1, y1, x1 + box.width * width, y1 + box.height * height, detection.score[0]]
            )
        return np.array(boxes, dtype=np.float64).reshape(-1, 5)
