"""experiments/embedded.yaml: the embedded default as a LightningCLI config that `lightning-fa fit`
reruns and overrides, and that the demo (`make finetune`) builds its fine-tuning from."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from data_modules import embedded
from data_modules.embedded import (
    EmbeddedWindowsDataModule,
    slow_video,
    training_videos,
)
from lightning_fa.commands.cli import main as cli_main
from lightning_fa.commands.embedded import run as embedded_run
from lightning_fa.commands.embedded.config import (
    EvalConfig,
    FinetuneConfig,
    PipelineConfig,
    PretrainConfig,
)
from lightning_fa.commands.lightning_cli import build_cli
from lightning_fa.commands.sweep import Sweep, grid_tables

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / "experiments" / "embedded.yaml"
# The fast sizes, written out here (not read from the code under test); fewer windows keep the
# two trainings short.
FAST = [
    "data.init_args.train_videos=2",
    "data.init_args.video_frames=8",
    "data.init_args.batch_size=2",
    "data.init_args.seq_len=4",
    "model.init_args.tbptt_chunk=2",
    "trainer.max_epochs=2",
    "data.init_args.windows_per_epoch=8",
]


@pytest.fixture(scope="module")
def fast_backbone(tmp_path_factory) -> Path:
    """The fast pretraining's backbone weights (seconds)."""
    root = tmp_path_factory.mktemp("embedded")
    path, _ = embedded_run.pretrain_backbone(
        PipelineConfig.fast(), root / "run", root / "cache", False
    )
    return path


def fast_args(backbone: Path, *overlays: Path) -> list[str]:
    """The embedded config (then ``overlays``) at the fast sizes."""
    return [
        "--config",
        str(YAML),
        *(arg for overlay in overlays for arg in ("--config", str(overlay))),
        f"--model.init_args.backbone_checkpoint={backbone}",
        "--model.init_args.backbone.init_args.input_size=[64, 64]",
        "--data.init_args.image_size=64",
        "--data.init_args.num_workers=0",
        *(f"--{item}" for item in FAST),
    ]


def test_yaml_parses_and_prints_its_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(YAML), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["class_path"] == "data_modules.embedded.EmbeddedWindowsDataModule"
    model = printed["model"]["init_args"]
    assert model["temporal"]["class_path"] == "lightning_fa.temporal.FaceMotionStage"
    assert model["temporal"]["init_args"]["threshold"] == 0.2  # follows the decoder's
    # The still hold of new faces, and no second hold once they moved.
    assert model["temporal"]["init_args"]["hold_threshold"] == 3.0
    assert model["temporal"]["init_args"]["rehold_after"] is None
    # The filter trains without the hold (it holds in eval mode only).
    assert model["temporal"]["init_args"]["hold_in_training"] is False
    assert model["loss"]["init_args"]["theta"] == 1.0
    assert model["loss"]["init_args"]["pixel_weight"] == 0.0
    assert printed["data"]["init_args"]["crop"] is None  # the stage sees every landmark
    assert model["loss"]["init_args"]["threshold"] == model["pdc_threshold"] == 0.2


def test_yaml_names_the_demo_backbone_and_held_out_sets():
    config = yaml.safe_load(YAML.read_text())
    key = PretrainConfig().cache_key()
    assert config["model"]["init_args"]["backbone_checkpoint"] == f"cache/backbones/{key}.pth"
    data, e = config["data"]["init_args"], EvalConfig()
    assert [tuple(row) for row in data["test_sets"]] == list(e.sets)
    assert (data["test_videos"], data["test_frames"]) == (e.videos, e.frames)
    assert (data["still_videos"], data["still_frames"]) == (e.still_videos, e.still_frames)
    assert data["still_degradation"] == e.still_degradation and data["test_seed"] == e.seed


def test_an_override_reaches_the_loss(fast_backbone):
    args = [*fast_args(fast_backbone), "--model.init_args.loss.init_args.theta=2"]
    cli = build_cli([*args, "--model.init_args.pdc_threshold=0.4"], run=False)
    assert cli.model.loss.theta == 2.0
    assert cli.model.loss.threshold == 0.4  # interpolated from the system's pdc_threshold
    assert cli.model.temporal.threshold == 0.4  # and the stage's own decoding
    assert cli.model.hparams.pdc_threshold == 0.4


