"""Readers for the landmark annotation formats (300W .pts, WFLW lists, COFW .mat, HRNet CSV).

Every reader returns plain ``LandmarkRecord`` objects with 0-based (x, y) landmarks. Malformed
input raises ``ValueError`` naming the file, the line (where there is one) and the expected form;
that includes a binary or non-UTF-8 file and any number that is not finite (NaN, inf), which would
otherwise turn the sample's landmarks, crop and normaliser into NaN. Readers with ``on_error``
turn such a record into a skipped one (the message goes to ``problems``) instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]

WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
WFLW_POINTS = 98
COFW_POINTS = 29


@dataclass
class LandmarkRecord:
    """One annotated face.

    landmarks: (L, 2) float32, 0-based pixel coordinates in the image; visible: (L,) bool;
    box: (x1, y1, x2, y2) face box in pixels or None (then derived from the landmarks);
    attributes: dataset-specific extras (WFLW flags, AFLW ``box_size``, ...);
    image: the decoded image when it lives inside the annotation file (COFW), else None.
    """

    image_path: Path
    landmarks: np.ndarray
    visible: np.ndarray
    box: tuple[float, float, float, float] | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    image: np.ndarray | None = field(default=None, repr=False)

    @property
    def num_landmarks(self) -> int:
        return int(self.landmarks.shape[0])


def _all_visible(num: int) -> np.ndarray:
    return np.ones(num, dtype=bool)


def read_text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (a leading BOM is dropped); ValueError naming the file
    when it is binary or not UTF-8, instead of a bare UnicodeDecodeError without the path."""
    data = path.read_bytes()
    if b"\0" in data:
        raise ValueError(f"{path}: not a text file (it holds NUL bytes: an image or archive?)")
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at byte {err.start})"
        ) from None


def parse_finite(fields: Sequence[str], where: str, name: Callable[[int], str]) -> np.ndarray:
    """``fields`` as float64; ValueError ``"<where>: <name(i)> is '<text>' (not a finite
    number)"`` for the first field that does not parse or is NaN / inf."""
    try:
        values = np.array(fields, dtype=np.float64)
        if np.isfinite(values).all():
            return values
    except ValueError:
        pass
    # Only a bad record gets here: walk it to name the first offending field.
    values = np.empty(len(fields))
    for i, text in enumerate(fields):
        try:
            values[i] = float(text)
        except ValueError:
            values[i] = math.nan
        if not math.isfinite(values[i]):
            raise ValueError(f"{where}: {name(i)} is {text!r} (not a finite number)")
    return values


def _coordinate_name(index: int) -> str:
    """Name of entry ``index`` of a flat x0 y0 x1 y1 ... list (landmarks 0-based)."""
    return f"landmark {index // 2} {'xy'[index % 2]}"


# ----------------------------------------------------------------------------- 300W .pts


