"""The theta sweep parses into valid CLI calls; `sweep-local` runs a grid and tabulates it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from lightning_fa.commands.cli import main as cli_main
from lightning_fa.commands.sweep import grid, load_sweep, main, point_args, without_configs
from lightning_fa.losses import JitterLoss
from tests.conftest import REPO_ROOT
from tests.test_cli import TINY

THETA = REPO_ROOT / "experiments" / "sweeps" / "theta.yaml"
THETA_KEY = "model.init_args.loss.init_args.theta"
PDC_KEY = "model.init_args.pdc_threshold"


def wandb_fit_command(config: str) -> list[str]:
    """A W&B sweep `command` that runs `lightning-fa fit --config CONFIG` with the point's args."""
    return ["${env}", "python", "-m", "lightning_fa", "fit", "--config", config, "${args}"]


def printed_config(args: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.fixture
def theta_points(tmp_path, monkeypatch, capsys) -> list[tuple[dict, dict]]:
    """(grid point, the config the CLI builds for it) for the 25 points of the theta sweep."""
    monkeypatch.chdir(REPO_ROOT)  # the sweep command names its configs relative to the repo
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "300vw"))
    sweep = load_sweep(THETA)
    points = grid(sweep.parameters)
    return [
        (point, printed_config(point_args(sweep, point, f"theta-{i:03d}"), capsys))
        for i, point in enumerate(points)
    ]


def test_theta_sweep_points_parse_and_reach_their_keys(theta_points, tmp_path) -> None:
    assert len(theta_points) == 25
    seen = set()
    for i, (point, config) in enumerate(theta_points):
        model = config["model"]["init_args"]
        theta, pdc = point[THETA_KEY], point[PDC_KEY]
        assert model["loss"]["init_args"]["theta"] == theta
        assert model["pdc_threshold"] == pdc
        # base.yaml interpolates the loss threshold from the PDC threshold: the swept value
        # must reach it too (not the 0.2 written in base.yaml).
        assert model["loss"]["init_args"]["threshold"] == pdc
        assert config["run_name"] == f"theta-{i:03d}"
        assert config["trainer"]["default_root_dir"] == f"runs/theta-{i:03d}"
        assert config["data"]["init_args"]["root"] == str(tmp_path / "300vw")
        seen.add((theta, pdc))
    assert seen == {(t, p) for t in (0.0, 0.5, 1.0, 1.5, 2.0) for p in (0.0, 0.1, 0.2, 0.4, 0.6)}


def test_theta_sweep_losses_build(theta_points) -> None:
    for _, config in theta_points:
        JitterLoss(**config["model"]["init_args"]["loss"]["init_args"])


def test_grid_order_and_single_values(tmp_path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "method": "grid",
                "parameters": {
                    "a": {"values": [1, 2]},
                    "b": {"value": "x"},
                    "c": {"values": [3, 4]},
                },
                "command": wandb_fit_command("b.yaml"),
            },
            sort_keys=False,
        )
    )
    sweep = load_sweep(path)
    assert sweep.command == "fit" and sweep.fixed_args == ["--config", "b.yaml"]
    assert grid(sweep.parameters) == [
        {"a": 1, "b": "x", "c": 3},
        {"a": 1, "b": "x", "c": 4},
        {"a": 2, "b": "x", "c": 3},
        {"a": 2, "b": "x", "c": 4},
    ]
    args = point_args(sweep, {"a": [1, 2], "b": True}, "r", configs=["x.yaml"], overrides=["k=v"])
    assert args == ["fit", "--config", "x.yaml", "--a=[1, 2]", "--b=true", "--k=v", "--run_name=r"]  # fmt: skip
    assert without_configs(["--config", "a", "--config=b", "--x=1"]) == ["--x=1"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"method": "bayes", "parameters": {"a": {"values": [1]}}}, "method must be 'grid'"),
        ({"method": "grid", "parameters": {"a": {"min": 0, "max": 1}}}, "parameter 'a'"),
        ({"method": "grid"}, "non-empty 'parameters'"),
    ],
)
def test_bad_sweep_files_are_rejected(tmp_path, spec, message) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=message):
        load_sweep(path)
    with pytest.raises(FileNotFoundError, match="sweep file not found"):
        load_sweep(tmp_path / "missing.yaml")


def tiny_sweep(tmp_path: Path) -> tuple[Path, Path]:
    config = json.loads(json.dumps(TINY))
    # The CSV log follows each point's root folder (set by sweep-local) through interpolation.
    config["trainer"]["logger"] = [
        {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": "${trainer.default_root_dir}", "name": "csv"},
        }
    ]
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))
    sweep_path = tmp_path / "tiny_sweep.yaml"
    sweep_path.write_text(
        yaml.safe_dump(
            {
                "method": "grid",
                "metric": {"name": "test/mild/finetuned/mcv", "goal": "minimize"},
                # tbptt_chunk 0 is invalid: those two points must fail without ending the sweep.
                "parameters": {
                    "model.init_args.tbptt_chunk": {"values": [2, 0]},
                    PDC_KEY: {"values": [0.1, 0.3]},
                },
                "command": wandb_fit_command("unused.yaml"),
            },
            sort_keys=False,
        )
    )
    return sweep_path, config_path


def test_sweep_local_dry_run_prints_every_point(tmp_path, capsys) -> None:
    sweep_path, config_path = tiny_sweep(tmp_path)
    base = str(REPO_ROOT / "experiments" / "base.yaml")
    assert main([str(sweep_path), "--config", base, "--config", str(config_path), "--dry-run"]) == 0
    fits = [line for line in capsys.readouterr().out.splitlines() if " fit " in line]
    assert len(fits) == 4
    assert all("unused.yaml" not in line and "--run_name=tiny_sweep-00" in line for line in fits)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sweep_local_runs_every_point_and_writes_the_table(tmp_path) -> None:
    sweep_path, config_path = tiny_sweep(tmp_path)
    out = tmp_path / "out"
    base = str(REPO_ROOT / "experiments" / "base.yaml")
    args = ["--config", base, "--config", str(config_path), "--out", str(out)]
    code = main([str(sweep_path), *args, "--set", "trainer.log_every_n_steps=1"])
    assert code == 1  # some points failed

    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert [(r["model.init_args.tbptt_chunk"], r[PDC_KEY]) for r in rows] == [
        ("2", "0.1"),
        ("2", "0.3"),
        ("0", "0.1"),
        ("0", "0.3"),
    ]
    for row in rows:
        if row["model.init_args.tbptt_chunk"] == "2":
            assert row["status"] == "ok" and not row["error"]
            assert float(row["test/mild/finetuned/mcv"]) >= 0  # the test stage ran
            assert float(row["train/loss"]) >= 0
            # Each point logged into its own folder, with its own resolved threshold.
            saved = yaml.safe_load(next((out / row["run_name"]).rglob("config.yaml")).read_text())
            loss = saved["model"]["init_args"]["loss"]["init_args"]
            assert loss["threshold"] == float(row[PDC_KEY])
        else:
            assert row["status"] == "failed" and "tbptt_chunk" in row["error"]
    table = (out / "results.md").read_text().splitlines()
    assert sum(line.startswith("| tiny_sweep-") for line in table) == 4
    assert any("test/mild/finetuned/mcv" in line for line in table)
