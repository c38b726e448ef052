"""Annotation readers: each format written by hand in tmp_path, read back, and bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from data_modules.formats import (
    WFLW_ATTRIBUTES,
    filter_by_attribute,
    read_cofw_mat,
    read_hrnet_csv,
    read_image_rgb,
    read_pts,
    read_pts_folder,
    read_wflw_list,
    write_pts,
)


def _pts_text(points_1based: np.ndarray, n_header: int | None = None) -> str:
    n = len(points_1based) if n_header is None else n_header
    body = "\n".join(f"{x} {y}" for x, y in points_1based)
    return f"version: 1\nn_points:  {n}\n{{\n{body}\n}}\n"


# ----------------------------------------------------------------------------- .pts


def test_read_pts_converts_one_based_to_zero_based(tmp_path: Path) -> None:
    pts = np.array([[1.0, 1.0], [10.5, 20.25], [3.0, 4.0]])
    path = tmp_path / "a.pts"
    path.write_text(_pts_text(pts))
    out = read_pts(path, expected_points=3)
    assert out.dtype == np.float32 and out.shape == (3, 2)
    np.testing.assert_allclose(out, pts - 1.0)


def test_write_pts_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    landmarks = rng.uniform(0, 300, size=(68, 2)).astype(np.float32)
    write_pts(tmp_path / "b.pts", landmarks)
    text = (tmp_path / "b.pts").read_text().splitlines()
    assert text[:3] == ["version: 1", "n_points: 68", "{"] and text[-1] == "}"
    assert float(text[3].split()[0]) == pytest.approx(landmarks[0, 0] + 1.0, abs=1e-5)
    np.testing.assert_allclose(read_pts(tmp_path / "b.pts", 68), landmarks, atol=1e-5)


def test_read_pts_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.pts"
    path.write_text("version: 1\nn_points: 3\n{\n1 2\n3 x\n5 6\n}\n")
    with pytest.raises(ValueError, match=r"bad\.pts:5: landmark 1 y is 'x' \(not a finite"):
        read_pts(path)
    path.write_text("version: 1\nn_points: 3\n{\n1 2\n3 4 5\n5 6\n}\n")
    with pytest.raises(ValueError, match=r"bad\.pts:5: expected a point line 'x y'"):
        read_pts(path)


def test_read_pts_wrong_count(tmp_path: Path) -> None:
    path = tmp_path / "short.pts"
    path.write_text(_pts_text(np.ones((67, 2)), n_header=68))
    with pytest.raises(ValueError, match=r"short\.pts: header says n_points: 68 but 67"):
        read_pts(path)
    path.write_text(_pts_text(np.ones((67, 2))))
    with pytest.raises(ValueError, match=r"short\.pts: expected 68 points, file has 67"):
        read_pts(path, expected_points=68)


def test_read_pts_missing_braces_and_file(tmp_path: Path) -> None:
    path = tmp_path / "open.pts"
    path.write_text("version: 1\nn_points: 1\n{\n1 2\n")
    with pytest.raises(ValueError, match=r"open\.pts"):
        read_pts(path)
    with pytest.raises(FileNotFoundError, match=r"nope\.pts"):
        read_pts(tmp_path / "nope.pts")


def test_read_pts_folder_skip_and_count(tmp_path: Path) -> None:
    image = np.zeros((20, 20, 3), np.uint8)
    for name in ("a", "b", "c"):
        write_pts(tmp_path / f"{name}.pts", np.ones((68, 2)))
    cv2.imwrite(str(tmp_path / "a.jpg"), image)
    cv2.imwrite(str(tmp_path / "b.png"), image)
    (tmp_path / "b.pts").write_text(_pts_text(np.ones((5, 2))))  # wrong count
    # c has no image
    with pytest.raises(ValueError, match=r"b\.pts: expected 68 points"):
        read_pts_folder(tmp_path, 68)
    records, problems = read_pts_folder(tmp_path, 68, on_error="skip")
    assert [r.image_path.name for r in records] == ["a.jpg"]
    assert len(problems) == 2 and any("c.pts" in p for p in problems)


def test_real_pts_samples_parse(shared_data: Path) -> None:
    files = sorted(shared_data.glob("images_68pts/*/*.pts")) + sorted(
        shared_data.glob("300vw_samples/*/annot/*.pts")
    )
    assert len(files) >= 10
    for path in files:
        landmarks = read_pts(path, expected_points=68)
        assert np.isfinite(landmarks).all()
        image = path.parent.parent / "imgs" / f"{path.stem}.jpg"
        if not image.exists():
            image = next(p for p in path.parent.glob(f"{path.stem}.*") if p.suffix != ".pts")
        height, width = read_image_rgb(image).shape[:2]
        # Real annotations lie inside their image (up to a few pixels of label slack).
        assert landmarks[:, 0].min() > -5 and landmarks[:, 0].max() < width + 5
        assert landmarks[:, 1].min() > -5 and landmarks[:, 1].max() < height + 5


# ----------------------------------------------------------------------------- WFLW


def _wflw_line(rng: np.random.Generator, flags: list[int], name: str) -> tuple[str, np.ndarray]:
    coords = rng.uniform(0, 500, size=196)
    fields = [f"{v:.3f}" for v in coords] + ["10", "20", "300", "310"]
    fields += [str(f) for f in flags] + [name]
    return " ".join(fields), coords.reshape(98, 2)


def test_read_wflw_list_and_attribute_filter(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    line_a, coords_a = _wflw_line(rng, [1, 0, 0, 0, 1, 0], "1--A/a.jpg")
    line_b, _ = _wflw_line(rng, [0, 0, 0, 0, 0, 1], "2--B/b.jpg")
    path = tmp_path / "list.txt"
    path.write_text(f"{line_a}\n{line_b}\n")
    records, problems = read_wflw_list(path, tmp_path / "images")
    assert problems == [] and len(records) == 2
    a = records[0]
    assert a.image_path == tmp_path / "images" / "1--A" / "a.jpg"
    np.testing.assert_allclose(a.landmarks, coords_a, atol=1e-3)
    assert a.box == (10.0, 20.0, 300.0, 310.0)
    assert a.attributes == dict(zip(WFLW_ATTRIBUTES, [True, False, False, False, True, False]))
    assert [r.image_path.name for r in filter_by_attribute(records, "occlusion")] == ["a.jpg"]
    assert [r.image_path.name for r in filter_by_attribute(records, "blur")] == ["b.jpg"]
    with pytest.raises(ValueError, match="unknown WFLW attribute"):
        filter_by_attribute(records, "hat")


def test_read_wflw_wrong_field_count(tmp_path: Path) -> None:
    line, _ = _wflw_line(np.random.default_rng(2), [0] * 6, "x.jpg")
    path = tmp_path / "list.txt"
    path.write_text(line + "\n" + line.rsplit(" ", 2)[0] + "\n")
    with pytest.raises(ValueError, match=r"list\.txt:2: expected 207 fields"):
        read_wflw_list(path, tmp_path)
    records, problems = read_wflw_list(path, tmp_path, on_error="skip")
    assert len(records) == 1 and len(problems) == 1


# ----------------------------------------------------------------------------- COFW


def _write_cofw(path: Path, images: list[np.ndarray], phis: np.ndarray, boxes: np.ndarray) -> None:
    """Write what MATLAB's save -v7.3 produces: column-major arrays, images as object refs."""
    with h5py.File(path, "w") as f:
        group = f.create_group("#refs#")
        refs = []
        for i, image in enumerate(images):
            refs.append(group.create_dataset(f"img{i}", data=image.T).ref)
        ref_data = np.array(refs, dtype=h5py.ref_dtype).reshape(1, -1)
        f.create_dataset("IsT", data=ref_data, dtype=h5py.ref_dtype)
        f.create_dataset("phisT", data=phis.T)
        f.create_dataset("bboxesT", data=boxes.T)