def test_fit_through_the_yaml_reproduces_the_demo_finetuning(fast_backbone, tmp_path, one_thread):
    base = PipelineConfig.fast()
    config = PipelineConfig(
        pretrain=base.pretrain,
        finetune=FinetuneConfig(overrides=tuple(FAST)),
        evaluate=base.evaluate,
        num_workers=0,
    )
    demo = embedded_run.finetune(config, fast_backbone, tmp_path / "demo")
    embedded._HEATMAPS.clear()  # the fit computes its own heatmaps (no reuse of the demo's)
    # The fit route also validates each epoch and keeps checkpoints: neither may change training.
    fit_dir = tmp_path / "fit"
    extra = ["--data.init_args.val_videos=1", "--data.init_args.val_frames=6"]
    assert cli_main(["fit", *fast_args(fast_backbone), *extra, f"--trainer.default_root_dir={fit_dir}"]) == 0  # fmt: skip
    state = torch.load(fit_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    trained = {
        k.removeprefix("temporal."): v for k, v in state.items() if k.startswith("temporal.")
    }
    reference = demo.temporal.state_dict()
    assert trained.keys() == reference.keys() and trained
    for name, value in reference.items():
        assert torch.equal(trained[name], value), name
    # The fine-tuning moved the stage: equal weights are not just both initial ones.
    initial = build_cli(fast_args(fast_backbone), run=False).model.temporal.state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in reference.items())


