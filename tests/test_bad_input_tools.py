"""Bad input to `export`, `predict` and `report`: exit status 2, one line naming the file or the
value, and the earlier output left byte for byte (nothing partial, no temporary files)."""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from matplotlib.figure import Figure

from lightning_fa.outputs import OutputLock
from tests.test_bad_input_pipeline import EARLIER, earlier, no_stray_files, run_cli
from tests.test_checkpoint_security import _module, _save
from tests.test_cli import TINY
from tests.test_finetune_system import make_module
from tests.test_report import write_fake_run

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class Inputs:
    small: Path  # a 5-landmark fine-tuned checkpoint (quick to export)
    tiny68: Path  # a 68-landmark one, as the synthetic data
    data: Path  # a data YAML: 68-landmark synthetic videos
    run: Path  # a complete fake demo run (metrics.json, tracks.npz)
    broken: dict[str, Path]  # unusable checkpoints by name


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    small = _save(_module(), root / "small.ckpt")
    tiny68 = _save(make_module(store_backbone_weights=True), root / "tiny68.ckpt")
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"data": TINY["data"]}))
    (root / "run").mkdir()
    run = write_fake_run(root / "run")
    broken = {
        "empty.ckpt": b"",
        "truncated.ckpt": small.read_bytes()[:5000],
        "text.ckpt": b"this is not a checkpoint\n",
    }
    paths = {}
    for name, content in broken.items():
        (root / name).write_bytes(content)
        paths[name] = root / name
    torch.save([1, 2, 3], root / "list.ckpt")
    paths["list.ckpt"] = root / "list.ckpt"
    return Inputs(small, tiny68, data, run, paths)


@dataclass
class Context:
    inputs: Inputs
    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch
    stack: contextlib.ExitStack


# A case builds its inputs and returns (argv, the earlier output to protect, words the message
# must contain). The test writes EARLIER to that output first.
Case = Callable[[Context], tuple[list[str], Path, list[str]]]


def _export(ctx: Context, checkpoint: Path | None = None, *extra: str) -> tuple[list[str], Path]:
    out = ctx.tmp_path / "model.onnx"
    checkpoint = checkpoint or ctx.inputs.small
    return ["export", str(checkpoint), "--out", str(out), *extra], out


def export_opset_high(ctx):
    argv, out = _export(ctx, None, "--opset", "30")
    return argv, out, ["--opset", "30"]


def export_opset_low(ctx):
    argv, out = _export(ctx, None, "--opset", "11")
    return argv, out, ["--opset", "11"]


def export_missing_checkpoint(ctx):
    missing = ctx.tmp_path / "nowhere.ckpt"
    argv, out = _export(ctx, missing)
    return argv, out, [str(missing)]


def _export_broken(name: str) -> Case:
    def case(ctx):
        checkpoint = ctx.inputs.broken[name]
        argv, out = _export(ctx, checkpoint)
        return argv, out, [str(checkpoint)]

    return case


def export_out_is_a_directory(ctx):
    folder = ctx.tmp_path / "model.onnx"
    argv = ["export", str(ctx.inputs.small), "--out", str(folder)]
    return argv, folder / "keep.txt", [str(folder), "directory"]


def export_out_locked(ctx):
    argv, out = _export(ctx)
    ctx.stack.enter_context(OutputLock(out))  # a first export still writing there
    return argv, out, [f"{out} is being written by another run"]


