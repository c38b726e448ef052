"""Bad input and faults for `demo`, `sweep-local`, `unlabelled-experiment` and the caches.

Every case checks what the user sees (exit status 2 and one line naming the file or value, or
a notice and a rebuilt cache) and that an earlier output, written here with known bytes, is
byte-identical afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from data_modules.unlabelled import UnlabelledVideoDataModule
from data_modules.video_files import FrameStore
from lightning_fa import labelling
from lightning_fa.backbones import load_checkpoint
from lightning_fa.commands.cli import main as cli_main
from lightning_fa.commands.embedded import config as embedded_config
from lightning_fa.commands.embedded import run as embedded_run
from lightning_fa.commands.sweep import load_sweep, write_table
from lightning_fa.outputs import OutputLock
from tests.conftest import REPO_ROOT
from tests.test_video_data import _write_video

EARLIER = b"earlier complete result\n"


def earlier(path: Path) -> Path:
    """An earlier complete output with known bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(EARLIER)
    return path


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """`lightning-fa ARGS`: the exit status and the last line of stderr."""
    code = cli_main(args)
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


def no_stray_files(folder: Path) -> list[str]:
    """Temporary or lock files left in `folder` (atomic writes and locks clean up after them)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- demo


def _demo_locked(tmp_path: Path) -> tuple[list[str], Path, str]:
    out = tmp_path / "run"
    earlier(out / "metrics.json")  # the test holds its lock: a first demo still writing it
    return ["--out", str(out)], out / "metrics.json", f"{out / 'metrics.json'} is being written"


def _demo_out_is_a_file(tmp_path: Path) -> tuple[list[str], Path, str]:
    out = earlier(tmp_path / "run")
    return ["--out", str(out)], out, f"--out {out} is a file"


def _demo_cache_dir_is_a_file(tmp_path: Path) -> tuple[list[str], Path, str]:
    out, cache = tmp_path / "run", earlier(tmp_path / "cache")
    earlier(out / "metrics.json")
    return ["--out", str(out), "--cache-dir", str(cache)], out / "metrics.json", str(cache)


@pytest.mark.parametrize(
    "case", [_demo_locked, _demo_out_is_a_file, _demo_cache_dir_is_a_file], ids=lambda c: c.__name__
)
def test_demo_refuses_before_any_work(tmp_path, capsys, one_thread, case: Callable) -> None:
    args, kept, named = case(tmp_path)
    args = ["demo", "--fast", "--no-report", *args]
    if "--cache-dir" not in args:
        args += ["--cache-dir", str(tmp_path / "cache")]
    with OutputLock(tmp_path / "run" / "metrics.json") if case is _demo_locked else nullcontext():
        code, message = run_cli(args, capsys)
    assert code == 2 and message.startswith("lightning-fa demo: ") and named in message
    assert kept.read_bytes() == EARLIER
    # Refused before pretraining: no training logs, no cache entry.
    assert not (tmp_path / "run" / "pretrain").exists() and not (tmp_path / "cache").is_dir()


def _truncated(path: Path) -> None:
    torch.save(
        embedded_run.build_backbone(embedded_config.PipelineConfig.fast().pretrain).state_dict(),
        path,
    )
    path.write_bytes(path.read_bytes()[:1000])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _foreign(path: Path) -> None:
    torch.save({"weight": torch.zeros(3)}, path)  # a plain checkpoint of another model


@pytest.mark.parametrize("damage", [_truncated, _empty, _foreign], ids=lambda d: d.__name__)
def test_demo_rebuilds_an_unusable_cached_backbone(
    tmp_path, capsys, one_thread, damage: Callable
) -> None:
    config = embedded_config.PipelineConfig.fast()
    cache, out = tmp_path / "cache", tmp_path / "run"
    entry = cache / f"{config.pretrain.cache_key()}.pth"
    entry.parent.mkdir()
    damage(entry)
    damaged = entry.read_bytes()
    kept = earlier(out / "metrics.json")
    code = cli_main(
        ["demo", "--fast", "--pretrain-only", "--out", str(out), "--cache-dir", str(cache)]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert f"cached backbone {entry} is unusable, pretraining it again" in printed
    assert entry.read_bytes() != damaged
    load_checkpoint(embedded_run.build_backbone(config.pretrain), entry)  # the rebuilt entry loads
    assert kept.read_bytes() == EARLIER and no_stray_files(cache) == []


def test_rebuilt_backbone_entries_are_byte_identical(tmp_path, one_thread) -> None:
    """The entry's SHA-256 goes into fine-tuned checkpoints: a rebuild must not change it
    (torch.save names its archive after the file, so not after a random temporary name)."""
    config = embedded_config.PipelineConfig.fast()
    builds = []
    for _ in range(2):
        path, _ = embedded_run.pretrain_backbone(config, tmp_path / "run", tmp_path / "cache", True)
        builds.append(path.read_bytes())
    assert builds[0] == builds[1]


def _disk_full(*args, **kwargs) -> None:
    raise OSError(28, "No space left on device")


def _interrupted(*args, **kwargs) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("fault", [_disk_full, _interrupted], ids=lambda f: f.__name__)
def test_demo_crash_mid_write_keeps_the_earlier_results(tmp_path, monkeypatch, fault) -> None:
    metrics, tracks = earlier(tmp_path / "metrics.json"), earlier(tmp_path / "tracks.npz")

    def partial_savez(file, **arrays) -> None:
        Path(file).write_bytes(b"PK\x03\x04 half of an archive")
        fault()

    monkeypatch.setattr(np, "savez_compressed", partial_savez)
    with pytest.raises((OSError, KeyboardInterrupt)):
        embedded_run.write_results(tmp_path, {"results": {}}, {"clean/gt": np.zeros((1, 2, 68, 2))})
    assert metrics.read_bytes() == EARLIER and tracks.read_bytes() == EARLIER
    assert no_stray_files(tmp_path) == []


# --------------------------------------------------------------------------- unlabelled cache


def _processed(frames: int = 30) -> dict[str, np.ndarray]:
    """What `process_video` caches, for a small still face."""
    raw = np.random.default_rng(0).uniform(20, 40, (frames, 68, 2))
    return {
        "fps": np.float64(25.0),
        "crops": np.zeros((frames, 8, 8, 3), np.uint8),
        "affines": np.tile(np.eye(2, 3), (frames, 1, 1)),
        "raw": raw,
        "detected": np.ones(frames, bool),
    }


@pytest.fixture
def unlabelled_module(tmp_path, monkeypatch) -> tuple[UnlabelledVideoDataModule, list, list[Path]]:
    """A data module over two (fake) clips whose processing is a recorded cheap stand-in."""
    videos = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    for i, video in enumerate(videos):
        video.write_bytes(bytes([i]) * 16)  # distinct contents: distinct cache keys
    processed: list[Path] = []

    def process(path, *args, **kwargs) -> dict[str, np.ndarray]:
        processed.append(Path(path))
        return _processed()

    monkeypatch.setattr(labelling, "process_video", process)
    labeller = labelling.PseudoLabeller(cache_dir=str(tmp_path / "cache"), image_size=8)
    module = UnlabelledVideoDataModule(
        videos=[str(v) for v in videos], labeller=labeller, precomputed_heatmaps=False, seq_len=4,
    )  # fmt: skip
    monkeypatch.setattr(labeller, "_get_backbone", lambda: None)
    return module, processed, videos


def _zip_cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _text(path: Path) -> None:
    path.write_text("not an archive\n")


def _arrays_missing(path: Path) -> None:
    video = _processed()
    del video["raw"]
    np.savez_compressed(path, **video)


def _lengths_differ(path: Path) -> None:
    np.savez_compressed(path, **{**_processed(), "affines": _processed(12)["affines"]})


@pytest.mark.parametrize(
    "damage", [_zip_cut, _empty, _text, _arrays_missing, _lengths_differ], ids=lambda d: d.__name__
)
def test_unusable_unlabelled_cache_is_named_and_rebuilt(
    unlabelled_module, capsys, damage: Callable
) -> None:
    module, processed, (good, bad) = unlabelled_module
    module.labeller.load(good)
    module.labeller.load(bad)
    kept = module.labeller.cache_path(good).read_bytes()
    damage(module.labeller.cache_path(bad))
    processed.clear()
    capsys.readouterr()
    module.setup("fit")  # both clips; only the damaged one is processed again
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"unlabelled cache {module.labeller.cache_path(bad)} is " in line and "again" in line
    assert processed == [bad]
    assert module.labeller.cache_path(good).read_bytes() == kept
    with np.load(module.labeller.cache_path(bad)) as rebuilt:
        np.testing.assert_array_equal(rebuilt["raw"], _processed()["raw"])
    assert len(module.train_set) > 0


def test_unlabelled_cache_crash_mid_write_leaves_no_entry(unlabelled_module, monkeypatch) -> None:
    module, processed, (video, _) = unlabelled_module

    def partial_savez(file, **arrays) -> None:
        Path(file).write_bytes(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(labelling.np, "savez_compressed", partial_savez)
        with pytest.raises(KeyboardInterrupt):
            module.labeller.load(video)
    cache = module.labeller.cache_path(video)
    assert not cache.exists() and no_stray_files(cache.parent) == []
    module.labeller.load(video)  # the next run processes it again instead of failing on it
    assert processed == [video, video] and cache.is_file()


# --------------------------------------------------------------------------- 300VW frame cache


def _cut_npy(folder: Path) -> Path:
    target = folder / "000003.npy"
    target.write_bytes(target.read_bytes()[:100])
    return target


def _deleted_jpg(folder: Path) -> Path:
    target = folder / "000003.jpg"
    target.unlink()
    return target


def _bad_marker(folder: Path) -> Path:
    target = folder / "complete.json"
    target.write_text('{"frames": ')
    return target


@pytest.mark.parametrize(
    ("fmt", "damage"), [("npy", _cut_npy), ("jpg", _deleted_jpg), ("npy", _bad_marker)]
)
def test_damaged_frame_cache_is_decoded_again(tmp_path, caplog, fmt: str, damage) -> None:
    rng = np.random.default_rng(3)
    _write_video(tmp_path / "data" / "009", 6, rng)
    _write_video(tmp_path / "data" / "010", 4, rng)
    video, other = (tmp_path / "data" / name / "vid.avi" for name in ("009", "010"))
    store = FrameStore(tmp_path / "cache", fmt)  # type: ignore[arg-type]
    expected = store.frames(video, 0, 6)
    store.ensure_cached(other)
    other_file = tmp_path / "cache" / "010" / f"000002.{fmt}"
    kept = other_file.read_bytes()
    damaged = damage(tmp_path / "cache" / "009")
    with caplog.at_level(logging.WARNING, logger="data_modules.video_files"):
        frames = store.frames(video, 0, 6)
    assert str(damaged) in caplog.text and "again" in caplog.text
    for a, b in zip(expected, frames, strict=True):
        np.testing.assert_array_equal(a, b)  # decoded and encoded again the same way
    assert damaged.is_file() and other_file.read_bytes() == kept
    assert no_stray_files(tmp_path / "cache") == []


# --------------------------------------------------------------------------- sweep-local


def _sweep(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


GRID = yaml.safe_dump({"method": "grid", "parameters": {"model.init_args.lr": {"values": [0.1]}}})
GRID_CFG = str(REPO_ROOT / "experiments" / "base.yaml")
SWEEP_CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "missing": (lambda d: [str(d / "nope.yaml")], "sweep file not found: {d}/nope.yaml"),
    "empty": (lambda d: [str(_sweep(d, ""))], "{d}/sweep.yaml: the sweep file is empty"),
    "not-yaml": (lambda d: [str(_sweep(d, "parameters: [1, 2\n"))], "{d}/sweep.yaml: line"),
    "binary": (lambda d: [str(_sweep(d, b"\xff\xfe\x00bin"))], "{d}/sweep.yaml: not a text"),
    "a-list": (
        lambda d: [str(_sweep(d, "- 1\n- 2\n"))],
        "{d}/sweep.yaml: a sweep file is a mapping",
    ),
    "no-parameters": (
        lambda d: [str(_sweep(d, "method: grid\n"))],
        "{d}/sweep.yaml: expected a non-empty 'parameters'",
    ),
    "missing-config": (
        lambda d: [str(_sweep(d, GRID)), "--config", str(d / "gone.yaml")],
        "config file not found: {d}/gone.yaml",
    ),
    "out-is-a-file": (
        lambda d: [str(_sweep(d, GRID)), "--out", str(earlier(d / "table")), "--config", GRID_CFG],
        "cannot write --out {d}/table/results.csv",
    ),
    "table-locked": (
        lambda d: [str(_sweep(d, GRID)), "--config", GRID_CFG],
        "{d}/out/results.csv is being written by another run",
    ),
}


@pytest.mark.parametrize("name", SWEEP_CASES)
def test_sweep_local_refuses_bad_input(tmp_path, capsys, name: str) -> None:
    make_args, expected = SWEEP_CASES[name]
    table = earlier(tmp_path / "out" / "results.csv")
    args = make_args(tmp_path)
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    with OutputLock(table) if name == "table-locked" else nullcontext():
        code, message = run_cli(["sweep-local", *args], capsys)
    assert code == 2 and message.startswith("lightning-fa sweep-local: ")
    assert expected.format(d=tmp_path) in message
    assert table.read_bytes() == EARLIER
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.csv"]  # no run


def test_sweep_table_crash_mid_write_keeps_the_earlier_tables(tmp_path) -> None:
    class Unprintable(float):
        def __str__(self) -> str:  # fails while the csv writer is halfway through the rows
            raise OSError(28, "No space left on device")

    sweep = load_sweep(_sweep(tmp_path, GRID))
    out = tmp_path / "out"
    csv_file, md_file = earlier(out / "results.csv"), earlier(out / "results.md")
    rows = [
        {"run_name": "a", "model.init_args.lr": 0.1, "status": "ok", "m": 1.0},
        {"run_name": "b", "model.init_args.lr": 0.2, "status": "ok", "m": Unprintable(2.0)},
    ]
    with pytest.raises(OSError, match="No space"):
        write_table(rows, sweep, out)
    assert csv_file.read_bytes() == EARLIER and md_file.read_bytes() == EARLIER
    assert no_stray_files(out) == []


# --------------------------------------------------------------------------- unlabelled-experiment


def _clips(folder: Path, *names: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return ["--videos", *(str(folder / name) for name in names)]


EXPERIMENT_CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "missing-video": (
        lambda d: [*_clips(d, "a.mp4"), str(d / "gone.mp4")],
        "--videos: no such file: {d}/gone.mp4",
    ),
    "single-video": (lambda d: _clips(d, "a.mp4"), "need at least 2 clips"),
    "same-names": (
        lambda d: [*_clips(d / "x", "a.mp4"), *_clips(d / "y", "a.mp4")[1:]],
        "clip names must differ",
    ),
    "unknown-held-out": (
        lambda d: [*_clips(d, "a.mp4", "b.mp4"), "--held-out", "c.mp4"],
        "--held-out ['c.mp4'] not among",
    ),
    "missing-config": (
        lambda d: [*_clips(d, "a.mp4", "b.mp4"), "--config", str(d / "gone.yaml")],
        "config file not found: {d}/gone.yaml",
    ),
    "out-is-a-file": (
        lambda d: [*_clips(d, "a.mp4", "b.mp4"), "--out", str(earlier(d / "summary"))],
        "cannot write --out {d}/summary/summary.md",
    ),
    "summary-locked": (
        lambda d: _clips(d, "a.mp4", "b.mp4"),
        "{d}/out/summary.md is being written by another run",
    ),
}


@pytest.mark.parametrize("name", EXPERIMENT_CASES)
def test_unlabelled_experiment_refuses_bad_input(tmp_path, capsys, monkeypatch, name) -> None:
    monkeypatch.chdir(REPO_ROOT)  # the experiment's configs are named relative to the repo
    make_args, expected = EXPERIMENT_CASES[name]
    summary = earlier(tmp_path / "out" / "summary.md")
    args = make_args(tmp_path)
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    with OutputLock(summary) if name == "summary-locked" else nullcontext():
        code, message = run_cli(["unlabelled-experiment", *args], capsys)
    assert code == 2 and message.startswith("lightning-fa unlabelled-experiment: ")
    assert expected.format(d=tmp_path) in message
    assert summary.read_bytes() == EARLIER
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.md"]  # no rotation


def test_unlabelled_experiment_needs_its_configs(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # not the repository root: experiments/*.yaml are not here
    summary = earlier(tmp_path / "out" / "summary.md")
    code, message = run_cli(
        ["unlabelled-experiment", *_clips(tmp_path, "a.mp4", "b.mp4"), "--out", "out"], capsys
    )
    assert code == 2 and "config file not found: experiments/base.yaml" in message
    assert "repository root" in message and summary.read_bytes() == EARLIER
