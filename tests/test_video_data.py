"""300VW videos: split lists, decoding, annotations, broken frames, windows, sharding, caching."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from data_modules.formats import write_pts
from data_modules.landmarks import get_spec
from data_modules.transforms import (
    AugmentConfig,
)
from data_modules.video import Video300VWDataModule, VideoShardSampler, VideoWindowDataset
from data_modules.video_files import (
    SPLITS_300VW,
    FrameStore,
    load_300vw_split,
    load_broken_frames,
    read_300vw_video,
    read_video_frames,
)
from lightning_fa.geometry import (
    transform_points,
    warp_image,
)

SIZE = 48
SEQUENCE_KEYS = {"frames", "landmarks", "affine", "valid", "norm_size", "video_id", "frame_index"}


def _write_video(
    folder: Path, frames: int, rng: np.random.Generator, missing: tuple[int, ...] = ()
) -> np.ndarray:
    """vid.avi (MJPG) + annot/NNNNNN.pts of a textured face drifting right; returns landmarks."""
    (folder / "annot").mkdir(parents=True)
    writer = cv2.VideoWriter(str(folder / "vid.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (96, 80))
    texture = cv2.GaussianBlur(rng.integers(0, 255, (80, 140, 3), dtype=np.uint8), (7, 7), 0)
    base = rng.uniform(25, 55, size=(68, 2))
    base[36], base[45] = (28.0, 35.0), (52.0, 36.0)
    landmarks = np.stack([base + np.array([t * 1.5, 0.3 * t]) for t in range(frames)])
    for t in range(frames):
        writer.write(np.ascontiguousarray(texture[:, 40 - t : 136 - t]))
        if t + 1 not in missing:
            write_pts(folder / "annot" / f"{t + 1:06d}.pts", landmarks[t])
    writer.release()
    return landmarks


# The tiny roots hold a few videos of each split: the rest are skipped (and counted).
@pytest.fixture
def root_300vw(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for video_id, frames in (("001", 10), ("002", 9), ("114", 12), ("124", 7), ("401", 8)):
        _write_video(tmp_path / video_id, frames, rng)
    return tmp_path


def test_split_lists() -> None:
    sizes = {name: len(ids) for name, ids in SPLITS_300VW.items()}
    assert sizes == {"train": 50, "scenario1": 31, "scenario2": 19, "scenario3": 14}
    everything = [v for ids in SPLITS_300VW.values() for v in ids]
    assert len(set(everything)) == 114
    assert SPLITS_300VW["scenario3"][-1] == "562" and SPLITS_300VW["train"][0] == "001"
    broken = load_broken_frames()
    assert sum(len(v) for v in broken.values()) == 2127 and 111 in broken["547"]
    assert set(broken) <= set(
        SPLITS_300VW["scenario1"] + SPLITS_300VW["scenario2"] + SPLITS_300VW["scenario3"]
    )


def test_read_video_frames_and_errors(tmp_path: Path) -> None:
    _write_video(tmp_path / "v", 6, np.random.default_rng(1))
    frames = list(read_video_frames(tmp_path / "v" / "vid.avi"))
    assert len(frames) == 6 and frames[0].shape == (80, 96, 3) and frames[0].dtype == np.uint8
    with pytest.raises(FileNotFoundError, match="video not found"):
        read_video_frames(tmp_path / "none.avi")
    (tmp_path / "text.avi").write_text("not a video at all")
    with pytest.raises(ValueError, match=r"text\.avi"):
        read_video_frames(tmp_path / "text.avi")
    empty = cv2.VideoWriter(
        str(tmp_path / "empty.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (32, 32)
    )
    empty.release()
    with pytest.raises(ValueError, match=r"empty\.avi"):
        read_video_frames(tmp_path / "empty.avi")


def test_missing_annotation_frames(tmp_path: Path) -> None:
    _write_video(tmp_path / "007", 9, np.random.default_rng(2), missing=(3, 4, 7))
    with pytest.raises(ValueError, match=r"007/annot: annotations missing for frames 3-4, 7"):
        read_300vw_video(tmp_path / "007")
    record = read_300vw_video(tmp_path / "007", on_error="skip")
    assert record.missing == 3 and record.num_frames == 9
    assert record.valid.tolist() == [True, True, False, False, True, True, False, True, True]


def test_broken_frames_are_invalid_but_kept(root_300vw: Path) -> None:
    videos, _ = load_300vw_split(
        root_300vw, "scenario1", broken_frames={"401": frozenset({2, 5})}, on_error="skip"
    )
    assert [v.video_id for v in videos] == ["114", "124", "401"]
    dataset = VideoWindowDataset(videos, get_spec("300vw"), train=False, image_size=SIZE)
    sample = dataset[2]  # whole video 401
    assert set(sample) == SEQUENCE_KEYS and sample["frames"].shape == (8, 3, SIZE, SIZE)
    assert sample["valid"].tolist() == [True, False, True, True, False, True, True, True]
    assert sample["video_id"].item() == 401 and sample["frame_index"].tolist() == list(range(8))
    # the broken frame's crop box is interpolated from its neighbours
    record = videos[2]
    np.testing.assert_allclose(record.centers[1], (record.centers[0] + record.centers[2]) / 2)


def test_eval_windows_stream_each_video_in_order(root_300vw: Path) -> None:
    videos, _ = load_300vw_split(root_300vw, "scenario1", broken_frames={}, on_error="skip")
    dataset = VideoWindowDataset(
        videos, get_spec("300vw"), train=False, image_size=SIZE, eval_window=5
    )
    items = [dataset[i] for i in range(len(dataset))]
    assert len(items) == 3 + 2 + 2  # 12, 7 and 8 frames in windows of 5
    per_video: dict[int, list[int]] = {}
    for item in items:
        per_video.setdefault(item["video_id"].item(), []).extend(item["frame_index"].tolist())
    assert per_video == {114: list(range(12)), 124: list(range(7)), 401: list(range(8))}
    # crops are the decoded frames warped by the returned matrix; landmarks follow the same matrix
    decoded = list(read_video_frames(root_300vw / "114" / "vid.avi"))
    item = items[1]  # frames 5..9 of 114
    for t, index in enumerate(item["frame_index"].tolist()):
        affine = item["affine"][t].double().numpy()
        crop = warp_image(decoded[index], affine, (SIZE, SIZE))
        assert np.abs(item["frames"][t].numpy().transpose(1, 2, 0).astype(int) - crop).max() <= 1
        expected = transform_points(videos[0].landmarks[index].astype(np.float64), affine)
        np.testing.assert_allclose(item["landmarks"][t].numpy(), expected, atol=1e-3)
        eyes = np.linalg.norm(expected[36] - expected[45])
        assert item["norm_size"][t].item() == pytest.approx(eyes, rel=1e-5)


def test_training_windows(root_300vw: Path) -> None:
    videos, _ = load_300vw_split(root_300vw, "train", broken_frames={}, on_error="skip")
    dataset = VideoWindowDataset(
        videos,
        get_spec("300vw"),
        train=True,
        image_size=SIZE,
        seq_len=4,
        windows_per_video=3,
        augment=AugmentConfig(),
    )
    assert len(dataset) == 6
    a, b = dataset[(0, 1)], dataset[(0, 1)]
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    starts = {dataset[(e, i)]["frame_index"][0].item() for e in range(3) for i in range(3)}
    assert len(starts) > 1
    index = a["frame_index"]
    assert (index.diff() == 1).all() and index[-1] < 10 and a["frames"].shape == (4, 3, SIZE, SIZE)
    # one augmentation per window: the rotation/scale part is the same in every frame
    linear = a["affine"][:, :, :2]
    torch.testing.assert_close(linear, linear[:1].expand_as(linear))
    with pytest.raises(ValueError, match="shorter than seq_len=20"):
        VideoWindowDataset(videos, get_spec("300vw"), train=True, seq_len=20)


def test_shard_sampler_gives_each_video_to_one_rank(root_300vw: Path) -> None:
    videos, _ = load_300vw_split(root_300vw, "scenario1", broken_frames={}, on_error="skip")
    dataset = VideoWindowDataset(
        videos, get_spec("300vw"), train=False, image_size=SIZE, eval_window=3
    )
    shards = [list(VideoShardSampler(dataset, num_replicas=2, rank=r)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(len(dataset)))
    owners = [{dataset.video_of(i) for i in shard} for shard in shards]
    assert owners[0].isdisjoint(owners[1]) and owners[0] | owners[1] == {0, 1, 2}
    assert all(shard == sorted(shard) for shard in shards)  # windows stay in order
    assert len(VideoShardSampler(dataset, num_replicas=2, rank=0)) == len(shards[0])


@pytest.mark.parametrize("fmt", ["npy", "jpg"])
def test_frame_cache(tmp_path: Path, fmt: str) -> None:
    _write_video(tmp_path / "data" / "009", 6, np.random.default_rng(3))
    video = tmp_path / "data" / "009" / "vid.avi"
    memory = FrameStore().frames(video, 1, 5)
    cached_store = FrameStore(tmp_path / "cache", fmt)  # type: ignore[arg-type]
    cached = cached_store.frames(video, 1, 5)
    assert (tmp_path / "cache" / "009" / f"000006.{fmt}").is_file()
    for a, b in zip(memory, cached, strict=True):
        if fmt == "npy":
            np.testing.assert_array_equal(a, b)
        else:  # JPEG re-encoding at quality 95
            assert np.abs(a.astype(int) - b).mean() < 3
    assert cached_store.ensure_cached(video) == 6
    with pytest.raises(ValueError, match="asked for frame 9"):
        cached_store.frames(video, 0, 9)


def test_smoothing_is_a_moving_average(root_300vw: Path) -> None:
    raw = read_300vw_video(root_300vw / "114")
    smooth = read_300vw_video(root_300vw / "114", smooth_window=3)
    np.testing.assert_allclose(smooth.centers[5], raw.centers[4:7].mean(axis=0))
    np.testing.assert_allclose(smooth.scales[5], raw.scales[4:7].mean())


def test_data_module(root_300vw: Path, tmp_path: Path) -> None:
    dm = Video300VWDataModule(
        str(root_300vw),
        "scenario1",
        image_size=SIZE,
        seq_len=3,
        windows_per_video=2,
        eval_window=4,
        batch_size=2,
        num_workers=0,
        cache_dir=str(tmp_path / "cache"),
        on_error="skip",
    )
    assert dm.num_landmarks == 68
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["frames"].shape == (2, 3, 3, SIZE, SIZE) and batch["valid"].shape == (2, 3)
    dm.setup("test")
    evaluation = list(dm.test_dataloader())
    assert len(evaluation) == 3 + 2 + 2 and evaluation[0]["frames"].shape[0] == 1
    shard = dm.eval_dataloader(num_replicas=2, rank=1)
    assert 0 < len(shard) < len(evaluation)
    with pytest.raises(ValueError, match="unknown 300VW split"):
        Video300VWDataModule(str(root_300vw), "scenario4")


def _streamed_ids(loader) -> set[str]:
    return {f"{int(batch['video_id'][0]):03d}" for batch in loader}


def test_validation_videos_are_held_out_of_training_and_test(root_300vw: Path) -> None:
    """Validation streams held-out training videos; a sweep tuned on it never sees a test
    scenario (it used to stream the test scenario for validation too)."""
    dm = Video300VWDataModule(
        str(root_300vw), "scenario1", image_size=SIZE, seq_len=3, windows_per_video=2,
        eval_window=4, num_workers=0, on_error="skip", val_videos=["002"],
    )  # fmt: skip
    dm.setup("fit")
    assert {video.video_id for video in dm.train_set.videos} == {"001"}
    assert _streamed_ids(dm.val_dataloader()) == {"002"}
    dm.setup("test")
    assert _streamed_ids(dm.test_dataloader()) == {"114", "124", "401"}
    assert _streamed_ids(dm.predict_dataloader()) == {"114", "124", "401"}
    # Metrics say which: val/heldout/... while validating, test/scenario1/... when testing.
    dm.trainer = SimpleNamespace(validating=True, sanity_checking=False)
    assert dm.eval_loader_names == ["heldout"]
    dm.trainer = SimpleNamespace(validating=False, sanity_checking=False)
    assert dm.eval_loader_names == ["scenario1"]


def test_default_validation_videos() -> None:
    """Every 10th training video (documented in the class docstring); disjoint from the
    training windows and from every test scenario of SPEC 7 (pinned in test_split_lists)."""
    dm = Video300VWDataModule("unused")
    assert tuple(dm.hparams.val_videos) == ("001", "016", "031", "047", "120")
    assert set(dm.hparams.val_videos) < set(SPLITS_300VW["train"])
    for scenario in ("scenario1", "scenario2", "scenario3"):
        assert not set(dm.hparams.val_videos) & set(SPLITS_300VW[scenario])


@pytest.mark.parametrize(
    ("val_videos", "message"),
    [
        (["114"], r"\['114'\] are not training videos"),
        ([], "some \\(not all\\) of the 50"),
        (list(SPLITS_300VW["train"]), "some \\(not all\\) of the 50"),
    ],
)
def test_validation_videos_must_be_some_training_videos(val_videos, message) -> None:
    with pytest.raises(ValueError, match=message):
        Video300VWDataModule("unused", val_videos=val_videos)


def test_empty_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"001/vid\.avi"):
        load_300vw_split(tmp_path, "train")
    with pytest.raises(ValueError, match="no 300VW train videos found"):
        load_300vw_split(tmp_path, "train", on_error="skip")
    with pytest.raises(FileNotFoundError, match="300VW root folder not found"):
        load_300vw_split(tmp_path / "missing", "train")


def test_real_300vw_frames(shared_data: Path, tmp_path: Path) -> None:
    # Two real consecutive 300VW frames (401: 731, 732) re-encoded as a two-frame vid.avi.
    source = shared_data / "300vw_samples" / "401"
    folder = tmp_path / "401"
    (folder / "annot").mkdir(parents=True)
    images = [cv2.imread(str(source / "imgs" / f"{n:06d}.jpg")) for n in (731, 732)]
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(
        str(folder / "vid.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (width, height)
    )
    for n, image in zip((731, 732), images, strict=True):
        writer.write(image)
        (folder / "annot" / f"{n - 730:06d}.pts").write_text(
            (source / "annot" / f"{n:06d}.pts").read_text()
        )
    writer.release()
    record = read_300vw_video(folder)
    assert record.num_frames == 2 and record.valid.all()
    sample = VideoWindowDataset([record], get_spec("300vw"), train=False, image_size=128)[0]
    landmarks = sample["landmarks"]
    assert landmarks.min() > 0 and landmarks.max() < 127  # the face fills the crop
    assert (sample["norm_size"] > 30).all()
    # consecutive frames of a talking face: small motion between them
    assert (landmarks[1] - landmarks[0]).norm(dim=-1).mean() < 5
