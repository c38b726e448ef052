"""W&B records what the environment says: base.yaml's WandbLogger follows the standard WANDB_MODE
(offline when unset) instead of forcing offline mode, and sweep agents get one run folder each."""

from __future__ import annotations

import os

import pytest
import yaml
from lightning.pytorch.loggers import WandbLogger

from lightning_fa.commands.cli import main
from tests.test_cli import _experiment


def composed(capsys) -> dict:
    """The config `lightning-fa fit` builds from base.yaml + hrnet + synthetic (env read now)."""
    parts = ("base.yaml", "backbone/hrnet.yaml", "data/synthetic.yaml")
    configs = [arg for part in parts for arg in ("--config", _experiment(part))]
    with pytest.raises(SystemExit):
        main(["fit", *configs, "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)


def wandb_logger(capsys, save_dir) -> WandbLogger:
    (spec,) = [
        logger
        for logger in composed(capsys)["trainer"]["logger"]
        if logger["class_path"].endswith("WandbLogger")
    ]
    return WandbLogger(**{**spec["init_args"], "save_dir": str(save_dir)})


@pytest.mark.parametrize("mode", ["online", "offline", "disabled"])
def test_wandb_init_gets_the_mode_of_the_environment(mode, monkeypatch, capsys, tmp_path) -> None:
    """No network: wandb.init is replaced by a recorder. `offline: true` in base.yaml used to
    rewrite WANDB_MODE to dryrun here, whatever the user had set."""
    monkeypatch.setenv("WANDB_MODE", mode)
    calls = []

    def record(**kwargs):
        calls.append((kwargs.get("mode"), os.environ["WANDB_MODE"]))
        return object()

    logger = wandb_logger(capsys, tmp_path)
    # After composing: the parser reads WandbLogger's extra options from wandb.init's signature.
    monkeypatch.setattr("wandb.init", record)
    _ = logger.experiment  # starts the run: wandb.init
    assert calls == [(mode, mode)]


def test_wandb_is_offline_when_wandb_mode_is_unset(monkeypatch, capsys) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    (spec,) = [
        logger
        for logger in composed(capsys)["trainer"]["logger"]
        if logger["class_path"].endswith("WandbLogger")
    ]
    assert spec["init_args"]["mode"] == "offline"


@pytest.mark.parametrize("mode", ["disabled", "offline"])
def test_wandb_run_folder_follows_the_mode(mode, monkeypatch, capsys, tmp_path) -> None:
    """A real (local) wandb run: disabled writes nothing, offline writes an offline run folder."""
    monkeypatch.setenv("WANDB_MODE", mode)
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = wandb_logger(capsys, tmp_path)
    try:
        assert logger.experiment.settings.mode == mode
    finally:
        logger.experiment.finish()
    runs = sorted(p.name for p in tmp_path.glob("wandb/*-run-*"))
    if mode == "disabled":
        assert runs == []
    else:
        assert len(runs) == 1 and runs[0].startswith("offline-run-")


def test_each_sweep_run_gets_its_own_folder(monkeypatch, capsys) -> None:
    """A W&B agent sets WANDB_RUN_ID per run: it names the run folder and its checkpoints."""
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    config = composed(capsys)
    assert config["run_name"] == "abc123"
    assert config["trainer"]["default_root_dir"] == "runs/abc123"
    (checkpoint,) = [
        c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("RunCheckpoint")
    ]
    assert checkpoint["init_args"]["dirpath"] == "runs/abc123/checkpoints"
    monkeypatch.delenv("WANDB_RUN_ID")
    assert composed(capsys)["run_name"] == "finetune"
