"""LightningCLI smoke tests on CPU: composition, the num_landmarks link, fit / validate / test / predict."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from lightning_fa.commands.cli import main
from tests.conftest import REPO_ROOT

TINY = {
    "run_name": "tiny",
    "trainer": {
        "accelerator": "cpu",
        "max_epochs": 1,
        "limit_train_batches": 1,
        "limit_val_batches": 1,
        "limit_test_batches": 1,
        "limit_predict_batches": 1,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    },
    "model": {
        "init_args": {
            "backbone": {
                "class_path": "lightning_fa.backbones.HRNet",
                "init_args": {"config": "lite", "input_size": [32, 32]},
            },
            "tbptt_chunk": 2,
            "lr": 1e-3,
            # A random backbone has no file to reference: keep its weights in the checkpoint.
            "store_backbone_weights": True,
        }
    },
    "data": {
        "class_path": "data_modules.synthetic.SyntheticDataModule",
        "init_args": {
            "mode": "sequence",
            "image_size": 32,
            "seq_len": 3,
            "batch_size": 2,
            "train_samples": 4,
            "train_videos": 2,
            "train_video_frames": 8,
            "val_videos": 1,
            "val_frames": 4,
            "test_videos": 1,
            "test_frames": 4,
        },
    },
}


def write_config(tmp_path: Path, root: Path, **overrides) -> Path:
    config = json.loads(json.dumps(TINY))
    config["trainer"]["default_root_dir"] = str(root)
    config["trainer"]["logger"] = [
        {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(root), "name": "csv"},
        }
    ]
    config.update(overrides)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def base_args(config: Path) -> list[str]:
    return ["--config", str(REPO_ROOT / "experiments" / "base.yaml"), "--config", str(config)]


def test_print_config_composes_and_links(tmp_path, capsys) -> None:
    config = write_config(tmp_path, tmp_path / "run")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *base_args(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"]["init_args"]
    # base.yaml interpolates the loss threshold from the PDC threshold.
    assert model["loss"]["init_args"]["threshold"] == model["pdc_threshold"] == 0.2
    assert model["backbone"]["init_args"]["config"] == "lite"  # the later config wins
    assert printed["trainer"]["max_epochs"] == 1


def test_fit_validate_test_predict(tmp_path) -> None:
    root = tmp_path / "run"
    config = write_config(tmp_path, root)
    main(["fit", *base_args(config)])
    # A second run into the same directory must not crash on the saved config.
    main(["fit", *base_args(config)])
    samples = sorted(root.rglob("samples/epoch000.png"))
    assert samples and samples[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoints = sorted(root.rglob("last*.ckpt"))
    assert checkpoints, f"no checkpoint under {root}"
    ckpt = checkpoints[-1]
    saved = torch.load(ckpt, weights_only=True)
    # The link put the data's landmark count into the backbone.
    assert saved["backbone_reference"]["init_args"]["num_landmarks"] == 68

    main(["validate", *base_args(config), "--ckpt_path", str(ckpt)])
    main(["test", *base_args(config), "--ckpt_path", str(ckpt)])
    metrics = (root / "csv").rglob("metrics.csv")
    header = "".join(path.read_text().splitlines()[0] for path in metrics)
    assert "test/mild/backbone/nrmse" in header and "test/mild/finetuned/mav" in header
    assert "test/mild/finetuned/nrmse_x_mcv" in header  # the sweep's objective (paper Table 3)

    # Predict from the checkpoint alone: no training config, only a data block.
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"data": TINY["data"]}))
    out = tmp_path / "preds.json"
    assert (
        main(
            [
                "predict",
                str(ckpt),
                "--data",
                str(data_yaml),
                "--out",
                str(out),
                "--accelerator",
                "cpu",
            ]
        )
        == 0
    )
    items = json.loads(out.read_text())["items"]
    assert items and len(items[0]["finetuned"]) == 4 and len(items[0]["finetuned"][0]) == 68


def test_fast_dev_run(tmp_path) -> None:
    config = write_config(tmp_path, tmp_path / "run")
    main(["fit", *base_args(config), "--trainer.fast_dev_run=true"])


def test_unknown_command_is_rejected(capsys) -> None:
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def _experiment(*parts: str) -> str:
    return str(REPO_ROOT / "experiments" / Path(*parts))


# What users compose (Makefile: base + backbone + data [+ trainer]; the unlabelled route): each
# must still parse against the current class signatures.
COMPOSITIONS = {
    **{
        f"hrnet+{data}": ("backbone/hrnet.yaml", f"data/{data}.yaml")
        for data in ("300w", "wflw", "cofw", "aflw", "300vw", "synthetic")
    },
    **{
        f"{backbone}+300w": (f"backbone/{backbone}.yaml", "data/300w.yaml")
        for backbone in ("hrnet_lite", "hourglass", "cpm")
    },
    **{
        f"hrnet+300w+{trainer}": (
            "backbone/hrnet.yaml",
            "data/300w.yaml",
            f"trainer/{trainer}.yaml",
        )
        for trainer in ("cpu-debug", "gpu-bf16", "ddp", "slurm", "early-stopping")
    },
    "unlabelled": ("unlabelled.yaml",),
    "gpu-smoke": (
        "backbone/hrnet.yaml",
        "data/synthetic.yaml",
        "trainer/gpu-bf16.yaml",
        "gpu-smoke.yaml",
    ),
}


@pytest.mark.parametrize("parts", COMPOSITIONS.values(), ids=COMPOSITIONS.keys())
def test_experiment_configs_compose(parts, capsys) -> None:
    configs = [arg for part in ("base.yaml", *parts) for arg in ("--config", _experiment(part))]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *configs, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].endswith("StableAlignmentModule")
    assert printed["data"]["class_path"]


def test_model_help_lists_the_losses_only_and_a_pixel_loss_still_parses(tmp_path, capsys) -> None:
    config = write_config(tmp_path, tmp_path / "run")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *base_args(config), "--model.help", "StableAlignmentModule"])
    assert exit_info.value.code in (0, None)
    help_text = capsys.readouterr().out
    loss_help = help_text[help_text.index("\n  --model.loss LOSS") + 1 :].split("\n  --")[0]
    loss_help = "".join(loss_help.split())  # argparse wraps class paths at the terminal width
    # The loss is typed JitterLoss | PixelLoss, not nn.Module: no torch class in its listing.
    assert "torch." not in loss_help
    assert re.findall(r"lightning_fa\.losses\.(\w+)", loss_help) == [
        "JitterLoss", "PixelLoss", "HeatmapMSELoss", "WingLoss", "AdaptiveWingLoss",
        "GemanMcClureLoss",
    ]  # fmt: skip
    # The paper's Figure 6 route (docs/reproduce.md): a pixel loss in place of the Jitter loss.
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *base_args(config), "--model.init_args.loss=lightning_fa.losses.AdaptiveWingLoss",
              "--print_config"])  # fmt: skip
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (
        printed["model"]["init_args"]["loss"]["class_path"]
        == "lightning_fa.losses.AdaptiveWingLoss"
    )


def test_pretrain_model_help_lists_the_pixel_losses_only(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.help", "lightning_fa.systems.BackbonePretrainModule"])
    assert exit_info.value.code in (0, None)
    help_text = capsys.readouterr().out
    # The backbone is typed Backbone, not nn.Module: its listing names our backbones only.
    assert "torch." not in help_text and "lightning_fa.backbones.DlibBackbone" in help_text
    loss_help = help_text[help_text.index("\n  --model.loss LOSS") + 1 :].split("\n  --")[0]
    loss_help = "".join(loss_help.split())
    # Typed str | PixelLoss, not nn.Module: the names or a pixel loss, no torch class.
    assert "torch." not in loss_help
    assert re.findall(r"lightning_fa\.losses\.(\w+)", loss_help) == [
        "PixelLoss", "HeatmapMSELoss", "WingLoss", "AdaptiveWingLoss", "GemanMcClureLoss",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def diverging_run(tmp_path_factory) -> tuple[Path, Path]:
    """3 epochs at a learning rate that makes the temporal stage worse after epoch 0: the best
    epoch by `val/score` is not the last one. Returns (run folder, config)."""
    tmp_path = tmp_path_factory.mktemp("best")
    root = tmp_path / "run"
    config = write_config(tmp_path, root)
    main(["fit", *base_args(config), "--trainer.max_epochs=3", "--trainer.limit_train_batches=2", "--model.init_args.lr=0.1"])  # fmt: skip
    return root, config


def test_best_checkpoint_is_the_lowest_validation_score(diverging_run) -> None:
    root, _ = diverging_run
    rows = [
        row
        for path in root.rglob("metrics.csv")
        for row in csv.DictReader(path.open())
        if row.get("val/score")
    ]
    scores = {int(row["epoch"]): float(row["val/score"]) for row in rows}
    assert sorted(scores) == [0, 1, 2]
    # The documented definition: the fine-tuned NRMSE x MCV of the first validation loader.
    for row in rows:
        assert float(row["val/score"]) == float(row["val/mild/finetuned/nrmse_x_mcv"])
    best_epoch = min(scores, key=scores.get)
    assert best_epoch != 2, scores  # the lr above makes later epochs worse

    files = sorted(p.name for p in (root / "checkpoints").iterdir())
    assert files == [f"epoch={best_epoch}-step={4 * (best_epoch + 1)}.ckpt", "last.ckpt"]
    best = torch.load(root / "checkpoints" / files[0], weights_only=True)
    assert best["epoch"] == best_epoch
    (state,) = [v for k, v in best["callbacks"].items() if k.startswith("RunCheckpoint")]
    assert float(state["best_model_score"]) == pytest.approx(scores[best_epoch])
    # last.ckpt is the newest state, not a copy of the best one (what a resume needs).
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2


def test_predict_writes_predictions_into_the_run_folder(diverging_run) -> None:
    root, config = diverging_run
    (best,) = (root / "checkpoints").glob("epoch=*.ckpt")
    main(["predict", *base_args(config), "--ckpt_path", str(best)])
    written = json.loads((root / "predictions.json").read_text())
    assert written["checkpoint"] == str(best)
    # limit_predict_batches 1 of the synthetic test video: 1 sequence of 4 frames x 68 points.
    (item,) = written["items"]
    assert item["frame_index"] == [0, 1, 2, 3]
    assert len(item["finetuned"]) == len(item["backbone"]) == 4
    assert all(len(frame) == 68 and len(frame[0]) == 2 for frame in item["finetuned"])
    assert not list(root.glob(".predictions*"))  # no temporary file left behind


def _bad_file(tmp_path: Path, name: str, text: str) -> list[str]:
    path = tmp_path / name
    path.write_text(text)
    return ["--config", str(path)]


# (extra arguments after base.yaml + the tiny config, the one line expected after "fit: ").
BAD_LIGHTNING_CALLS = {
    "empty config": (
        lambda tmp: _bad_file(tmp, "empty.yaml", "# nothing yet\n"),
        r"empty\.yaml: the config file is empty",
    ),
    "missing config": (
        lambda tmp: ["--config", str(tmp / "none.yaml")],
        r"config file not found: .*none\.yaml",
    ),
    "malformed config": (
        lambda tmp: _bad_file(tmp, "bad.yaml", "trainer:\n  max_epochs: [1\n"),
        r"bad\.yaml: line \d+: not valid YAML",
    ),
    "tbptt_chunk=0": (
        lambda tmp: ["--model.init_args.tbptt_chunk=0"],
        r"model: tbptt_chunk must be >= 1, got 0",
    ),
    "batch_size=0": (
        lambda tmp: ["--data.init_args.batch_size=0"],
        r"data: batch_size must be a positive integer, got 0",
    ),
    "typo on the command line": (
        lambda tmp: ["--model.init_args.tbptt_chunck=3"],
        r"unknown key 'model\.init_args\.tbptt_chunck'; "
        r"did you mean 'model\.init_args\.tbptt_chunk'\?",
    ),
    "typo of a nested class key": (
        lambda tmp: ["--model.init_args.loss.init_args.thetta=2"],
        r"unknown key '.*loss\.init_args\.thetta'; did you mean '.*loss\.init_args\.theta'\?",
    ),
    "typo in a config file": (
        lambda tmp: _bad_file(tmp, "typo.yaml", "trainer:\n  max_epochz: 3\n"),
        r"typo\.yaml: unknown key 'trainer\.max_epochz'; did you mean 'trainer\.max_epochs'\?",
    ),
    "wrong type": (
        lambda tmp: ["--trainer.max_epochs=abc"],
        r"trainer\.max_epochs: expected int, got 'abc'",
    ),
}


@pytest.mark.parametrize(("extra", "expected"), BAD_LIGHTNING_CALLS.values(), ids=BAD_LIGHTNING_CALLS.keys())  # fmt: skip
def test_bad_lightning_call_ends_in_one_line(tmp_path, capsys, recwarn, extra, expected) -> None:
    """Used to end in ~75 lines of usage and Union dumps (or a traceback), the cause inside."""
    config = write_config(tmp_path, tmp_path / "run")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *base_args(config), *extra(tmp_path), "--trainer.fast_dev_run=1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("lightning-fa")]
    assert re.fullmatch(rf"lightning-fa fit: (?:.*/)?{expected}.*", line), line
    assert "usage:" not in err and "Traceback" not in err
    # Lightning's "args parameter" warning came with every call (main always passes argv).
    assert not [w for w in recwarn if "args parameter" in str(w.message)]


def test_debug_shows_the_traceback(tmp_path) -> None:
    config = write_config(tmp_path, tmp_path / "run")
    with pytest.raises(ValueError, match="tbptt_chunk must be >= 1, got 0"):
        main(["fit", *base_args(config), "--model.init_args.tbptt_chunk=0", "--debug"])
