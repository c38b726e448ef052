"""Pseudo-videos from real annotated stills: a piecewise-affine warp of the landmark mesh along the
generated trajectories."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy.spatial import Delaunay

from data_modules.formats import log_skipped, read_image_rgb, read_pts_folder
from data_modules.synthetic.face import NUM_LANDMARKS, SPEC
from data_modules.transforms import DRAW_SHIFT, fixed_point

# --------------------------------------------------------------------------- warping real stills


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) least-squares similarity (rotation, uniform scale, translation) mapping src -> dst."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    zs = (src - mu_s) @ (1.0, 1j)
    zd = (dst - mu_d) @ (1.0, 1j)
    c = (np.conj(zs) @ zd) / (np.abs(zs) ** 2).sum()
    m = np.array([[c.real, -c.imag], [c.imag, c.real]])
    return np.concatenate([m, (mu_d - m @ mu_s)[:, None]], axis=1)


def piecewise_affine_warp(
    image: np.ndarray, src_points: np.ndarray, dst_points: np.ndarray, size: int
) -> np.ndarray:
    """Warp ``image`` so that ``src_points`` land on ``dst_points`` in a (size, size) output.

    Backward mapping through the Delaunay triangles of the destination points plus anchors just
    outside the frame; the anchors follow the best similarity, so the scene moves rigidly with the
    head and only the face mesh deforms. Every landmark is a mesh vertex: exact correspondence.
    """
    to_src = similarity_transform(dst_points, src_points)
    ring = np.array([-2.0, (size - 1) / 2.0, size + 1.0])
    anchors = np.array([(x, y) for x in ring for y in ring if (x, y) != (ring[1], ring[1])])
    dst = np.concatenate([dst_points, anchors])
    src = np.concatenate([src_points, anchors @ to_src[:, :2].T + to_src[:, 2]])
    tri = Delaunay(dst).simplices
    corners = np.concatenate([dst[tri], np.ones((len(tri), 3, 1))], axis=2)  # (K, 3, 3)
    singular = np.abs(np.linalg.det(corners)) < 1e-6
    corners[singular] = np.eye(3)
    affines = np.linalg.solve(corners, src[tri])  # (K, 3, 2): [x y 1] @ A = source point
    affines[singular] = to_src.T
    affines = np.concatenate([affines, to_src.T[None]])  # last: fallback for uncovered pixels
    label = np.full((size, size), len(tri), np.int32)
    # One cv2 call per triangle (~150): far cheaper than testing every pixel against every one.
    for k, poly in enumerate(fixed_point(dst[tri])):
        cv2.fillConvexPoly(label, poly, k, cv2.LINE_8, DRAW_SHIFT)
    coeff = affines[label].astype(np.float32)  # (H, W, 3, 2)
    grid = np.arange(size, dtype=np.float32)
    maps = grid[None, :, None] * coeff[:, :, 0] + grid[:, None, None] * coeff[:, :, 1]
    maps += coeff[:, :, 2]
    return cv2.remap(
        image, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


class StillSources:
    """Annotated stills (image + 68-point ``.pts`` pairs, searched recursively under a folder)."""

    def __init__(self, source_dir: str | Path, cache_size: int = 64) -> None:
        root = Path(source_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"source_dir not found: {root} (expected image + .pts pairs)")
        self.records = []
        for folder in sorted({p.parent for p in root.rglob("*.pts")}):
            records, problems = read_pts_folder(folder, NUM_LANDMARKS, "skip")
            self.records += records
            log_skipped(f"source_dir {folder}", problems)  # a bad .pts is left out, not silently
        if not self.records:
            raise ValueError(f"source_dir {root} holds no image + 68-point .pts pairs")
        self._cache: dict[tuple[int, float], tuple[np.ndarray, np.ndarray]] = {}
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int, target_iod: float) -> tuple[np.ndarray, np.ndarray]:
        """(RGB image, (68, 2) landmarks), downscaled so the inter-ocular distance is at most
        ``target_iod`` (the warp then never minifies much: no aliasing). Cached per process."""
        key = (index, target_iod)
        if key not in self._cache:
            record = self.records[index]
            image = read_image_rgb(record.image_path)
            points = record.landmarks.astype(np.float64)
            iod = float(np.linalg.norm(points[SPEC.norm_indices[0]] - points[SPEC.norm_indices[1]]))
            factor = target_iod / max(iod, 1e-6)
            if factor < 1.0:
                h, w = image.shape[:2]
                new_w, new_h = max(1, round(w * factor)), max(1, round(h * factor))
                image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
                points = (points + 0.5) * (new_w / w, new_h / h) - 0.5
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = (image, points)
        return self._cache[key]