def export_disk_full_mid_write(ctx):
    def half_written(module, path, opset):
        Path(path).write_bytes(b"\x08\x07partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    ctx.monkeypatch.setattr("lightning_fa.commands.export.export_onnx", half_written)
    argv, out = _export(ctx)
    return argv, out, [f"--out {out}", "No space left on device"]


def _predict(
    ctx: Context, checkpoint: Path | None = None, data: Path | None = None
) -> tuple[list[str], Path]:
    out = ctx.tmp_path / "preds.json"
    checkpoint = checkpoint or ctx.inputs.tiny68
    data = data or ctx.inputs.data
    argv = ["predict", str(checkpoint), "--data", str(data), "--out", str(out)]
    return [*argv, "--accelerator", "cpu"], out


def _data_yaml(text: str | bytes) -> Callable[[Context], tuple[list[str], Path, list[str]]]:
    def case(ctx):
        data = ctx.tmp_path / "data.yaml"
        data.write_bytes(text.encode() if isinstance(text, str) else text)
        argv, out = _predict(ctx, data=data)
        return argv, out, [str(data)]

    return case


def predict_missing_data_yaml(ctx):
    missing = ctx.tmp_path / "missing.yaml"
    argv, out = _predict(ctx, data=missing)
    return argv, out, [str(missing)]


def predict_landmark_count_mismatch(ctx):
    argv, out = _predict(ctx, checkpoint=ctx.inputs.small)  # 5 landmarks, the data have 68
    return argv, out, [str(ctx.inputs.small), "5 landmarks", "have 68"]


def predict_truncated_checkpoint(ctx):
    checkpoint = ctx.inputs.broken["truncated.ckpt"]
    argv, out = _predict(ctx, checkpoint=checkpoint)
    return argv, out, [str(checkpoint)]


def predict_list_checkpoint(ctx):
    checkpoint = ctx.inputs.broken["list.ckpt"]
    argv, out = _predict(ctx, checkpoint=checkpoint)
    return argv, out, [str(checkpoint)]


def predict_out_locked(ctx):
    argv, out = _predict(ctx)
    ctx.stack.enter_context(OutputLock(out))
    return argv, out, [f"{out} is being written by another run"]


def predict_disk_full_mid_write(ctx):
    def half_written(obj, handle, **kwargs):
        handle.write('{"checkpoint": "')
        raise OSError(errno.ENOSPC, "No space left on device")

    ctx.monkeypatch.setattr("lightning_fa.commands.predict.json.dump", half_written)
    argv, out = _predict(ctx)
    return argv, out, [f"--out {out}", "No space left on device"]


def _run_copy(ctx: Context, *names: str) -> Path:
    """A copy of the fake demo run's files (all of them by default) in a fresh folder."""
    run = ctx.tmp_path / "run"
    run.mkdir()
    for name in names or ("metrics.json", "tracks.npz"):
        shutil.copy(ctx.inputs.run / name, run / name)
    return run


def _report(run: Path) -> tuple[list[str], Path]:
    return ["report", str(run), "--no-video"], run / "report.md"


def report_empty_folder(ctx):
    run = ctx.tmp_path / "run"
    argv, out = _report(run)
    return argv, out, [str(run), "metrics.json", "tracks.npz"]


def report_fit_run_folder(ctx):
    run = ctx.tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (run / "config.yaml").write_text("trainer: {}\n")
    argv, out = _report(run)
    return argv, out, [str(run), "is not a `lightning-fa demo` run folder", "metrics.json"]


def _metrics(change: Callable[[dict], object]) -> Case:
    def case(ctx):
        run = _run_copy(ctx)
        metrics = json.loads((run / "metrics.json").read_text())
        replaced = change(metrics)
        text = json.dumps(metrics if replaced is None else replaced)
        (run / "metrics.json").write_text(text)
        argv, out = _report(run)
        return argv, out, [str(run / "metrics.json")]

    return case


def report_truncated_metrics(ctx):
    run = _run_copy(ctx)
    path = run / "metrics.json"
    path.write_bytes(path.read_bytes()[:200])
    argv, out = _report(run)
    return argv, out, [str(path), "not valid JSON"]


def report_metrics_wrong_type(ctx):
    argv, out, words = _metrics(lambda m: m["results"]["degraded"]["raw-pdc"].update(nrmse="x"))(
        ctx
    )
    return argv, out, [*words, "results.degraded.raw-pdc.nrmse", "a number"]


def report_metrics_missing_block(ctx):
    argv, out, words = _metrics(lambda m: {k: v for k, v in m.items() if k != "acceptance"})(ctx)
    return argv, out, [*words, "acceptance"]


def _tracks(change: Callable[[dict[str, np.ndarray]], None]) -> Case:
    def case(ctx):
        run = _run_copy(ctx)
        with np.load(run / "tracks.npz") as data:
            arrays = {k: data[k] for k in data.files}
        change(arrays)
        np.savez(run / "tracks.npz", **arrays)
        argv, out = _report(run)
        return argv, out, [str(run / "tracks.npz")]

    return case


def report_truncated_tracks(ctx):
    run = _run_copy(ctx)
    path = run / "tracks.npz"
    path.write_bytes(path.read_bytes()[:1000])
    argv, out = _report(run)
    return argv, out, [str(path), "not a NumPy .npz archive"]


def report_tracks_missing_array(ctx):
    argv, out, words = _tracks(lambda a: a.pop("degraded/gt"))(ctx)
    return argv, out, [*words, "degraded/gt"]


def report_tracks_wrong_shape(ctx):
    argv, out, words = _tracks(lambda a: a.update({"still/raw-pdc": np.zeros((1, 3, 2))}))(ctx)
    return argv, out, [*words, "still/raw-pdc", "(1, 3, 2)"]


def report_locked(ctx):
    run = _run_copy(ctx)
    argv, out = _report(run)
    ctx.stack.enter_context(OutputLock(out))
    return argv, out, [f"{out} is being written by another run"]


def report_disk_full_mid_figure(ctx):
    def half_written(figure, path, **kwargs):
        Path(path).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    ctx.monkeypatch.setattr(Figure, "savefig", half_written)
    run = _run_copy(ctx)
    argv, out = _report(run)
    figure = run / "fig1_still_ellipses.png"
    earlier(figure)  # an earlier figure survives too
    return argv, out, [str(figure), "No space left on device"]


def report_video_writer_unavailable(ctx):
    class Closed:  # OpenCV without an MJPG encoder: the writer never opens
        def __init__(self, path, *args) -> None:
            Path(path).write_bytes(b"RIFF partial")

        def isOpened(self) -> bool:
            return False

    ctx.monkeypatch.setattr("lightning_fa.commands.report.cv2.VideoWriter", Closed)
    run = _run_copy(ctx)
    video = earlier(run / "overlay.avi")
    argv, out = _report(run)
    return [a for a in argv if a != "--no-video"], out, [str(video), "video writer"]


CASES: dict[str, Case] = {
    "export_opset_high": export_opset_high,
    "export_opset_low": export_opset_low,
    "export_missing_checkpoint": export_missing_checkpoint,
    **{
        f"export_{n}_checkpoint": _export_broken(f"{n}.ckpt")
        for n in ("empty", "truncated", "text", "list")
    },
    "export_out_is_a_directory": export_out_is_a_directory,
    "export_out_locked": export_out_locked,
    "export_disk_full_mid_write": export_disk_full_mid_write,
    "predict_missing_data_yaml": predict_missing_data_yaml,
    "predict_empty_data_yaml": _data_yaml(""),
    "predict_data_yaml_without_data_block": _data_yaml("trainer:\n  max_epochs: 1\n"),
    "predict_data_yaml_unknown_class": _data_yaml("data:\n  class_path: data_modules.nope.Nope\n"),
    "predict_data_yaml_not_yaml": _data_yaml("data: [1, 2\n"),
    "predict_data_yaml_not_text": _data_yaml(b"\xff\xfe\x00\x01"),
    "predict_landmark_count_mismatch": predict_landmark_count_mismatch,
    "predict_truncated_checkpoint": predict_truncated_checkpoint,
    "predict_list_checkpoint": predict_list_checkpoint,
    "predict_out_locked": predict_out_locked,
    "predict_disk_full_mid_write": predict_disk_full_mid_write,
    "report_empty_folder": report_empty_folder,
    "report_fit_run_folder": report_fit_run_folder,
    "report_truncated_metrics": report_truncated_metrics,
    "report_metrics_wrong_type": report_metrics_wrong_type,
    "report_metrics_missing_block": report_metrics_missing_block,
    "report_metrics_is_a_list": _metrics(lambda m: [m]),
    "report_truncated_tracks": report_truncated_tracks,
    "report_tracks_missing_array": report_tracks_missing_array,
    "report_tracks_wrong_shape": report_tracks_wrong_shape,
    "report_locked": report_locked,
    "report_disk_full_mid_figure": report_disk_full_mid_figure,
    "report_video_writer_unavailable": report_video_writer_unavailable,
}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_exit_2_and_keeps_the_earlier_output(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, name: str
) -> None:
    with contextlib.ExitStack() as stack:
        argv, protected, words = CASES[name](Context(inputs, tmp_path, monkeypatch, stack))
        if not protected.exists():
            earlier(protected)
        files = [p for p in protected.parent.iterdir() if p.is_file() and p.name[0] != "."]
        before = {p: p.read_bytes() for p in files}
        code, line = run_cli(argv, capsys)
    assert code == 2, line
    assert line.startswith(f"lightning-fa {argv[0]}: "), line
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert protected.read_bytes() == EARLIER
    for path, content in before.items():  # every earlier file there, byte for byte
        assert path.read_bytes() == content, path
    assert no_stray_files(protected.parent) == []


def test_export_and_predict_replace_an_earlier_output_once_complete(
    inputs: Inputs, tmp_path: Path, capsys
) -> None:
    pytest.importorskip("onnxruntime")
    from lightning_fa.inference.onnx import OnnxStep

    model = earlier(tmp_path / "model.onnx")
    assert run_cli(["export", str(inputs.small), "--out", str(model)], capsys)[0] == 0
    assert OnnxStep(model).num_landmarks == 5
    preds = earlier(tmp_path / "preds.json")
    argv = ["predict", str(inputs.tiny68), "--data", str(inputs.data), "--out", str(preds)]
    assert run_cli([*argv, "--accelerator", "cpu"], capsys)[0] == 0
    items = json.loads(preds.read_text())["items"]
    assert len(items[0]["finetuned"][0]) == 68
    assert no_stray_files(tmp_path) == []
