"""The SLURM example requeues on preemption and resumes (issue 20): its #SBATCH lines, the
trainer config's SLURMEnvironment, and which checkpoint the script resumes from."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

TRAINER = Path(__file__).resolve().parents[1] / "experiments" / "trainer"
SCRIPT = TRAINER / "slurm_example.sh"


def test_script_asks_for_the_preemption_signal_and_requeue() -> None:
    directives = [
        line.removeprefix("#SBATCH").strip()
        for line in SCRIPT.read_text().splitlines()
        if line.startswith("#SBATCH")
    ]
    assert "--signal=SIGUSR1@90" in directives
    assert "--requeue" in directives


def test_trainer_config_requeues_on_that_signal() -> None:
    plugins = yaml.safe_load((TRAINER / "slurm.yaml").read_text())["trainer"]["plugins"]
    (slurm,) = [p for p in plugins if p["class_path"].endswith(".SLURMEnvironment")]
    assert slurm["init_args"] == {"auto_requeue": True, "requeue_signal": "SIGUSR1"}


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(
    ("restarts", "extra", "resume"),
    [(None, [], "last"), ("0", [], "last"), ("2", [], "hpc"), ("1", ["--ckpt_path", "x"], "x")],
)
def test_script_resumes_from_last_then_from_the_preemption_checkpoint(
    tmp_path: Path, restarts: str | None, extra: list[str], resume: str
) -> None:
    # A stand-in srun records the command the script launches.
    srun = tmp_path / "srun"
    srun.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n')
    srun.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "SLURM_RESTART_COUNT"}
    env.update(PATH=f"{tmp_path}{os.pathsep}{env['PATH']}", SRUN_ARGS=str(tmp_path / "args"))
    if restarts is not None:
        env["SLURM_RESTART_COUNT"] = restarts
    subprocess.run(["bash", str(SCRIPT), *extra], env=env, check=True, timeout=30)
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:2] == [".venv/bin/lightning-fa", "fit"]
    assert "experiments/trainer/slurm.yaml" in args
    # jsonargparse keeps the last value of a repeated option.
    ckpt_paths = [args[i + 1] for i, arg in enumerate(args) if arg == "--ckpt_path"]
    assert ckpt_paths[-1] == resume