def test_read_cofw_mat(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 255, size=(40, 30), dtype=np.uint8)  # H=40, W=30
    colour = rng.integers(0, 255, size=(25, 35, 3), dtype=np.uint8)
    phis = np.zeros((2, 87))
    phis[:, :29] = rng.uniform(1, 30, size=(2, 29))
    phis[:, 29:58] = rng.uniform(1, 25, size=(2, 29))
    phis[0, 58 + 5] = 1  # point 5 of image 0 occluded
    boxes = np.array([[3.0, 4.0, 20.0, 21.0], [1.0, 1.0, 10.0, 12.0]])
    path = tmp_path / "COFW_test.mat"
    _write_cofw(path, [grey, colour], phis, boxes)

    records = read_cofw_mat(path, "test")
    assert len(records) == 2
    np.testing.assert_array_equal(records[0].image, grey)
    np.testing.assert_array_equal(records[1].image, colour)
    np.testing.assert_allclose(records[0].landmarks[:, 0], phis[0, :29] - 1, atol=1e-5)
    np.testing.assert_allclose(records[0].landmarks[:, 1], phis[0, 29:58] - 1, atol=1e-5)
    assert records[0].visible.sum() == 28 and not records[0].visible[5]
    assert records[0].box == (2.0, 3.0, 22.0, 24.0)
    with pytest.raises(ValueError, match="missing"):
        read_cofw_mat(path, "train")


