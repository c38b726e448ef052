"""Outputs are never lost: atomic replacement, one writer per path, one-line command errors."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from lightning_fa.errors import run_command
from lightning_fa.outputs import (
    OutputLock,
    atomic_output,
    atomic_write,
    check_writable,
    claim_outputs,
)


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.mark.parametrize(
    "failure",
    [
        KeyboardInterrupt(),
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("crash"),
    ],
    ids=["ctrl-c", "disk-full", "crash"],
)
def test_a_failed_write_keeps_the_earlier_result(tmp_path: Path, failure: BaseException) -> None:
    target = tmp_path / "metrics.json"
    target.write_text('{"complete": true}')
    with pytest.raises(type(failure)), atomic_write(target) as handle:
        handle.write('{"comple')
        raise failure
    assert target.read_text() == '{"complete": true}'
    assert leftovers(tmp_path, {"metrics.json"}) == []


def test_a_complete_write_replaces_the_target(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.csv"
    with atomic_write(target, newline="") as handle:
        handle.write("a,b\n")
        # Until the block ends the target does not exist (nothing partial under its name).
        assert not target.exists()
    assert target.read_text() == "a,b\n"
    assert leftovers(target.parent, {"out.csv"}) == []


def test_atomic_output_keeps_the_suffix_for_format_picking_writers(tmp_path: Path) -> None:
    target = tmp_path / "tracks.npz"
    with atomic_output(target) as temporary:
        assert temporary.suffix == ".npz" and temporary.parent == tmp_path
        np.savez(temporary, a=np.arange(3))
    with np.load(target) as data:
        assert data["a"].tolist() == [0, 1, 2]


def test_writing_to_a_full_device_leaves_the_target(tmp_path: Path) -> None:
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full here")
    target = tmp_path / "out.txt"
    target.write_text("earlier")
    with pytest.raises(OSError), atomic_write(target) as handle:
        with open(full, "w") as device:  # the real ENOSPC, raised inside the write
            device.write("x" * 65536)
            device.flush()
        handle.write("never")
    assert target.read_text() == "earlier"


def test_a_second_writer_of_the_same_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "landmarks.csv"
    with OutputLock(target):
        with pytest.raises(ValueError, match=r"landmarks\.csv is being written by another run"):
            OutputLock(target).acquire()
        # Another path in the same folder is free.
        with OutputLock(tmp_path / "other.csv"):
            pass
    with OutputLock(target):  # released: the next run may write
        pass
    assert leftovers(tmp_path, set()) == []


@pytest.mark.parametrize("case", ["directory", "parent-is-file", "read-only-folder"])
def test_unwritable_outputs_are_named_before_any_work(tmp_path: Path, case: str) -> None:
    if case == "directory":
        path = tmp_path
    elif case == "parent-is-file":
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "out.csv"
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        path = folder / "out.csv"

        if os.access(folder, os.W_OK):  # root ignores permissions
            folder.chmod(0o700)
            pytest.skip("running as a user that ignores permissions")
    with pytest.raises(ValueError, match="cannot write --out") as info:
        check_writable(path, "--out")
    assert str(path) in str(info.value)


def test_claim_outputs_creates_nothing_at_the_targets(tmp_path: Path) -> None:
    csv, json_path = tmp_path / "a.csv", tmp_path / "deep" / "a.json"
    with claim_outputs([(csv, "--out-csv"), (json_path, "--out-json"), (None, "--out-video")]):
        assert not csv.exists() and not json_path.exists()
    assert leftovers(tmp_path, {"deep"}) == []


def test_run_command_prints_one_line_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    def body(argv: list[str]) -> int:
        raise ValueError(f"{argv[0]}: line 3 is 'nan'\n(not a number)")

    assert run_command("lightning-fa x", body, ["a.pts"]) == 2
    err = capsys.readouterr().err
    assert err == "lightning-fa x: a.pts: line 3 is 'nan'; (not a number)\n"


def test_run_command_debug_shows_the_traceback() -> None:
    def body(argv: list[str]) -> int:
        assert argv == ["a"]
        raise FileNotFoundError("a")

    with pytest.raises(FileNotFoundError):
        run_command("lightning-fa x", body, ["a", "--debug"])


def test_run_command_interrupt_is_status_130(capsys: pytest.CaptureFixture[str]) -> None:
    def body(argv: list[str]) -> int:
        raise KeyboardInterrupt

    assert run_command("lightning-fa x", body, []) == 130
    assert "interrupted" in capsys.readouterr().err


def test_bugs_keep_their_traceback() -> None:
    def body(argv: list[str]) -> int:
        raise TypeError("a bug")

    with pytest.raises(TypeError):
        run_command("lightning-fa x", body, [])


def test_results_get_the_usual_permissions(tmp_path: Path) -> None:
    fresh, replaced = tmp_path / "fresh.txt", tmp_path / "replaced.txt"
    replaced.write_text("old")
    replaced.chmod(0o640)
    for path in (fresh, replaced):
        with atomic_write(path) as handle:
            handle.write("new")
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask
    assert replaced.stat().st_mode & 0o777 == 0o640


def test_a_write_error_names_the_target_not_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    with pytest.raises(OSError) as info, atomic_output(target) as temporary:
        raise OSError(errno.ENOSPC, "No space left on device", str(temporary))
    assert info.value.filename == str(target)
    assert leftovers(tmp_path, set()) == []
