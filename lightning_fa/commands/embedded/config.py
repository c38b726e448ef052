"""The embedded benchmark's settings (`lightning-fa demo`, `make finetune`), the methods it
compares and the held-out sets a config describes: what the run, its evaluation and the report
share (the report imports only this module)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_modules.embedded import HELD_OUT_SETS, held_out_sources, held_out_videos
from data_modules.synthetic import SyntheticVideo
from data_modules.transforms import Degradation

# Bump when the meaning of a cached backbone changes without its config changing.
CACHE_VERSION = 1
# What a run writes into its folder (the report adds its own files); locked while it runs.
RUN_OUTPUTS = ("metrics.json", "tracks.npz", "finetuned.ckpt", "backbone.pth")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class PretrainConfig:
    """Backbone pretraining on synthetic images; its hash names the cached weights."""

    backbone: str = "hrnet_lite"
    image_size: int = 128
    images_per_epoch: int = 1536
    epochs: int = 4
    batch_size: int = 16
    lr: float = 2e-3
    loss: str = "awing"
    sigma: float = 1.5
    degradations: tuple[str, ...] = ("clean", "mild", "heavy")
    seed: int = 0

    def cache_key(self) -> str:
        text = json.dumps({"version": CACHE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FinetuneConfig:
    """The fine-tuning stage: ``config``, a LightningCLI config (by default
    `experiments/embedded.yaml`: the temporal stage's and the Jitter loss's own arguments, the windows
    data, the optimiser settings, epochs and seed), plus ``overrides`` as `lightning-fa fit` takes
    them (``key=value``, without the leading ``--``). The demo builds the model and the data
    exactly as `lightning-fa fit --config <config> --<override> ...` does, so both routes train
    the same weights; a relative ``config`` is looked up from the working directory, then from
    the repository root.
    """

    config: str = "experiments/embedded.yaml"
    overrides: tuple[str, ...] = ()

    def path(self) -> Path:
        path = Path(self.config)
        if path.is_absolute() or path.is_file():
            return path
        return Path(__file__).resolve().parents[3] / path  # the repository root


@dataclass(frozen=True)
class EvalConfig:
    """Held-out synthetic videos (test-split seeds) and the robustness / latency probes.

    ``sets``: (name, degradation preset, head motion, expression motion) of each held-out set:
    the scales of the head pose's and the expressions' excursions about their means (1, 1: as
    generated, with still, slow and fast segments; small values: a nearly still head with small
    expression changes and blinks, the paper's "videos with small face movements").
    ``acceptance_set`` is the set that the acceptance verdict reads.
    """

    videos: int = 6
    frames: int = 150
    still_videos: int = 4
    still_frames: int = 30
    sets: tuple[tuple[str, str, float, float], ...] = HELD_OUT_SETS
    acceptance_set: str = "degraded-slow"
    still_degradation: str = "heavy"
    noise_levels: tuple[float, ...] = (0.0, 5.0, 10.0, 20.0, 30.0)
    blur_levels: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
    robustness_videos: int = 2
    robustness_frames: int = 60
    latency_frames: int = 20
    batch_size: int = 32
    seed: int = 0


# The fast sizes of the fine-tuning stage (`PipelineConfig.fast`), as `lightning-fa fit` overrides.
FAST_FINETUNE = (
    "data.init_args.train_videos=2",
    "data.init_args.video_frames=8",
    "data.init_args.batch_size=2",
    "data.init_args.seq_len=4",
    "model.init_args.tbptt_chunk=2",
    "trainer.max_epochs=1",
)


@dataclass(frozen=True)
class PipelineConfig:
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    num_workers: int = 1

    @classmethod
    def fast(cls) -> PipelineConfig:
        """Tiny sizes for tests and smoke runs (seconds, meaningless numbers)."""
        return cls(
            pretrain=PretrainConfig(image_size=64, images_per_epoch=8, epochs=1, batch_size=4),
            finetune=FinetuneConfig(overrides=FAST_FINETUNE),
            evaluate=EvalConfig(
                videos=1,
                frames=12,
                still_videos=1,
                still_frames=8,
                noise_levels=(0.0, 20.0),
                blur_levels=(0.0, 1.0),
                robustness_videos=1,
                robustness_frames=6,
                latency_frames=3,
            ),
            num_workers=0,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- methods

# Method key -> label, in table order. Filters run on the raw PDC track (the same decoding as
# ours), so every row below "raw PDC" differs from it only by the stabiliser.
METHODS: dict[str, str] = {
    "raw-argmax": "raw backbone, argmax",
    "raw-argmax_quarter": "raw backbone, argmax 1/4",
    "raw-pdc": "raw backbone, PDC",
    "raw-pdc+one-euro-mediapipe": "raw PDC + One Euro (MediaPipe)",
    "raw-pdc+one-euro-tuned": "raw PDC + One Euro (tuned)",
    "raw-pdc+kalman": "raw PDC + Kalman (CV)",
    "raw-pdc+savgol": "raw PDC + Savitzky-Golay (9, 2)",
    "raw-pdc+moving-average": "raw PDC + moving average (5)",
    "finetuned-pdc": "fine-tuned stage, PDC (ours)",
    "finetuned-pdc+one-euro-tuned": "ours + One Euro (tuned)",
}
BASELINE, OURS = "raw-pdc", "finetuned-pdc"
METRICS = ("nrmse", "mcv", "mav", "error_jitter", "accel", "lag", "latency_ms")


# --------------------------------------------------------------------------- data


def eval_videos(config: EvalConfig, image_size: int, degradation: str | Degradation, seed: int):
    """Held-out videos (test-split seeds, disjoint from training)."""
    return held_out_videos(
        config.videos, config.frames, image_size, degradation, config.seed + seed
    )


def eval_sources(config: PipelineConfig) -> dict[str, Callable[[], list[SyntheticVideo]]]:
    """Eval set name -> the SyntheticVideo objects it streams (lazy; the report re-renders)."""
    e = config.evaluate
    still = (e.still_videos, e.still_frames, e.still_degradation)
    return held_out_sources(e.sets, e.videos, e.frames, config.pretrain.image_size, e.seed, still)


def load_config(run_dir: str | Path) -> PipelineConfig:
    """The PipelineConfig a run recorded in its metrics.json."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `lightning-fa demo --out {run_dir}` first")
    raw = json.loads(path.read_text())["config"]

    def tuples(section: dict[str, Any]) -> dict[str, Any]:
        return {
            k: tuple(tuple(x) if isinstance(x, list) else x for x in v)
            if isinstance(v, list)
            else v
            for k, v in section.items()
        }

    return PipelineConfig(
        pretrain=PretrainConfig(**tuples(raw["pretrain"])),
        finetune=FinetuneConfig(**tuples(raw["finetune"])),
        evaluate=EvalConfig(**tuples(raw["evaluate"])),
        num_workers=raw["num_workers"],
    )