def test_read_cofw_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "old.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)
    with pytest.raises(ValueError, match=r"old\.mat: not a MATLAB v7\.3"):
        read_cofw_mat(path, "train")


# ----------------------------------------------------------------------------- HRNet CSV


def test_read_hrnet_csv_300w_and_aflw(tmp_path: Path) -> None:
    pts = np.arange(136, dtype=np.float64).reshape(68, 2) / 3.0
    header = "image_name,scale,center_w,center_h," + ",".join(f"p{i}" for i in range(136))
    row = "ibug/x.jpg,1.5,100.0,120.0," + ",".join(f"{v:.6f}" for v in pts.ravel())
    path = tmp_path / "face_landmarks_300w_valid.csv"
    path.write_text(f"{header}\n{row}\n")
    records, _ = read_hrnet_csv(path, tmp_path / "images", 68)
    (r,) = records
    assert r.image_path == tmp_path / "images" / "ibug" / "x.jpg"
    np.testing.assert_allclose(r.landmarks, pts, atol=1e-5)
    assert r.box == pytest.approx((-50.0, -30.0, 250.0, 270.0))  # side 1.5 * 200 around centre

    aflw_pts = np.ones(38)
    aflw = tmp_path / "aflw.csv"
    aflw.write_text("h\nimg.jpg,0.8,150.5,60,70," + ",".join(map(str, aflw_pts)) + "\n")
    (a,), _ = read_hrnet_csv(aflw, tmp_path, 19, has_box_size=True)
    assert a.attributes["box_size"] == 150.5
    assert a.box == pytest.approx((-20.0, -10.0, 140.0, 150.0))


def test_read_hrnet_csv_wrong_columns(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    good = "a.jpg,1,2,3," + ",".join(["1"] * 38)
    path.write_text(f"header\n{good}\n{good},7\n")
    with pytest.raises(ValueError, match=r"bad\.csv:3: expected 42 columns \(path, scale"):
        read_hrnet_csv(path, tmp_path, 19)
    records, problems = read_hrnet_csv(path, tmp_path, 19, on_error="skip")
    assert len(records) == 1 and len(problems) == 1


def test_read_image_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        read_image_rgb(tmp_path / "missing.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"junk\.jpg"):
        read_image_rgb(tmp_path / "junk.jpg")
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    rgb = read_image_rgb(tmp_path / "red.png")
    assert rgb.shape == (4, 5, 3) and (rgb[..., 0] == 200).all() and (rgb[..., 2] == 0).all()
