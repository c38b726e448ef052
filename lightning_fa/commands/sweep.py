"""`lightning-fa sweep-local`: run a W&B grid sweep file without a W&B server.

    lightning-fa sweep-local experiments/sweeps/theta.yaml [--config CFG ...] [--set key=value ...]
                             [--out DIR] [--eval test|validate|none] [--dry-run]

Every grid point of `parameters` (`{values: [...]}` or `{value: x}`) becomes one
`lightning-fa fit <fixed args> --key=value ... --run_name=<sweep>-<i>` (the fixed args and the
Lightning command come from the sweep's `command`; `--config` here replaces its configs), then
`lightning-fa <eval> --ckpt_path <its last checkpoint>`. The last value of every metric logged to
the point's CSV files goes into `results.csv` and `results.md` (one row per point); a failing
point is recorded with its error and the sweep goes on. A two-parameter grid also gets
`tables.md`: NRMSE x MCV and NRMSE x MAV per test set, one parameter down and one across (the
paper's Tables 3-4).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import shlex
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_fa.commands.cli import LIGHTNING_COMMANDS
from lightning_fa.commands.cli import main as cli_main
from lightning_fa.errors import DEBUG_FLAG, describe_error, load_yaml_file
from lightning_fa.outputs import atomic_write, claim_outputs, write_text_atomic

EVAL_COMMANDS = ("test", "validate", "none")


@dataclass
class Sweep:
    name: str
    command: str  # the Lightning subcommand (fit)
    fixed_args: list[str]  # the command's own arguments, W&B macros removed
    parameters: dict[str, list[Any]]
    metric: str | None
    goal: str


def load_sweep(path: str | Path) -> Sweep:
    """Read a W&B sweep file; only grid sweeps over `values` / `value` run locally."""
    path = Path(path)
    spec = load_yaml_file(path, "sweep file")
    if spec is None:
        raise ValueError(f"{path}: the sweep file is empty; it needs a 'parameters' mapping")
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a sweep file is a mapping, got {type(spec).__name__}")
    if spec.get("method", "grid") != "grid":
        raise ValueError(
            f"{path}: method must be 'grid' for sweep-local, got {spec.get('method')!r} "
            "(random / bayes sweeps need the W&B agent: make sweep)"
        )
    raw = spec.get("parameters")
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected a non-empty 'parameters' mapping, got {raw!r}")
    parameters = {}
    for name, entry in raw.items():
        if isinstance(entry, dict) and isinstance(entry.get("values"), list) and entry["values"]:
            parameters[name] = entry["values"]
        elif isinstance(entry, dict) and "value" in entry:
            parameters[name] = [entry["value"]]
        else:
            raise ValueError(
                f"{path}: parameter {name!r} must be {{values: [...]}} or {{value: x}} for a "
                f"grid, got {entry!r}"
            )
    tokens = [str(t) for t in spec.get("command", [])]
    commands = [i for i, t in enumerate(tokens) if t in LIGHTNING_COMMANDS]
    command, fixed = (tokens[commands[0]], tokens[commands[0] + 1 :]) if commands else ("fit", [])
    metric = spec.get("metric") or {}
    return Sweep(
        name=path.stem,
        command=command,
        fixed_args=[t for t in fixed if not (t.startswith("${") and t.endswith("}"))],
        parameters=parameters,
        metric=metric.get("name"),
        goal=metric.get("goal", "minimize"),
    )


def grid(parameters: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination, the first parameter varying slowest (W&B's grid order)."""
    names = list(parameters)
    return [dict(zip(names, combo)) for combo in itertools.product(*parameters.values())]