def read_pts(path: str | Path, expected_points: int | None = None) -> np.ndarray:
    """Read an iBUG ``.pts`` file -> (N, 2) float32 0-based landmarks (the file is 1-based).

    Form: ``version: 1`` / ``n_points: N`` / ``{`` / N lines ``x y`` / ``}``. The header's
    n_points must match the number of lines and ``expected_points`` when given. Every
    coordinate must be a finite number (NaN / inf raise, naming the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmark file not found: {path}")
    lines = read_text_lines(path)
    n_points: int | None = None
    points: list[tuple[float, float]] = []
    inside = False
    closed = False
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if not inside:
            if line == "{":
                inside = True
            elif line.lower().startswith("n_points"):
                try:
                    n_points = int(line.split(":", 1)[1])
                except (IndexError, ValueError):
                    raise ValueError(
                        f"{path}:{lineno}: expected 'n_points: <integer>', got {raw!r}"
                    ) from None
            elif not line.lower().startswith("version"):
                raise ValueError(
                    f"{path}:{lineno}: expected a header line ('version: 1', 'n_points: N' or "
                    f"'{{'), got {raw!r}"
                )
            continue
        if line == "}":
            closed = True
            break
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(
                f"{path}:{lineno}: expected a point line 'x y' (two numbers), got {raw!r}"
            )
        x, y = parse_finite(
            parts, f"{path}:{lineno}", lambda axis: f"landmark {len(points)} {'xy'[axis]}"
        )
        points.append((x, y))
    if not inside or not closed:
        raise ValueError(f"{path}: expected the points between a '{{' line and a '}}' line")
    if n_points is None:
        raise ValueError(f"{path}: missing the 'n_points: N' header line")
    if len(points) != n_points:
        raise ValueError(
            f"{path}: header says n_points: {n_points} but {len(points)} points follow"
        )
    if expected_points is not None and n_points != expected_points:
        raise ValueError(f"{path}: expected {expected_points} points, file has {n_points}")
    return np.asarray(points, dtype=np.float32).reshape(-1, 2) - 1.0


def write_pts(path: str | Path, landmarks: np.ndarray) -> None:
    """Write (N, 2) 0-based landmarks as an iBUG ``.pts`` file (1-based, as the format wants)."""
    pts = np.asarray(landmarks, dtype=np.float64) + 1.0
    body = "\n".join(f"{x:.6f} {y:.6f}" for x, y in pts)
    Path(path).write_text(f"version: 1\nn_points: {len(pts)}\n{{\n{body}\n}}\n")


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")


def image_for_annotation(pts_path: Path) -> Path:
    """The image next to a .pts file with the same stem; FileNotFoundError when there is none."""
    for suffix in IMAGE_SUFFIXES:
        for candidate in (pts_path.with_suffix(suffix), pts_path.with_suffix(suffix.upper())):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        f"no image next to {pts_path} (looked for the same stem with {', '.join(IMAGE_SUFFIXES)})"
    )


def read_pts_folder(
    folder: str | Path, expected_points: int | None = 68, on_error: OnError = "raise"
) -> tuple[list[LandmarkRecord], list[str]]:
    """Records for every ``*.pts`` in ``folder`` (sorted) with its image next to it.

    Returns (records, problems): with ``on_error="skip"`` bad files are left out and described
    in ``problems``; with ``"raise"`` the first problem is raised.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"annotation folder not found: {folder}")

    def one(pts_path: Path) -> LandmarkRecord:
        landmarks = read_pts(pts_path, expected_points)
        return LandmarkRecord(
            image_for_annotation(pts_path), landmarks, _all_visible(len(landmarks))
        )

    return collect(sorted(folder.glob("*.pts")), one, on_error)