def test_crop_patches_need_a_landmark_wise_stage(fast_backbone, tmp_path, capsys):
    args = ["fit", *fast_args(fast_backbone), f"--trainer.default_root_dir={tmp_path}"]
    stage = "--model.init_args.temporal.init_args."
    flat = ["--model.init_args.temporal=lightning_fa.temporal.ConvLSTM", f"{stage}input_proj=16"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, *flat, "--data.init_args.crop=12"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("lightning-fa fit: ") and "crop" in message
    assert "landmark_wise" in message
    # Whole maps: a full-map stage trains.
    whole = ["--data.init_args.crop=null", "--data.init_args.val_videos=0"]
    assert cli_main([*args, *flat, *whole]) == 0


def test_gated_blend_overlay_restores_the_previous_default_and_trains_it(fast_backbone, tmp_path):
    overlay = ROOT / "experiments" / "gated-blend.yaml"
    args = fast_args(fast_backbone, overlay)
    cli = build_cli(args, run=False)
    stage = cli.model.temporal
    assert type(stage).__name__ == "GatedBlendConvLSTM"
    assert (stage.max_blend, stage.motion_smoothing) == (0.98, 0.2)
    assert cli.model.loss.pixel_weight == 1.0 and cli.model.loss.position_weight == 0.0
    assert cli.datamodule.hparams.crop == 12  # per-landmark patches for a landmark-wise stage
    assert cli.model.loss.theta == 1.0  # the rest comes from embedded.yaml
    plain = ["--config", str(YAML), "--config", str(overlay)]
    checkpoint = f"--model.init_args.backbone_checkpoint={fast_backbone}"
    overlay_only = build_cli([*plain, checkpoint], run=False)
    assert overlay_only.trainer.max_epochs == 4  # its own training length, not the default's 8
    fit = ["fit", *args, "--data.init_args.val_videos=0", f"--trainer.default_root_dir={tmp_path}"]
    assert cli_main(fit) == 0
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["temporal_stage"] == "GatedBlendConvLSTM"
    assert state["state_dict"]["temporal.blend_strength"].abs().sum() > 0  # it trained


def test_still_hold_overlay_composes_and_trains_from_a_streaming_state(fast_backbone, tmp_path):
    overlay = ROOT / "experiments" / "still-hold.yaml"
    checkpoint = f"--model.init_args.backbone_checkpoint={fast_backbone}"
    cli = build_cli(["--config", str(YAML), "--config", str(overlay), checkpoint], run=False)
    stage = cli.model.temporal
    assert type(stage).__name__ == "FaceMotionStage"
    assert (stage.initial_memory, stage.max_smoothing) == (40.0, 0.99)  # the rest: embedded.yaml
    assert stage.hold is None  # measured without the default's still hold
    assert cli.model.hparams.burn_in == 16 and cli.datamodule.hparams.seq_len == 32
    assert cli.datamodule.hparams.still_fraction == 0.25
    assert cli.model.loss.position_weight == 3.0 and cli.model.loss.pixel_weight == 0.0
    # At the fast sizes (4-frame windows) a 2-frame burn-in leaves 2 frames to train.
    fit = [
        "fit",
        *fast_args(fast_backbone, overlay),
        "--model.init_args.burn_in=2",
        "--data.init_args.val_videos=0",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    assert cli_main(fit) == 0
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["temporal_config"]["initial_memory"] == 40.0
    assert state["state_dict"]["temporal.strength"].abs().sum() > 0  # it trained


def test_demo_set_lays_an_override_over_the_fine_tuning(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(embedded_run, "run", lambda config, *a, **k: seen.update(c=config))
    argv = ["--out", str(tmp_path), "--set", "seed_everything=3", "--set", "config=x.yaml"]
    assert embedded_run.main([*argv, "--eval-seed", "1000"]) == 0
    assert seen["c"].finetune.overrides == ("seed_everything=3", "config=x.yaml")
    assert seen["c"].evaluate.seed == 1000 and PipelineConfig().evaluate.seed == 0
    assert embedded_run.finetune_args(seen["c"], Path("b.pth"))[-2:] == [
        "--seed_everything=3",
        "--config=x.yaml",
    ]


def test_make_finetune_refuses_another_backbone_with_the_synthetic_data(tmp_path, capsys):
    for target in ("finetune", "pretrain"):
        printed = subprocess.run(
            ["make", "-n", "-s", target, "BACKBONE=hourglass", f"RUN_DIR={tmp_path / 'run'}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        # The command the Makefile runs, run here in-process: `$(PY) -m lightning_fa ARGS`.
        command = shlex.split(printed.splitlines()[-1])
        assert command[1:3] == ["-m", "lightning_fa"] and "--backbone" in command
        assert cli_main(command[3:]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lightning-fa demo: --backbone hourglass")
        assert "hrnet_lite" in lines[0]
    assert not (tmp_path / "run").exists()  # refused before any work


def test_training_videos_slow_the_configured_share_spread_over_the_presets():
    def videos(slowed_fraction: float):
        return training_videos(4, 8, 64, ("mild", "heavy"), slowed_fraction, (0.02, 0.25), 100)

    plain, to_slow, mixed = videos(0.0), videos(0.0), videos(0.5)
    assert len(mixed) == len(plain) == 4
    for i in (0, 3):  # one video of each preset (videos 0-1 mild, 2-3 heavy)
        want = slow_video(to_slow[i], 0.02, 0.25)  # slow_video works in place
        np.testing.assert_allclose(mixed[i].params, want.params)
        np.testing.assert_allclose(mixed[i].landmarks, want.landmarks)
        assert np.ptp(mixed[i].landmarks, axis=0).mean() < np.ptp(plain[i].landmarks, axis=0).mean()
    for i in (1, 2):
        np.testing.assert_array_equal(mixed[i].params, plain[i].params)
    with pytest.raises(ValueError, match="slowed_fraction"):
        EmbeddedWindowsDataModule(slowed_fraction=1.5)
    with pytest.raises(ValueError, match="seq_len"):
        EmbeddedWindowsDataModule(video_frames=8, seq_len=16)


def test_still_fraction_freezes_faces_among_the_videos_not_slowed():
    def videos(still_fraction: float):
        return training_videos(
            8, 8, 64, ("mild", "heavy"), 0.25, (0.02, 0.25), 100, still_fraction=still_fraction
        )

    plain, mixed = videos(0.0), videos(0.25)
    # Slowed: videos 0 and 7 (evenly spread); frozen: 2 of the other six, evenly (1 and 6).
    frozen = [i for i in range(8) if np.ptp(mixed[i].landmarks, axis=0).max() == 0]
    assert frozen == [1, 6]
    for i in frozen:  # the first pose of the same video, for every frame
        np.testing.assert_array_equal(mixed[i].params[1:, :6], plain[i].params[:1, :6].repeat(7, 0))
    for i in set(range(8)) - set(frozen):
        np.testing.assert_array_equal(mixed[i].params, plain[i].params)
    assert videos(0.0)[3].params.tolist() == plain[3].params.tolist()  # 0: the default videos
    with pytest.raises(ValueError, match="still_fraction"):
        EmbeddedWindowsDataModule(still_fraction=-0.1)
    with pytest.raises(ValueError, match=r"slowed_fraction \+ still_fraction"):
        EmbeddedWindowsDataModule(slowed_fraction=0.6, still_fraction=0.6)


def test_held_out_loaders_stream_whole_videos_of_every_set():
    data = EmbeddedWindowsDataModule(
        image_size=64, test_videos=1, test_frames=5, still_videos=1, still_frames=3, val_videos=1,
        val_frames=4, num_workers=0,
    )  # fmt: skip
    tests, vals = data.test_dataloader(), data.val_dataloader()
    assert len(tests) == 4 and len(vals) == 3  # the three sets (+ still for test)
    batch = next(iter(tests[0]))
    assert batch["frames"].shape == (1, 5, 3, 64, 64) and batch["frames"].dtype == torch.uint8
    assert batch["landmarks"].shape == (1, 5, 68, 2)
    assert batch["frame_index"].tolist() == [[0, 1, 2, 3, 4]]
    still = next(iter(tests[3]))["landmarks"][0]
    assert torch.equal(still[0], still[-1])  # the frozen face does not move
    # Validation videos are not test videos.
    assert not torch.equal(next(iter(vals[0]))["frames"][0, 0], batch["frames"][0, 0])


def test_grid_tables_lay_out_nrmse_times_mcv_and_mav_per_test_set():
    sweep = Sweep("s", "fit", [], {"model.init_args.loss.init_args.theta": [1.0, 2.0],
                                   "model.init_args.pdc_threshold": [0.1, 0.2]}, None, "minimize")  # fmt: skip
    rows = []
    for theta in (1.0, 2.0):
        for pdc in (0.1, 0.2):
            row = {
                "model.init_args.loss.init_args.theta": theta,
                "model.init_args.pdc_threshold": pdc,
            }
            row.update({"test/clean/finetuned/nrmse": 2.0, "test/clean/finetuned/mcv": theta * 10 + pdc * 100,
                        "test/clean/finetuned/mav": 0.5, "test/clean/backbone/nrmse": 3.0,
                        "test/clean/backbone/mcv": 1.0, "test/clean/backbone/mav": pdc})  # fmt: skip
            rows.append(row)
    rows.pop()  # a failed point: no metrics
    text = grid_tables(rows, sweep)
    lines = text.splitlines()
    mcv = lines.index("## clean: NRMSE x MCV (fine-tuned; lower is better)")
    assert lines[mcv + 2] == "| theta \\ pdc_threshold | 0.1 | 0.2 |"
    assert lines[mcv + 4 : mcv + 7] == [
        "| 1.0 | 40 | 60 |",  # 2 x (10 + 10), 2 x (10 + 20)
        "| 2.0 | 60 | - |",
        "| raw backbone (theta 1.0) | 3 | 3 |",
    ]
    mav = lines.index("## clean: NRMSE x MAV (fine-tuned; lower is better)")
    assert lines[mav + 4 : mav + 7] == ["| 1.0 | 1 | 1 |", "| 2.0 | 1 | - |", "| raw backbone (theta 1.0) | 0.3 | 0.6 |"]  # fmt: skip
    one = Sweep("s", "fit", [], {"a": [1]}, None, "minimize")
    assert grid_tables(rows, one) is None  # not a two-parameter grid