def format_value(value: Any) -> str:
    """A value as the Lightning CLI reads it from `--key=value` (JSON for lists / mappings)."""
    if isinstance(value, bool) or value is None or isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def split_configs(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """The files of every `--config X` / `--config=X` in `args`, and the other arguments."""
    configs, kept, value_next = [], [], False
    for arg in args:
        if value_next:
            configs.append(arg)
            value_next = False
        elif arg == "--config":
            value_next = True
        elif arg.startswith("--config="):
            configs.append(arg.removeprefix("--config="))
        else:
            kept.append(arg)
    return configs, kept


def without_configs(args: list[str]) -> list[str]:
    """`args` minus every `--config X` / `--config=X`."""
    return split_configs(args)[1]


def check_configs(files: Sequence[str], where: str) -> None:
    """Every config file exists: a missing one would fail each grid point in turn."""
    for name in files:
        if not Path(name).is_file():
            raise FileNotFoundError(f"config file not found: {name} ({where})")


def point_args(
    sweep: Sweep,
    point: dict[str, Any],
    run_name: str,
    configs: list[str] | None = None,
    overrides: Sequence[str] = (),
    root_dir: str | Path | None = None,
) -> list[str]:
    """The `lightning-fa` argument list of one grid point (without the program name)."""
    fixed = sweep.fixed_args
    if configs:
        fixed = [*(a for c in configs for a in ("--config", c)), *without_configs(fixed)]
    args = [sweep.command, *fixed]
    args += [f"--{key}={format_value(value)}" for key, value in point.items()]
    args += [f"--{item}" for item in overrides]
    args.append(f"--run_name={run_name}")
    if root_dir is not None:
        args.append(f"--trainer.default_root_dir={root_dir}")
    return args


def read_final_metrics(paths: list[Path]) -> dict[str, float]:
    """The last logged value of every column of Lightning CSV logs, read in the given order."""
    values: dict[str, float] = {}
    for path in paths:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                values.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    for bookkeeping in ("epoch", "step"):
        values.pop(bookkeeping, None)
    return values


def _newest(root: Path, pattern: str) -> list[Path]:
    return sorted(root.rglob(pattern), key=lambda p: p.stat().st_mtime)


def _run(args: list[str]) -> None:
    """One in-process `lightning-fa` call. Bad input raises (`--debug`), so the table records
    its cause and error.txt its traceback; any other exit status becomes an exception."""
    try:
        code = cli_main([*args, DEBUG_FLAG])
    except SystemExit as exit_info:
        code = exit_info.code
    if code not in (0, None):
        raise RuntimeError(f"lightning-fa {args[0]} exited with status {code}")


def run_point(
    sweep: Sweep,
    point: dict[str, Any],
    run_name: str,
    root: Path,
    configs: list[str] | None,
    overrides: Sequence[str],
    evaluate: str,
    dry_run: bool,
) -> dict[str, Any]:
    """Fit one grid point (then evaluate its last checkpoint); its row of the results table."""
    fit_args = point_args(sweep, point, run_name, configs, overrides, root)
    eval_args = [evaluate, *fit_args[1:]]
    if dry_run:
        print("lightning-fa", shlex.join(fit_args))
        if evaluate != "none":
            print("lightning-fa", shlex.join([*eval_args, "--ckpt_path=<last checkpoint>"]))
        return {"run_name": run_name, **point, "status": "dry-run"}
    row: dict[str, Any] = {"run_name": run_name, **point}
    try:
        _run(fit_args)
        if evaluate != "none":
            checkpoints = _newest(root, "last*.ckpt")
            if not checkpoints:
                raise FileNotFoundError(f"no last*.ckpt under {root} (ModelCheckpoint save_last?)")
            _run([*eval_args, f"--ckpt_path={checkpoints[-1]}"])
        row["status"] = "ok"
    except Exception as error:  # a failing point must not end the sweep
        row["status"] = "failed"
        row["error"] = describe_error(error)
        root.mkdir(parents=True, exist_ok=True)
        (root / "error.txt").write_text(traceback.format_exc())
    row.update(read_final_metrics(_newest(root, "metrics.csv")))
    return row


def write_table(rows: list[dict[str, Any]], sweep: Sweep, out: Path) -> tuple[Path, Path]:
    """`results.csv` (every column) and `results.md` (parameters, status, fine-tuned metrics)."""
    out.mkdir(parents=True, exist_ok=True)
    params = list(sweep.parameters)
    metrics = sorted({k for row in rows for k in row} - {"run_name", "status", "error", *params})
    columns = ["run_name", *params, "status", *metrics, "error"]
    csv_path = out / "results.csv"
    with atomic_write(csv_path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)

    shown = [m for m in metrics if "/finetuned/" in m or m == sweep.metric]
    md_columns = ["run_name", *params, "status", *shown, "error"]

    def cell(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|")

    lines = [f"# Sweep {sweep.name}", ""]
    if sweep.metric:
        logged = "" if sweep.metric in metrics else " (not logged by any point)"
        lines += [f"Sweep metric: `{sweep.metric}` ({sweep.goal}){logged}.", ""]
    lines += ["| " + " | ".join(md_columns) + " |", "|" + "---|" * len(md_columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in md_columns) + " |" for row in rows]
    md_path = out / "results.md"
    write_text_atomic(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path


# Products of the paper's Tables 3-4 (accuracy x stability; lower is better), from the metric
# names the system logs per test set and variant (`test/<set>/<variant>/<name>`).
GRID_PRODUCTS = (("NRMSE x MCV", "mcv"), ("NRMSE x MAV", "mav"))


def grid_tables(rows: list[dict[str, Any]], sweep: Sweep) -> str | None:
    """Markdown of the paper's Table 3 / Table 4 layout for a two-parameter grid: per test set
    and product, the first parameter down, the second across, the fine-tuned model's value in
    each cell and the raw backbone's (at the first value of the first parameter) in the last row
    (with a loss parameter down, it changes only across, with the decoding). None
    when the grid has not two parameters or no point logged test NRMSE."""
    if len(sweep.parameters) != 2:
        return None
    (down, down_values), (across, across_values) = sweep.parameters.items()
    short = {key: key.rsplit(".", 1)[-1] for key in (down, across)}  # the argument's own name
    sets = sorted({k.split("/")[1] for row in rows for k in row if k.startswith("test/") and k.endswith("/finetuned/nrmse")})  # fmt: skip
    if not sets:
        return None

    def product(row: dict[str, Any] | None, name: str, variant: str, metric: str) -> str:
        keys = (f"test/{name}/{variant}/nrmse", f"test/{name}/{variant}/{metric}")
        if row is None or any(k not in row for k in keys):
            return "-"
        return f"{row[keys[0]] * row[keys[1]]:.4g}"

    def point(a: Any, b: Any) -> dict[str, Any] | None:
        found = [r for r in rows if r.get(down) == a and r.get(across) == b]
        return found[0] if found else None

    lines = [f"# Sweep {sweep.name}: {down} (rows) x {across} (columns)", ""]
    for name in sets:
        for title, metric in GRID_PRODUCTS:
            lines += [f"## {name}: {title} (fine-tuned; lower is better)", ""]
            head = f"{short[down]} \\ {short[across]}"
            lines += [f"| {head} | " + " | ".join(map(str, across_values)) + " |"]
            lines += ["|" + "---|" * (len(across_values) + 1)]
            for a in down_values:
                cells = [product(point(a, b), name, "finetuned", metric) for b in across_values]
                lines += [f"| {a} | " + " | ".join(cells) + " |"]
            raw = [product(point(down_values[0], b), name, "backbone", metric) for b in across_values]  # fmt: skip
            lines += [f"| raw backbone ({short[down]} {down_values[0]}) | " + " | ".join(raw) + " |", ""]  # fmt: skip
    return "\n".join(lines)


def run_sweep(
    sweep_path: str | Path,
    out: str | Path | None = None,
    configs: list[str] | None = None,
    overrides: Sequence[str] = (),
    evaluate: str = "test",
    dry_run: bool = False,
) -> list[dict[str, Any]]:
    """Run every grid point of a sweep file in this process; returns the table rows."""
    if evaluate not in EVAL_COMMANDS:
        raise ValueError(f"evaluate must be one of {EVAL_COMMANDS}, got {evaluate!r}")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
    sweep = load_sweep(sweep_path)
    if configs:
        check_configs(configs, "--config")
    else:
        check_configs(split_configs(sweep.fixed_args)[0], f"the command of {sweep_path}")
    out = Path(out) if out is not None else Path("runs") / "sweeps" / sweep.name
    # The tables are checked and locked before the first point: a sweep must not train for
    # hours and then fail to write them, nor interleave its table with another sweep's.
    names = ["results.csv", "results.md", *(["tables.md"] if len(sweep.parameters) == 2 else [])]
    tables = [] if dry_run else [(out / name, "--out") for name in names]
    with claim_outputs(tables):
        rows = []
        points = grid(sweep.parameters)
        for index, point in enumerate(points):
            run_name = f"{sweep.name}-{index:03d}"
            if not dry_run:
                print(f"[sweep-local] {index + 1}/{len(points)} {run_name}: {point}", flush=True)
            root = out / run_name
            rows.append(
                run_point(sweep, point, run_name, root, configs, overrides, evaluate, dry_run)
            )
        if not dry_run:
            csv_path, md_path = write_table(rows, sweep, out)
            tables = grid_tables(rows, sweep)
            if tables is not None:
                write_text_atomic(out / "tables.md", tables)
                md_path = f"{md_path}, {out / 'tables.md'}"
            failed = sum(row["status"] != "ok" for row in rows)
            print(
                f"[sweep-local] {len(rows) - failed}/{len(rows)} points ok; {csv_path}, {md_path}"
            )
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lightning-fa sweep-local",
        description="Run a W&B grid sweep file locally, one point after another, and tabulate it.",
    )
    parser.add_argument("sweep", help="W&B sweep YAML (method: grid)")
    parser.add_argument(
        "--config",
        action="append",
        default=None,
        help="config for every point (repeatable); replaces the sweep command's --config files",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra override for every point, e.g. trainer.max_epochs=2 (repeatable)",
    )
    parser.add_argument("--out", default=None, help="output folder (default runs/sweeps/<name>)")
    parser.add_argument(
        "--eval",
        dest="evaluate",
        choices=EVAL_COMMANDS,
        default="test",
        help="evaluate each point's last checkpoint after fit (default test)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    rows = run_sweep(args.sweep, args.out, args.config, args.overrides, args.evaluate, args.dry_run)
    return 0 if all(row["status"] in ("ok", "dry-run") for row in rows) else 1
