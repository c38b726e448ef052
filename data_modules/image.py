"""Still-image landmark datasets (300W, WFLW, COFW, AFLW) and their LightningDataModule.

Two modes:
- ``mode="image"``: one crop per sample (backbone training, image evaluation).
- ``mode="sequence"``: pseudo-sequences (paper 4.2): ``seq_len`` copies of the crop, frame t
  shifted by ``shift_t`` crop pixels (frame 0 unshifted), so its ground truth is exactly frame 0's
  landmarks + ``shift_t``. One augmentation draw per sequence, per-frame degradations on top.

Randomness comes only from ``np.random.default_rng((seed, epoch, index))``: a sample is the same
whatever the number of DataLoader workers. The training sampler (``EpochSampler``) hands the
epoch to the workers by yielding ``(epoch, index)`` pairs.

Batches use the default collate, so every sequence in a batch has the same length: ``seq_len``
is fixed per data module (the paper's 5-8 frames: pick one, default 6).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data_modules.base import EpochSampler, FaceDataModule
from data_modules.checks import check_finite_non_negative
from data_modules.formats import (
    WFLW_ATTRIBUTES,
    LandmarkRecord,
    OnError,
    filter_by_attribute,
    log_skipped,
    read_cofw_mat,
    read_hrnet_csv,
    read_pts_folder,
    read_wflw_list,
    record_image_rgb,
)
from data_modules.landmarks import DatasetSpec, get_spec
from data_modules.transforms import (
    AugmentConfig,
    AugmentParams,
    Degradation,
    augmented_affine,
    crop_frame,
    sample_augmentation,
)
from lightning_fa.checks import check_ints
from lightning_fa.geometry import (
    DEFAULT_ENLARGE,
    box_to_center_scale,
    landmarks_box,
    landmarks_to_crop,
)

log = logging.getLogger(__name__)

Mode = Literal["image", "sequence"]
DEFAULT_AUGMENT = AugmentConfig()
Layout = Literal["auto", "official", "csv"]

# 300W official layout: which folders make up each subset.
SUBSETS_300W_FOLDERS: dict[str, tuple[str, ...]] = {
    "train": ("lfpw/trainset", "helen/trainset", "afw"),
    "common": ("lfpw/testset", "helen/testset"),
    "challenge": ("ibug",),
    "full": ("lfpw/testset", "helen/testset", "ibug"),
    "private": ("300W/01_Indoor", "300W/02_Outdoor"),
}
# HRNet CSV names (under root; images under root/images).
SUBSETS_300W_CSV = {
    "train": "face_landmarks_300w_train.csv",
    "common": "face_landmarks_300w_valid_common.csv",
    "challenge": "face_landmarks_300w_valid_challenge.csv",
    "full": "face_landmarks_300w_valid.csv",
    "private": "face_landmarks_300w_test.csv",
}
WFLW_LIST_DIR = Path("WFLW_annotations/list_98pt_rect_attr_train_test")
WFLW_IMAGE_DIR = "WFLW_images"
SUBSETS_WFLW = ("train", "test", *WFLW_ATTRIBUTES)
SUBSETS_AFLW_CSV = {
    "train": "face_landmarks_aflw_train.csv",
    "full": "face_landmarks_aflw_test.csv",
    "frontal": "face_landmarks_aflw_test_frontal.csv",
}
COFW_FILES = {
    "train": ("COFW_train_color.mat", "COFW_train.mat", "cofw_train.mat"),
    "test": ("COFW_test_color.mat", "COFW_test.mat", "cofw_test.mat"),
}
SUBSETS: dict[str, tuple[str, ...]] = {
    "300w": tuple(SUBSETS_300W_FOLDERS),
    "wflw": SUBSETS_WFLW,
    "cofw": tuple(COFW_FILES),
    "aflw": tuple(SUBSETS_AFLW_CSV),
}


def _check_subset(dataset: str, subset: str) -> None:
    if subset not in SUBSETS[dataset]:
        raise ValueError(f"unknown {dataset} subset {subset!r}; expected one of {SUBSETS[dataset]}")


def _resolve_layout(root: Path, layout: Layout, official_marker: str) -> Literal["official", "csv"]:
    if layout != "auto":
        return layout
    return "official" if (root / official_marker).exists() else "csv"


def _check_images(
    records: list[LandmarkRecord], problems: list[str], on_error: OnError
) -> list[LandmarkRecord]:
    """Drop (or raise for) records whose image file does not exist."""
    kept = []
    for record in records:
        if record.image is None and not record.image_path.is_file():
            message = f"image not found: {record.image_path}"
            if on_error == "raise":
                raise FileNotFoundError(message)
            problems.append(message)
        else:
            kept.append(record)
    return kept


def load_records(
    dataset: str,
    root: str | Path,
    subset: str,
    layout: Layout = "auto",
    on_error: OnError = "raise",
) -> tuple[list[LandmarkRecord], list[str]]:
    """Records of one subset of a still-image dataset, and the problems skipped (``on_error``).

    Layouts: 300W official folders (lfpw/helen/afw/ibug/300W with images + .pts) or HRNet CSVs;
    WFLW official lists (``WFLW_annotations``, ``WFLW_images``) or HRNet CSVs; COFW ``.mat``;
    AFLW HRNet CSVs. HRNet CSV images live under ``root/images``.
    """
    dataset = get_spec(dataset).name
    root = Path(root)
    if dataset not in SUBSETS:
        raise ValueError(
            f"{dataset!r} is not a still-image dataset; expected one of {sorted(SUBSETS)}"
        )
    _check_subset(dataset, subset)
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset} root folder not found: {root}")
    spec = get_spec(dataset)
    problems: list[str] = []
    records: list[LandmarkRecord] = []
    if dataset == "300w" and _resolve_layout(root, layout, "ibug") == "official":
        for folder in SUBSETS_300W_FOLDERS[subset]:
            found, bad = read_pts_folder(root / folder, spec.num_landmarks, on_error)
            records += found
            problems += bad
    elif dataset == "wflw" and _resolve_layout(root, layout, str(WFLW_LIST_DIR)) == "official":
        split = "train" if subset == "train" else "test"
        records, problems = read_wflw_list(
            root / WFLW_LIST_DIR / f"list_98pt_rect_attr_{split}.txt",
            root / WFLW_IMAGE_DIR,
            on_error,
        )
        if subset in WFLW_ATTRIBUTES:
            records = filter_by_attribute(records, subset)
    elif dataset == "cofw":
        candidates = [root / name for name in COFW_FILES[subset]]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"COFW {subset} file not found; looked for {candidates}")
        records = read_cofw_mat(path, subset)  # type: ignore[arg-type]
    else:
        if dataset == "300w":
            name = SUBSETS_300W_CSV[subset]
        elif dataset == "wflw":
            suffix = {"train": "train", "test": "test", "pose": "test_largepose"}.get(
                subset, f"test_{subset}"
            )
            name = f"face_landmarks_wflw_{suffix}.csv"
        else:
            name = SUBSETS_AFLW_CSV[subset]
        records, problems = read_hrnet_csv(
            root / name, root / "images", spec.num_landmarks, spec.norm == "box", on_error
        )
    records = _check_images(records, problems, on_error)
    if not records:
        raise ValueError(f"no {dataset} {subset} samples found under {root} (layout {layout!r})")
    log_skipped(f"{dataset} {subset} under {root}", problems)
    return records, problems


def crop_norm_size(
    crop_landmarks: np.ndarray, affine: np.ndarray, spec: DatasetSpec, box_size: float
) -> float:
    """The error normaliser in crop pixels: eye-corner distance, or ``box_size`` (frame pixels)
    scaled into the crop for box-normalised datasets."""
    if spec.norm_indices is not None:
        a, b = spec.norm_indices
        return float(np.linalg.norm(crop_landmarks[a] - crop_landmarks[b]))
    return float(box_size * np.sqrt(abs(np.linalg.det(affine[:, :2]))))


def _record_box_size(record: LandmarkRecord, box: Sequence[float]) -> float:
    if "box_size" in record.attributes:
        return float(record.attributes["box_size"])
    x1, y1, x2, y2 = box
    return float(np.sqrt((x2 - x1) * (y2 - y1)))


class LandmarkImageDataset(Dataset):
    """Crops (image mode) or shifted pseudo-sequences (sequence mode) of annotated still images.

    ``augment=None`` and ``degradation=None`` give the plain evaluation crop. In sequence mode the
    shifts are uniform in [-max_shift, max_shift] crop pixels (rounded when ``integer_shifts``).
    """

    def __init__(
        self,
        records: Sequence[LandmarkRecord],
        spec: DatasetSpec,
        mode: Mode = "image",
        image_size: int = 256,
        seq_len: int = 6,
        max_shift: float = 4.0,
        integer_shifts: bool = False,
        augment: AugmentConfig | None = None,
        degradation: Degradation | None = None,
        seed: int = 0,
        enlarge: float = DEFAULT_ENLARGE,
    ) -> None:
        if mode not in ("image", "sequence"):
            raise ValueError(f"mode must be 'image' or 'sequence', got {mode!r}")
        check_ints(image_size=image_size, seq_len=seq_len)
        check_finite_non_negative(max_shift=max_shift)
        for record in records:
            if record.num_landmarks != spec.num_landmarks:
                raise ValueError(
                    f"{record.image_path}: {record.num_landmarks} landmarks, "
                    f"dataset {spec.name!r} expects {spec.num_landmarks}"
                )
        self.records = list(records)
        self.spec = spec
        self.mode = mode
        self.output_size = (image_size, image_size)
        self.seq_len = seq_len
        self.max_shift = max_shift
        self.integer_shifts = integer_shifts
        self.augment = augment
        self.degradation = degradation
        self.seed = seed
        self.enlarge = enlarge

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = item if isinstance(item, tuple) else (0, int(item))
        rng = np.random.default_rng((self.seed, epoch, index))
        record = self.records[index]
        box = (
            record.box
            if record.box is not None
            else landmarks_box(record.landmarks, record.visible)
        )
        center, scale = box_to_center_scale(box)
        params = AugmentParams() if self.augment is None else sample_augmentation(rng, self.augment)
        image = record_image_rgb(record)
        perm = self.spec.flip_permutation
        affine = augmented_affine(center, scale, self.output_size, params, self.enlarge)
        landmarks = landmarks_to_crop(
            record.landmarks.astype(np.float64), affine, params.flip, perm
        )
        visible = record.visible[list(perm)] if params.flip else record.visible
        norm_size = crop_norm_size(landmarks, affine, self.spec, _record_box_size(record, box))

        def frame(shift: np.ndarray) -> torch.Tensor:
            shifted = affine.copy()
            shifted[:, 2] += shift
            return crop_frame(image, shifted, self.output_size, params, self.degradation, rng)

        if self.mode == "image":
            return {
                "image": frame(np.zeros(2)),
                "landmarks": torch.from_numpy(landmarks.astype(np.float32)),
                "affine": torch.from_numpy(affine.astype(np.float32)),
                "visible": torch.from_numpy(visible.copy()),
                "norm_size": torch.tensor(norm_size, dtype=torch.float32),
                "index": torch.tensor(index, dtype=torch.int64),
            }
        shifts = self.sample_shifts(rng)
        affines = np.repeat(affine[None], self.seq_len, axis=0)
        affines[:, :, 2] += shifts
        return {
            "frames": torch.stack([frame(s) for s in shifts]),
            "landmarks": torch.from_numpy((landmarks[None] + shifts[:, None]).astype(np.float32)),
            "affine": torch.from_numpy(affines.astype(np.float32)),
            "valid": torch.ones(self.seq_len, dtype=torch.bool),
            "norm_size": torch.full((self.seq_len,), norm_size, dtype=torch.float32),
            "video_id": torch.tensor(index, dtype=torch.int64),
            "frame_index": torch.arange(self.seq_len, dtype=torch.int64),
        }

    def sample_shifts(self, rng: np.random.Generator) -> np.ndarray:
        """(seq_len, 2) per-frame crop shifts; frame 0 is unshifted."""
        shifts = rng.uniform(-self.max_shift, self.max_shift, size=(self.seq_len, 2))
        if self.integer_shifts:
            shifts = np.rint(shifts)
        shifts[0] = 0.0
        return shifts


def held_out_images(records: Sequence[LandmarkRecord], fraction: float) -> set[str]:
    """The image paths (``as_posix``) held out of ``records`` for validation.

    The distinct image paths are sorted; ``k = max(1, round(fraction * n))`` of the ``n`` are
    held out (none when ``fraction`` is 0), those at positions ``floor((i + 0.5) * n / k)``,
    ``i < k``: every ``n / k``-th path, spread evenly over the sorted list (so over the dataset's
    folders). All faces of one image go to the same side. The rule reads only the paths: not
    the seed, not the file order.
    """
    paths = sorted({record.image_path.as_posix() for record in records})
    n = len(paths)
    if fraction == 0:
        return set()
    k = max(1, round(fraction * n))
    if k >= n:
        raise ValueError(
            f"val_fraction={fraction} holds out {k} of the {n} training images, leaving none "
            "to train on"
        )
    return {paths[math.floor((i + 0.5) * n / k)] for i in range(k)}


class LandmarkDataModule(FaceDataModule):
    """Train split + one evaluation subset of a still-image landmark dataset.

    ``subset`` is the evaluation subset, used by test and predict (metrics
    ``test/<dataset>_<subset>/...``), e.g. 300W ``full`` / ``common`` / ``challenge`` /
    ``private``, WFLW ``test`` or an attribute, COFW ``test``, AFLW ``full`` / ``frontal``.
    Validation never looks at it: it uses the ``val_fraction`` of the ``train`` split's images
    that `held_out_images` holds out (every ``1 / val_fraction``-th image path in sorted order,
    at least one; metrics ``val/heldout/...`` and ``val/score``), which training then leaves out,
    so choosing a checkpoint or tuning on ``val/score`` never looks at the test set.
    ``val_fraction=0`` trains on the whole split and has no validation loader (Lightning then
    skips validation, as with ``limit_val_batches=0``): no ``val/score`` is logged, so a
    checkpoint monitoring it (experiments/base.yaml) keeps only ``last.ckpt``, with Lightning's
    warning.

    Training uses ``augment`` and ``degradation``; validation and test use no augmentation and
    ``eval_degradation`` (off by default; the robustness experiment turns it on);
    ``augment=None`` turns training augmentation off. ``on_error="skip"`` leaves out bad samples
    and counts them in ``skipped`` (also logged).
    """

    def __init__(
        self,
        root: str,
        dataset: str = "300w",
        subset: str = "full",
        mode: Mode = "image",
        layout: Layout = "auto",
        image_size: int = 256,
        seq_len: int = 6,
        max_shift: float = 4.0,
        integer_shifts: bool = False,
        augment: AugmentConfig | None = DEFAULT_AUGMENT,
        degradation: Degradation | None = None,
        eval_degradation: Degradation | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = True,
        seed: int = 0,
        on_error: OnError = "raise",
        val_fraction: float = 0.1,
    ) -> None:
        super().__init__()
        self.spec = get_spec(dataset)
        if self.spec.name not in SUBSETS:
            raise ValueError(
                f"dataset must be one of {sorted(SUBSETS)} (300VW lives in video.py), got {dataset!r}"
            )
        _check_subset(self.spec.name, subset)
        check_ints(image_size=image_size, seq_len=seq_len)
        counts = {"batch_size": batch_size}
        if eval_batch_size is not None:
            counts["eval_batch_size"] = eval_batch_size
        self.check_loader_settings(num_workers, seed, **counts)
        check_finite_non_negative(max_shift=max_shift)
        if isinstance(val_fraction, bool) or not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
        self.save_hyperparameters()
        self.root = Path(root)
        self.subset = subset
        self.skipped: dict[str, list[str]] = {}
        self.train_set: LandmarkImageDataset | None = None
        self.val_set: LandmarkImageDataset | None = None
        self.eval_set: LandmarkImageDataset | None = None

    @property
    def eval_loader_names(self) -> list[str]:
        """Metric prefixes of the evaluation loaders: ``heldout`` (the held-out training images)
        while validating, ``<dataset>_<subset>`` otherwise."""
        trainer = self.trainer
        if trainer is not None and (trainer.validating or trainer.sanity_checking):
            return ["heldout"]
        return [f"{self.spec.name}_{self.subset}"]

    def _records(self, split: str) -> list[LandmarkRecord]:
        hp = self.hparams
        records, problems = load_records(self.spec.name, self.root, split, hp.layout, hp.on_error)
        self.skipped[split] = problems
        return records

    def _dataset(self, records: list[LandmarkRecord], train: bool) -> LandmarkImageDataset:
        hp = self.hparams
        return LandmarkImageDataset(
            records,
            self.spec,
            mode=hp.mode,
            image_size=hp.image_size,
            seq_len=hp.seq_len,
            max_shift=hp.max_shift,
            integer_shifts=hp.integer_shifts,
            augment=hp.augment if train else None,
            degradation=hp.degradation if train else hp.eval_degradation,
            seed=hp.seed,
        )

    def setup(self, stage: str | None = None) -> None:
        fit = stage in (None, "fit")
        validate = stage in (None, "fit", "validate") and self.hparams.val_fraction > 0
        if (fit and self.train_set is None) or (validate and self.val_set is None):
            records = self._records("train")
            held_out = held_out_images(records, self.hparams.val_fraction)
            if fit and self.train_set is None:
                kept = [r for r in records if r.image_path.as_posix() not in held_out]
                self.train_set = self._dataset(kept, train=True)
            if validate and self.val_set is None:
                val = [r for r in records if r.image_path.as_posix() in held_out]
                self.val_set = self._dataset(val, train=False)
        if stage in (None, "test", "predict") and self.eval_set is None:
            self.eval_set = self._dataset(self._records(self.subset), train=False)

    def _eval_batch_size(self) -> int:
        return self.hparams.eval_batch_size or self.hparams.batch_size

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        sampler = EpochSampler(len(self.train_set), shuffle=True, seed=self.hparams.seed)
        return self.loader(self.train_set, self.hparams.batch_size, sampler)

    def val_dataloader(self) -> DataLoader | list:
        """The held-out training images; none (an empty list) when ``val_fraction=0``."""
        if self.hparams.val_fraction == 0:
            return []
        assert self.val_set is not None, "call setup('fit') or setup('validate') first"
        return self.loader(self.val_set, self._eval_batch_size())

    def test_dataloader(self) -> DataLoader:
        assert self.eval_set is not None, "call setup('test') first"
        return self.loader(self.eval_set, self._eval_batch_size())
