"""Bad numbers and mismatched counts are refused where they enter (issue #16 items 4-5).

Annotation files with NaN / inf / junk values, binary or non-UTF-8 files and wrong landmark
counts; metric inputs that mix landmark counts; non-finite decoder / loss settings; bad
DataModule sizes. Each case expects one ValueError naming the file (line, sample) and the value.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from data_modules.formats import (
    read_cofw_mat,
    read_hrnet_csv,
    read_pts,
    read_pts_folder,
    read_wflw_list,
    write_pts,
)
from data_modules.image import LandmarkDataModule
from data_modules.synthetic import StillSources, SyntheticDataModule
from data_modules.video import Video300VWDataModule
from data_modules.video_files import load_300vw_split, read_300vw_video
from lightning_fa.heatmaps import decode, pdc, render_gaussian
from lightning_fa.losses import JitterLoss
from lightning_fa.metrics import VideoStability
from lightning_fa.metrics import functional as F

BAD_TEXT = ["nan", "inf", "-inf", "NaN", "abc"]


def _pts(points: np.ndarray, bad: str | None = None) -> str:
    """A .pts of ``points``; ``bad`` replaces the y of landmark 1, which sits on line 5."""
    lines = [f"{x} {y}" for x, y in points]
    if bad is not None:
        lines[1] = f"{points[1, 0]} {bad}"
    return "version: 1\nn_points: {}\n{{\n{}\n}}\n".format(len(points), "\n".join(lines))


def _wflw_line(bad: str | None = None, points: int = 98) -> str:
    """One WFLW list line; ``bad`` replaces the y of landmark 3 (field 7)."""
    fields = [f"{10.0 + i:.1f}" for i in range(2 * points)] + ["1", "2", "300", "310"]
    fields += ["0"] * 6 + ["a/b.jpg"]
    if bad is not None:
        fields[7] = bad
    return " ".join(fields)


def _hrnet_row(bad: str | None = None, points: int = 68) -> str:
    """One 300W HRNet CSV row; ``bad`` replaces the x of landmark 2 (column 4 + 4)."""
    fields = ["a.jpg", "1.5", "100", "120"] + [f"{5.0 + i}" for i in range(2 * points)]
    if bad is not None:
        fields[8] = bad
    return ",".join(fields)


def _expect(match_file: str, where: str, bad: str):
    """pytest.raises for one line naming the file, the place and the value."""
    return pytest.raises(ValueError, match=rf"{match_file}.*{where}.*{re.escape(repr(bad))}")


# ----------------------------------------------------------------------------- readers


@pytest.mark.parametrize("bad", BAD_TEXT)
def test_pts_non_finite_value_names_file_line_and_value(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "face.pts"
    path.write_text(_pts(np.full((3, 2), 7.0), bad))
    with _expect(r"face\.pts:5: ", "landmark 1 y", bad):
        read_pts(path)


@pytest.mark.parametrize("bad", BAD_TEXT)
def test_wflw_non_finite_value_names_file_line_and_value(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "list.txt"
    path.write_text(f"{_wflw_line()}\n{_wflw_line(bad)}\n")
    with _expect(r"list\.txt:2: ", "landmark 3 y", bad):
        read_wflw_list(path, tmp_path)
    # The skip policy of this reader: the bad line is left out and described, never kept.
    records, problems = read_wflw_list(path, tmp_path, on_error="skip")
    assert len(records) == 1 and np.isfinite(records[0].landmarks).all()
    assert len(problems) == 1 and "list.txt:2" in problems[0] and repr(bad) in problems[0]


@pytest.mark.parametrize("bad", BAD_TEXT)
def test_hrnet_csv_non_finite_value_names_file_line_and_value(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "faces.csv"
    path.write_text(f"header\n{_hrnet_row()}\n{_hrnet_row(bad)}\n")
    with _expect(r"faces\.csv:3: ", "landmark 2 x", bad):
        read_hrnet_csv(path, tmp_path, 68)
    records, problems = read_hrnet_csv(path, tmp_path, 68, on_error="skip")
    assert len(records) == 1 and len(problems) == 1 and "faces.csv:3" in problems[0]


def test_hrnet_csv_non_finite_scale_is_named(tmp_path: Path) -> None:
    path = tmp_path / "faces.csv"
    path.write_text("header\n" + _hrnet_row().replace(",1.5,", ",inf,", 1) + "\n")
    with _expect(r"faces\.csv:2: ", "scale", "inf"):
        read_hrnet_csv(path, tmp_path, 68)


@pytest.mark.parametrize("bad", BAD_TEXT)
def test_pts_folder_skip_leaves_the_bad_file_out(tmp_path: Path, bad: str) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"")  # only its existence matters to the reader
    (tmp_path / "b.png").write_bytes(b"")
    write_pts(tmp_path / "a.pts", np.full((68, 2), 5.0))
    (tmp_path / "b.pts").write_text(_pts(np.full((68, 2), 5.0), bad))
    records, problems = read_pts_folder(tmp_path, 68, on_error="skip")
    assert [r.image_path.name for r in records] == ["a.png"]
    assert len(problems) == 1 and "b.pts:5" in problems[0] and repr(bad) in problems[0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("table", ["phisT", "bboxesT"])
def test_cofw_non_finite_value_names_file_and_sample(
    tmp_path: Path, bad: float, table: str
) -> None:
    phis = np.ones((3, 87))
    boxes = np.ones((3, 4))
    (phis if table == "phisT" else boxes)[2, 3] = bad
    path = tmp_path / "COFW_test.mat"
    with h5py.File(path, "w") as f:
        group = f.create_group("#refs#")
        refs = [
            group.create_dataset(f"img{i}", data=np.zeros((8, 8), np.uint8)).ref for i in range(3)
        ]
        f.create_dataset("IsT", data=np.array(refs, dtype=h5py.ref_dtype).reshape(1, -1))
        f.create_dataset("phisT", data=phis.T)
        f.create_dataset("bboxesT", data=boxes.T)
    with pytest.raises(ValueError, match=rf"COFW_test\.mat: sample 2: {table} column 3 is {bad}"):
        read_cofw_mat(path, "test")


def _300vw_video(folder: Path, bad: str | None = None) -> None:
    """Two annotated frames (no decodable video: annotations are read without it)."""
    (folder / "annot").mkdir(parents=True)
    (folder / "vid.avi").write_bytes(b"")
    write_pts(folder / "annot" / "000001.pts", np.full((68, 2), 5.0))
    (folder / "annot" / "000002.pts").write_text(_pts(np.full((68, 2), 5.0), bad))


@pytest.mark.parametrize("bad", BAD_TEXT)
def test_300vw_frame_annotation_non_finite_names_the_frame_file(tmp_path: Path, bad: str) -> None:
    _300vw_video(tmp_path / "401", bad)
    with _expect(r"000002\.pts:5: ", "landmark 1 y", bad):
        read_300vw_video(tmp_path / "401")


def test_300vw_split_skip_leaves_the_video_with_a_bad_frame_out(tmp_path: Path) -> None:
    _300vw_video(tmp_path / "410")
    _300vw_video(tmp_path / "411", "nan")
    records, problems = load_300vw_split(tmp_path, "scenario3", on_error="skip")
    assert [r.video_id for r in records] == ["410"]
    assert any("411/annot/000002.pts:5" in p and "'nan'" in p for p in problems)


def test_warp_sources_log_the_pts_they_skip(tmp_path: Path, caplog) -> None:
    for name, bad in (("a", None), ("b", "inf")):
        (tmp_path / f"{name}.png").write_bytes(b"")  # images are read only when sampled
        (tmp_path / f"{name}.pts").write_text(_pts(np.full((68, 2), 5.0), bad))
    with caplog.at_level(logging.WARNING, logger="data_modules.formats"):
        sources = StillSources(tmp_path)
    assert len(sources) == 1
    assert "b.pts:5" in caplog.text and "'inf'" in caplog.text


# ----------------------------------------------------------------------------- not text


PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
LATIN1 = "version: 1\nn_points: 1\n{\n1 2 \xe9\n}\n".encode("latin-1")


def _read_as(kind: str, path: Path) -> None:
    if kind == "pts":
        read_pts(path)
    elif kind == "wflw":
        read_wflw_list(path, path.parent)
    else:
        read_hrnet_csv(path, path.parent, 68)


@pytest.mark.parametrize("kind", ["pts", "wflw", "csv"])
def test_binary_file_is_not_a_text_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"annotation.{kind}"
    path.write_bytes(PNG_HEADER)
    with pytest.raises(ValueError, match=rf"annotation\.{kind}: not a text file"):
        _read_as(kind, path)


@pytest.mark.parametrize("kind", ["pts", "wflw", "csv"])
def test_non_utf8_file_names_the_byte(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"annotation.{kind}"
    path.write_bytes(LATIN1)
    offset = LATIN1.index(b"\xe9")
    with pytest.raises(ValueError, match=rf"annotation\.{kind}: not UTF-8 .*0xe9 at byte {offset}"):
        _read_as(kind, path)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.pts"
    path.write_bytes(b"\xef\xbb\xbf" + _pts(np.full((2, 2), 3.0)).encode())
    np.testing.assert_array_equal(read_pts(path), np.full((2, 2), 2.0))


# ----------------------------------------------------------------------------- counts


def test_pts_with_98_points_where_68_are_expected(tmp_path: Path) -> None:
    write_pts(tmp_path / "wflw.pts", np.ones((98, 2)))
    with pytest.raises(ValueError, match=r"wflw\.pts: expected 68 points, file has 98"):
        read_pts(tmp_path / "wflw.pts", 68)


def test_300vw_frame_with_98_points(tmp_path: Path) -> None:
    video = tmp_path / "401"
    (video / "annot").mkdir(parents=True)
    (video / "vid.avi").write_bytes(b"")
    write_pts(video / "annot" / "000001.pts", np.ones((98, 2)))
    with pytest.raises(ValueError, match=r"000001\.pts: expected 68 points, file has 98"):
        read_300vw_video(video)


def test_wflw_line_with_68_points_names_both_counts(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text(_wflw_line(points=68) + "\n")
    with pytest.raises(
        ValueError, match=r"list\.txt:1: expected 207 fields \(98 landmarks.*got 147"
    ):
        read_wflw_list(path, tmp_path)


def test_hrnet_row_with_98_points_where_68_are_expected(tmp_path: Path) -> None:
    path = tmp_path / "faces.csv"
    path.write_text(f"header\n{_hrnet_row(points=98)}\n")
    with pytest.raises(
        ValueError, match=r"faces\.csv:2: expected 140 columns .* 68 points.*got 200"
    ):
        read_hrnet_csv(path, tmp_path, 68)


# ----------------------------------------------------------------------------- metrics


def _video(frames: int, points: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 50.0 + torch.rand(frames, points, 2, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("metric", ["mcv", "mav", "accel"])
def test_videos_with_different_landmark_counts_are_refused(metric: str) -> None:
    videos = [_video(5, 68), _video(5, 68, 1), _video(5, 98, 2)]
    with pytest.raises(ValueError, match=r"videos\[2\]: 98 landmarks, but videos\[0\] has 68"):
        getattr(F, metric)(videos)


def test_error_jitter_with_different_landmark_counts_is_refused() -> None:
    preds = [_video(5, 68), _video(5, 29, 1)]
    with pytest.raises(ValueError, match=r"pred_videos\[1\]: 29 landmarks, but .*has 68"):
        F.error_jitter(preds, [p.clone() for p in preds])


@pytest.mark.parametrize("bad", [math.inf, -math.inf])
def test_infinite_coordinates_are_refused(bad: float) -> None:
    video = _video(5, 68)
    video[2, 3, 1] = bad
    with pytest.raises(ValueError, match=r"videos\[0\]: contains NaN or inf"):
        F.mav([video])
    with pytest.raises(ValueError, match=r"pred: contains NaN or inf"):
        F.nme(video, _video(5, 68, 1))


def test_video_stability_refuses_landmark_counts_mixed_across_updates() -> None:
    metric = VideoStability(norm_indices=(0, 1))
    for video_id, points in ((0, 68), (1, 98)):
        pred = _video(4, points, video_id)
        metric.update(pred, pred + 1.0, torch.full((4,), video_id), torch.arange(4))
    with pytest.raises(ValueError, match="frames with 68 and 98 landmarks"):
        metric.compute()


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("method", ["pdc", "argmax"])
def test_decode_refuses_a_non_finite_threshold(bad: float, method: str) -> None:
    heatmaps = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match=rf"threshold must be a finite number; got {bad}"):
        decode(heatmaps, method, threshold=bad)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("relative", [False, True])
def test_pdc_refuses_a_non_finite_threshold(bad: float, relative: bool) -> None:
    with pytest.raises(ValueError, match=rf"threshold must be a finite number; got {bad}"):
        pdc(torch.rand(1, 3, 8, 8), threshold=bad, relative=relative)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_render_gaussian_refuses_a_non_finite_sigma(bad: float) -> None:
    with pytest.raises(ValueError, match=rf"sigma must be positive and finite .*got {bad}"):
        render_gaussian(torch.zeros(1, 2), 8, 8, bad)


@pytest.mark.parametrize(
    "name", ["theta", "xi", "threshold", "coord_weight", "coord_theta", "pixel_weight"]
)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_jitter_loss_refuses_non_finite_settings(name: str, bad: float) -> None:
    with pytest.raises(ValueError, match=rf"JitterLoss: {name} must be a finite number; got {bad}"):
        JitterLoss(**{name: bad})


# ----------------------------------------------------------------------------- data modules

BAD_COUNTS = [0, -1, math.nan, 2.0]


@pytest.mark.parametrize("bad", BAD_COUNTS)
@pytest.mark.parametrize("name", ["batch_size", "seq_len", "image_size", "eval_batch_size"])
def test_image_data_module_refuses_bad_sizes(tmp_path: Path, name: str, bad: float) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be a positive integer, got {bad!r}"):
        LandmarkDataModule(str(tmp_path), **{name: bad})


@pytest.mark.parametrize("bad", BAD_COUNTS)
@pytest.mark.parametrize(
    "name", ["batch_size", "seq_len", "image_size", "windows_per_video", "eval_window"]
)
def test_video_data_module_refuses_bad_sizes(tmp_path: Path, name: str, bad: float) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be a positive integer, got {bad!r}"):
        Video300VWDataModule(str(tmp_path), **{name: bad})


@pytest.mark.parametrize("bad", BAD_COUNTS)
@pytest.mark.parametrize("name", ["batch_size", "seq_len", "train_samples", "val_frames"])
def test_synthetic_data_module_refuses_bad_sizes(name: str, bad: float) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be a positive integer, got {bad!r}"):
        SyntheticDataModule(**{name: bad})


@pytest.mark.parametrize(
    "make",
    [
        lambda root, **kw: LandmarkDataModule(root, **kw),
        lambda root, **kw: Video300VWDataModule(root, **kw),
        lambda root, **kw: SyntheticDataModule(**kw),
    ],
    ids=["image", "video", "synthetic"],
)
def test_data_modules_refuse_negative_workers_and_seed(tmp_path: Path, make) -> None:
    with pytest.raises(ValueError, match=r"num_workers must be an integer >= 0, got -1"):
        make(str(tmp_path), num_workers=-1)
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0, got nan"):
        make(str(tmp_path), seed=math.nan)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_image_data_module_refuses_a_bad_max_shift(tmp_path: Path, bad: float) -> None:
    with pytest.raises(ValueError, match=rf"max_shift must be a finite number >= 0, got {bad!r}"):
        LandmarkDataModule(str(tmp_path), mode="sequence", max_shift=bad)


def test_synthetic_image_size_and_window_length_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match=r"image_size must be an integer >= 32, got 16"):
        SyntheticDataModule(image_size=16)
    with pytest.raises(ValueError, match=r"seq_len=20 exceeds train_video_frames=10"):
        SyntheticDataModule(seq_len=20, train_video_frames=10)


@pytest.mark.parametrize("count", ["68", 68.0, 0, -1, True])
def test_create_backbone_refuses_a_landmark_count_that_is_not_a_positive_int(count) -> None:
    from lightning_fa.backbones import create_backbone

    with pytest.raises(ValueError, match=r"num_landmarks must be an integer >= 1, got") as info:
        create_backbone("hrnet_w18", count)
    assert "hrnet_w18" in str(info.value) and repr(count) in str(info.value)