def collect(
    items: Iterable[Any], build: Callable[[Any], LandmarkRecord], on_error: OnError
) -> tuple[list[LandmarkRecord], list[str]]:
    """Build a record per item; on ``"skip"``, failed items become messages instead of errors."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    records: list[LandmarkRecord] = []
    problems: list[str] = []
    for item in items:
        try:
            records.append(build(item))
        except (ValueError, FileNotFoundError) as err:
            if on_error == "raise":
                raise
            problems.append(str(err))
    return records, problems


# ----------------------------------------------------------------------------- WFLW


def read_wflw_list(
    path: str | Path, image_root: str | Path, on_error: OnError = "raise"
) -> tuple[list[LandmarkRecord], list[str]]:
    """Read a WFLW annotation list (``list_98pt_rect_attr_{train,test}.txt``).

    Each line: 196 coordinates (x0 y0 ... x97 y97), 4 box values (x_min y_min x_max y_max),
    6 attribute flags (pose expression illumination makeup occlusion blur), image name. A line
    with a wrong field count or a value that is not a finite number raises, or with
    ``on_error="skip"`` is left out and described (file:line) in the problems.
    """
    path, image_root = Path(path), Path(image_root)
    if not path.is_file():
        raise FileNotFoundError(f"WFLW list not found: {path}")
    expected = 2 * WFLW_POINTS + 4 + len(WFLW_ATTRIBUTES) + 1

    def field_name(index: int) -> str:
        if index < 2 * WFLW_POINTS:
            return _coordinate_name(index)
        if index < 2 * WFLW_POINTS + 4:
            return f"box value {index - 2 * WFLW_POINTS}"
        return f"attribute {WFLW_ATTRIBUTES[index - 2 * WFLW_POINTS - 4]!r}"

    def one(numbered: tuple[int, str]) -> LandmarkRecord:
        lineno, line = numbered
        parts = line.split()
        if len(parts) != expected:
            raise ValueError(
                f"{path}:{lineno}: expected {expected} fields ({WFLW_POINTS} landmarks = "
                f"{2 * WFLW_POINTS} coordinates, 4 box values, 6 attribute flags, image name), "
                f"got {len(parts)}"
            )
        values = parse_finite(parts[:-1], f"{path}:{lineno}", field_name)
        landmarks = values[: 2 * WFLW_POINTS].reshape(-1, 2).astype(np.float32)
        box = tuple(float(v) for v in values[2 * WFLW_POINTS : 2 * WFLW_POINTS + 4])
        flags = values[2 * WFLW_POINTS + 4 :].astype(int)
        return LandmarkRecord(
            image_root / parts[-1],
            landmarks,
            _all_visible(WFLW_POINTS),
            box,  # type: ignore[arg-type]
            {name: bool(flag) for name, flag in zip(WFLW_ATTRIBUTES, flags, strict=True)},
        )

    lines = [(n, text) for n, text in enumerate(read_text_lines(path), 1) if text.strip()]
    return collect(lines, one, on_error)


def filter_by_attribute(records: Sequence[LandmarkRecord], attribute: str) -> list[LandmarkRecord]:
    """The WFLW records flagged with ``attribute`` (one of ``WFLW_ATTRIBUTES``)."""
    if attribute not in WFLW_ATTRIBUTES:
        raise ValueError(f"unknown WFLW attribute {attribute!r}; expected one of {WFLW_ATTRIBUTES}")
    return [r for r in records if r.attributes.get(attribute)]


# ----------------------------------------------------------------------------- COFW

_COFW_KEYS = {"train": ("IsTr", "phisTr", "bboxesTr"), "test": ("IsT", "phisT", "bboxesT")}


def read_cofw_mat(
    path: str | Path, split: Literal["train", "test"] = "train"
) -> list[LandmarkRecord]:
    """Read COFW from a MATLAB v7.3 (HDF5) ``.mat`` file with h5py.

    Keys ``IsTr/phisTr/bboxesTr`` (train) or ``IsT/phisT/bboxesT`` (test). Images are object
    references to uint8 arrays (stored transposed by MATLAB); each phis row holds 29 x, 29 y and
    29 occlusion flags (1 = occluded), 1-based; boxes are (x, y, w, h), 1-based. A NaN / inf in
    a phis or box row raises, naming the file and the sample index (there is no skip mode: the
    file is one unit).
    """
    import h5py

    path = Path(path)
    if split not in _COFW_KEYS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not path.is_file():
        raise FileNotFoundError(f"COFW .mat file not found: {path}")
    image_key, phis_key, box_key = _COFW_KEYS[split]
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(
            f"{path}: not a MATLAB v7.3 (HDF5) file; re-save it with save(..., '-v7.3') ({err})"
        ) from None
    with handle as mat:
        missing = [k for k in (image_key, phis_key) if k not in mat]
        if missing:
            raise ValueError(f"{path}: missing {missing} for split {split!r}; has {sorted(mat)}")
        # MATLAB stores column-major: an (N, 87) matrix reads back as (87, N).
        phis = np.asarray(mat[phis_key], dtype=np.float64).T
        if phis.ndim != 2 or phis.shape[1] != 3 * COFW_POINTS:
            raise ValueError(
                f"{path}: {phis_key} must be N x {3 * COFW_POINTS} (29 x, 29 y, 29 occlusion), "
                f"got {phis.shape}"
            )
        refs = np.asarray(mat[image_key]).reshape(-1)
        if len(refs) != len(phis):
            raise ValueError(
                f"{path}: {len(refs)} images in {image_key} but {len(phis)} rows in {phis_key}"
            )
        boxes = np.asarray(mat[box_key], dtype=np.float64).T if box_key in mat else None
        for key, table in ((phis_key, phis), (box_key, boxes)):
            if table is not None and not np.isfinite(table).all():
                sample, column = np.argwhere(~np.isfinite(table))[0]
                raise ValueError(
                    f"{path}: sample {sample}: {key} column {column} is {table[sample, column]} "
                    "(not a finite number)"
                )
        records = []
        for i, (ref, row) in enumerate(zip(refs, phis, strict=True)):
            image = np.asarray(mat[ref], dtype=np.uint8).T  # undo MATLAB's transposition
            if image.ndim == 3 and image.shape[2] == 3:
                image = np.ascontiguousarray(image)
            landmarks = np.stack([row[:COFW_POINTS], row[COFW_POINTS : 2 * COFW_POINTS]], axis=1)
            box = None
            if boxes is not None:
                x, y, w, h = boxes[i]
                box = (x - 1.0, y - 1.0, x - 1.0 + w, y - 1.0 + h)
            records.append(
                LandmarkRecord(
                    path.with_name(f"{path.stem}_{split}_{i:05d}"),
                    (landmarks - 1.0).astype(np.float32),
                    row[2 * COFW_POINTS :] == 0,
                    box,
                    {"occluded": row[2 * COFW_POINTS :] != 0},
                    image=image,
                )
            )
    return records


# ----------------------------------------------------------------------------- HRNet CSV


def read_hrnet_csv(
    path: str | Path,
    image_root: str | Path,
    num_landmarks: int,
    has_box_size: bool = False,
    on_error: OnError = "raise",
) -> tuple[list[LandmarkRecord], list[str]]:
    """Read an HRNet face-alignment CSV (one header line, then one face per line).

    Columns: ``path, scale, [box_size,] center_w, center_h, x0, y0, ...`` with ``scale`` = box
    side / 200 (the 1.25 enlargement is applied at crop time) and ``box_size`` only in AFLW.
    Coordinates are taken as 0-based, as the HRNet loaders treat them. The record's box is the
    square of side ``scale * 200`` around the centre; ``box_size`` goes to the attributes. A line
    with a wrong column count or a value that is not a finite number raises, or with
    ``on_error="skip"`` is left out and described (file:line) in the problems.
    """
    path, image_root = Path(path), Path(image_root)
    if not path.is_file():
        raise FileNotFoundError(f"CSV annotation file not found: {path}")
    leading = 5 if has_box_size else 4
    expected = leading + 2 * num_landmarks
    form = (
        "path, scale, " + ("box_size, " if has_box_size else "") + "center_w, center_h, x0, y0, ..."
    )
    leading_names = ("scale", *(("box_size",) if has_box_size else ()), "center_w", "center_h")

    def column_name(index: int) -> str:  # index into the columns after the image path
        if index < len(leading_names):
            return leading_names[index]
        return _coordinate_name(index - len(leading_names))

    def one(numbered: tuple[int, str]) -> LandmarkRecord:
        lineno, line = numbered
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != expected:
            raise ValueError(
                f"{path}:{lineno}: expected {expected} columns ({form} for {num_landmarks} "
                f"points), got {len(parts)}"
            )
        values = parse_finite(parts[1:], f"{path}:{lineno}", column_name)
        scale = values[0]
        attributes: dict[str, Any] = {}
        if has_box_size:
            attributes["box_size"] = float(values[1])
        cx, cy = values[leading - 3], values[leading - 2]
        half = scale * 100.0
        return LandmarkRecord(
            image_root / parts[0],
            values[leading - 1 :].reshape(-1, 2).astype(np.float32),
            _all_visible(num_landmarks),
            (cx - half, cy - half, cx + half, cy + half),
            attributes,
        )

    lines = read_text_lines(path)
    body = [(n, text) for n, text in enumerate(lines, 1) if n > 1 and text.strip()]
    return collect(body, one, on_error)


# ----------------------------------------------------------------------------- images


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file into an (H, W, 3) RGB uint8 array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: could not be decoded as an image (expected jpg/png/ppm/bmp)")
    return np.ascontiguousarray(image[..., ::-1])


def record_image_rgb(record: LandmarkRecord) -> np.ndarray:
    """The record's image as (H, W, 3) RGB uint8 (in-memory COFW images are expanded to 3)."""
    if record.image is None:
        return read_image_rgb(record.image_path)
    image = record.image
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return image


def log_skipped(source: str, problems: Sequence[str]) -> None:
    """One summary log line for skipped samples (the first few reasons included)."""
    if problems:
        head = "; ".join(problems[:3])
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        log.warning("%s: skipped %d bad samples: %s%s", source, len(problems), head, more)
