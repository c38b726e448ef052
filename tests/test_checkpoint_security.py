"""Checkpoints are data, never code: every loading entry point refuses a file that names code to
run (an unlisted class path, a pickle with code), and bad files get one line naming them."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import cv2
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from lightning_fa.backbones import Backbone, HRNet, allow_checkpoint_class, base, register_backbone
from lightning_fa.commands.cli import main
from lightning_fa.systems.finetune import StableAlignmentModule
from lightning_fa.temporal import ConvLSTM
from tests.conftest import TINY_HRNET
from tests.test_cli import TINY, base_args, write_config

pytestmark = pytest.mark.usefixtures("one_thread")

L = 5
SIZE = 32
# What LightningCLI records with the hyper-parameters of the model it built.
CLI_RECORDS = {
    "_class_path": "lightning_fa.systems.StableAlignmentModule",
    "_instantiator": "lightning.pytorch.cli.instantiate_module",
}


def _module(backbone: nn.Module | None = None) -> StableAlignmentModule:
    backbone = backbone if backbone is not None else HRNet(L, TINY_HRNET, input_size=(SIZE, SIZE))
    temporal = ConvLSTM(L, hidden_channels=4, input_proj=4)
    return StableAlignmentModule(backbone, temporal, store_backbone_weights=True)


def _save(module: StableAlignmentModule, path: Path) -> Path:
    """A checkpoint written by Lightning itself, as `fit` writes them."""
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return _save(_module(), tmp_path_factory.mktemp("ckpt") / "finetuned.ckpt")


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def _point_class_paths_at(value: Any, target: str, init_args: dict[str, Any]) -> int:
    """Replace, in place, every class path stored anywhere in `value` by `target` (with
    `init_args` beside it); returns how many were replaced."""
    count = 0
    if isinstance(value, dict):
        for key in list(value):
            if key in ("class_path", "_class_path", "_instantiator"):
                value[key] = target
                if "init_args" in value:
                    value["init_args"] = dict(init_args)
                count += 1
            else:
                count += _point_class_paths_at(value[key], target, init_args)
    elif isinstance(value, list | tuple):
        count += sum(_point_class_paths_at(v, target, init_args) for v in value)
    return count


@pytest.fixture
def evil(finetuned: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The fine-tuned checkpoint with every class path it stores turned into `subprocess.run`
    of `touch MARKER`; returns (checkpoint, marker)."""
    marker = tmp_path / "MARKER"
    checkpoint = _load(finetuned)
    checkpoint["hyper_parameters"].update(CLI_RECORDS)
    assert (
        _point_class_paths_at(checkpoint, "subprocess.run", {"args": ["touch", str(marker)]}) == 3
    )
    assert checkpoint["backbone_reference"]["class_path"] == "subprocess.run"
    path = tmp_path / "evil.ckpt"
    torch.save(checkpoint, path)
    return path, marker


def _tiny_video(path: Path) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64))
    for i in range(3):
        writer.write(np.full((64, 64, 3), 40 * i, np.uint8))
    writer.release()
    return path


ENTRY_POINTS = ("track", "export", "predict", "evaluate-video", "from_checkpoint")


def _run_entry_point(name: str, ckpt: Path, tmp_path: Path) -> str:
    """Run entry point `name` on `ckpt` in-process; expect a refusal and return its message."""
    if name == "from_checkpoint":
        with pytest.raises(ValueError) as err:
            StableAlignmentModule.from_checkpoint(ckpt)
        return str(err.value)
    video = str(_tiny_video(tmp_path / "clip.avi"))
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"data": TINY["data"]}))
    argv = {
        "track": ["track", video, "--checkpoint", str(ckpt), "--out-csv", str(tmp_path / "t.csv")],
        "export": ["export", str(ckpt), "--out", str(tmp_path / "x.onnx")],
        "predict": ["predict", str(ckpt), "--data", str(data), "--out", str(tmp_path / "p.json")],
        "evaluate-video": [
            "evaluate-video",
            video,
            "--checkpoint",
            str(ckpt),
            "--out",
            str(tmp_path / "ev"),
        ],
    }[name]
    try:
        code = main(argv)
    except ValueError as error:  # an entry point that does not map errors to exit 2 yet
        return str(error)
    assert code == 2
    return ""


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_class_paths_in_a_checkpoint_never_run(entry_point, evil, tmp_path, capsys) -> None:
    ckpt, marker = evil
    message = _run_entry_point(entry_point, ckpt, tmp_path) or capsys.readouterr().err
    assert not marker.exists(), "the checkpoint ran a command"
    assert str(ckpt) in message and "'subprocess.run'" in message
    assert "allow_checkpoint_class" in message  # says how to allow a trusted class
    assert len(message.strip().splitlines()) == 1


def test_a_clean_checkpoint_still_loads(finetuned: Path) -> None:
    restored = StableAlignmentModule.from_checkpoint(finetuned)
    assert isinstance(restored.backbone, HRNet) and isinstance(restored.temporal, ConvLSTM)
    assert torch.equal(
        restored.temporal.proj.weight, _load(finetuned)["state_dict"]["temporal.proj.weight"]
    )


def test_an_unlisted_temporal_stage_is_refused(finetuned: Path, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    checkpoint = _load(finetuned)
    checkpoint["temporal_stage"] = "subprocess.run"
    checkpoint["temporal_config"] = {"args": ["touch", str(marker)]}
    torch.save(checkpoint, tmp_path / "stage.ckpt")
    with pytest.raises(ValueError, match=r"stage\.ckpt asks for temporal stage 'subprocess\.run'"):
        StableAlignmentModule.from_checkpoint(tmp_path / "stage.ckpt")
    assert not marker.exists()


def test_non_plain_init_args_are_refused(finetuned: Path, tmp_path: Path) -> None:
    checkpoint = _load(finetuned)
    checkpoint["backbone_reference"]["init_args"]["config"] = torch.zeros(2)
    torch.save(checkpoint, tmp_path / "tensor_arg.ckpt")
    with pytest.raises(
        ValueError, match=r"tensor_arg\.ckpt: init_args of .*HRNet\.config is Tensor"
    ):
        StableAlignmentModule.from_checkpoint(tmp_path / "tensor_arg.ckpt")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (subprocess.run, (["touch", str(self.marker)],))


def test_a_pickle_with_code_is_refused_by_from_checkpoint(finetuned, tmp_path) -> None:
    marker = tmp_path / "MARKER"
    checkpoint = _load(finetuned)
    checkpoint["state_dict"]["temporal.proj.weight"] = _Exploit(marker)
    torch.save(checkpoint, tmp_path / "pickled.ckpt")
    with pytest.raises(ValueError, match=r"pickled\.ckpt is not a plain tensor checkpoint"):
        StableAlignmentModule.from_checkpoint(tmp_path / "pickled.ckpt")
    assert not marker.exists()


class TinyNet(Backbone):
    """A user's own backbone, defined outside lightning_fa."""

    def __init__(self, num_landmarks: int = L, input_size: tuple[int, int] = (16, 16)) -> None:
        super().__init__(num_landmarks, stride=4, input_size=input_size)
        self.conv = nn.Conv2d(3, num_landmarks, 4, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.fixture
def fresh_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """Allowing a class in one test must not allow it in the others."""
    monkeypatch.setattr(base, "_CHECKPOINT_CLASSES", dict(base._CHECKPOINT_CLASSES))
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))


@pytest.mark.parametrize("allow", ["allow_checkpoint_class", "register_backbone"])
def test_a_user_class_round_trips_once_allowed(allow, fresh_allow_list, tmp_path) -> None:
    module = _module(TinyNet())
    nn.init.normal_(module.backbone.conv.weight)
    ckpt = _save(module, tmp_path / "tiny.ckpt")
    with pytest.raises(ValueError, match=r"tiny\.ckpt asks to build 'tests\.test_checkpoint_secur"):
        StableAlignmentModule.from_checkpoint(ckpt)
    if allow == "allow_checkpoint_class":
        allow_checkpoint_class(TinyNet)
    else:
        register_backbone("tiny_net")(TinyNet)
    restored = StableAlignmentModule.from_checkpoint(ckpt)
    assert type(restored.backbone) is TinyNet
    assert torch.equal(restored.backbone.conv.weight, module.backbone.conv.weight)


def test_only_backbone_classes_can_be_allowed() -> None:
    with pytest.raises(TypeError, match="Backbone subclass"):
        allow_checkpoint_class(subprocess.Popen)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(value, finetuned, tmp_path) -> None:
    checkpoint = _load(finetuned)
    checkpoint["state_dict"]["temporal.proj.weight"][0, 0] = value
    path = tmp_path / "nan.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"nan\.ckpt has non-finite .*: temporal\.proj\.weight$"):
        StableAlignmentModule.from_checkpoint(path)


def test_non_finite_backbone_weights_are_refused_by_load_checkpoint(tmp_path) -> None:
    model = HRNet(L, TINY_HRNET, input_size=(SIZE, SIZE))
    state = model.state_dict()
    state["head.0.weight"] = torch.full_like(state["head.0.weight"], float("nan"))
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(ValueError, match=r"nan\.pth has non-finite .* head\.0\.weight"):
        base.load_checkpoint(model, tmp_path / "nan.pth")


def _truncated(finetuned: Path, path: Path) -> None:
    path.write_bytes(finetuned.read_bytes()[:2000])


def _plain_text(finetuned: Path, path: Path) -> None:
    path.write_text("model: hrnet\nepochs: 3\n")


def _saved(obj: Any):
    return lambda finetuned, path: torch.save(obj, path)


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (_truncated, "corrupt or not a torch file"),
        (lambda finetuned, path: path.write_bytes(b""), "corrupt or not a torch file"),
        (_plain_text, "not a plain tensor checkpoint"),
        (_saved([1, 2, 3]), "holds a list, not a fine-tuned checkpoint"),
        (_saved({"epoch": 3}), "has no state_dict"),
        (_saved({"state_dict": {"w": torch.zeros(1)}}), "has no backbone_reference"),
        (_saved({"state_dict": {"w": 3}}), "entries that are not tensors: w"),
    ],
    ids=["truncated", "empty", "text", "list", "no-state-dict", "no-reference", "not-tensors"],
)
def test_bad_files_get_one_line_naming_them(write, expected, finetuned, tmp_path) -> None:
    path = tmp_path / "bad.ckpt"
    write(finetuned, path)
    with pytest.raises(ValueError) as err:
        StableAlignmentModule.from_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and expected in message
    assert len(message.splitlines()) == 1


def test_missing_temporal_weights_are_named(finetuned, tmp_path) -> None:
    checkpoint = _load(finetuned)
    checkpoint["state_dict"] = {
        k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("temporal.")
    }
    torch.save(checkpoint, tmp_path / "no_temporal.ckpt")
    with pytest.raises(
        ValueError, match=r"no_temporal\.ckpt does not fit .*missing \(\d+\): temporal\."
    ):
        StableAlignmentModule.from_checkpoint(tmp_path / "no_temporal.ckpt")


def test_a_wrong_landmark_count_names_both_counts(finetuned, tmp_path) -> None:
    checkpoint = _load(finetuned)
    checkpoint["temporal_config"]["num_landmarks"] = 68
    torch.save(checkpoint, tmp_path / "counts.ckpt")
    with pytest.raises(
        ValueError,
        match=r"counts\.ckpt: its backbone gives 5 landmarks but its "
        r"temporal stage was saved for 68",
    ):
        StableAlignmentModule.from_checkpoint(tmp_path / "counts.ckpt")


# --------------------------------------------------------------------------- --ckpt_path


def _cli_checkpoint(finetuned: Path, path: Path, marker: Path, edit: str) -> Path:
    checkpoint = _load(finetuned)
    hparams = checkpoint["hyper_parameters"]
    if edit == "pickle":
        checkpoint["state_dict"]["temporal.proj.weight"] = _Exploit(marker)
    elif edit == "model_class":
        hparams.update(_class_path="subprocess.Popen", args=["touch", str(marker)])
    elif edit == "backbone":
        hparams["backbone"] = {
            "class_path": "lightning_fa.backbones.TorchScriptBackbone",
            "init_args": {"path": str(marker), "num_landmarks": 68, "stride": 4},
        }
    else:  # a class path hidden in a plain-looking value
        hparams["fr_thresholds"] = [{"class_path": "subprocess.Popen"}]
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("edit", ["pickle", "model_class", "backbone", "nested"])
def test_ckpt_path_of_the_lightning_commands_chooses_no_code(
    edit, finetuned, tmp_path, monkeypatch
) -> None:
    # Without weights_only=True given explicitly, torch would fully unpickle under this variable.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "MARKER"
    ckpt = _cli_checkpoint(finetuned, tmp_path / "evil.ckpt", marker, edit)
    config = write_config(tmp_path, tmp_path / "run")
    with pytest.raises(ValueError) as err:  # --debug: the error itself, not its one-line report
        main(["validate", *base_args(config), "--ckpt_path", str(ckpt), "--debug"])
    assert str(ckpt) in str(err.value) and len(str(err.value).splitlines()) == 1
    assert not marker.exists()


def test_lightning_commands_load_ckpt_path_weights_only(finetuned, tmp_path, monkeypatch) -> None:
    seen = {}

    @functools.wraps(pl.Trainer.validate)  # the CLI reads its arguments from the signature
    def record(self, *args, **kwargs):
        seen.update(kwargs)
        return []

    monkeypatch.setattr(pl.Trainer, "validate", record)
    checkpoint = _load(finetuned)
    checkpoint["hyper_parameters"].update(CLI_RECORDS)
    ckpt = tmp_path / "cli.ckpt"
    torch.save(checkpoint, ckpt)
    config = write_config(tmp_path, tmp_path / "run")
    main(["validate", *base_args(config), "--ckpt_path", str(ckpt)])
    assert seen["ckpt_path"] == str(ckpt) and seen["weights_only"] is True


def test_ckpt_path_with_non_finite_weights_is_refused(finetuned, tmp_path) -> None:
    checkpoint = _load(finetuned)
    checkpoint["hyper_parameters"].update(CLI_RECORDS)
    checkpoint["state_dict"]["temporal.proj.weight"][0, 0] = float("nan")
    torch.save(checkpoint, tmp_path / "nan.ckpt")
    config = write_config(tmp_path, tmp_path / "run")
    with pytest.raises(ValueError, match=r"nan\.ckpt has non-finite .*: temporal\.proj\.weight$"):
        main(["validate", *base_args(config), "--ckpt_path", str(tmp_path / "nan.ckpt"), "--debug"])


@pytest.mark.parametrize("wrapper", ["TorchScriptBackbone", "ModuleBackbone"])
def test_wrappers_are_not_built_from_a_file_by_default(wrapper, tmp_path) -> None:
    # A TorchScript path in a checkpoint would make the checkpoint load another file.
    scripted = tmp_path / "other.pt"
    torch.jit.save(torch.jit.script(nn.Conv2d(3, L, 1)), scripted)
    spec = {
        "class_path": f"lightning_fa.backbones.adapters.{wrapper}",
        "init_args": {"path": str(scripted), "num_landmarks": L, "stride": 1},
    }
    with pytest.raises(ValueError, match=rf"x\.ckpt asks to build '.*{wrapper}', which is not"):
        base.build_from_spec(spec, source=tmp_path / "x.ckpt")


def test_a_checkpoint_for_another_landmark_count_is_refused_on_load() -> None:
    """`lightning-fa test --ckpt_path` of a 98-point checkpoint on 68-point data: both counts."""
    from lightning_fa.backbones import create_backbone
    from lightning_fa.systems.finetune import StableAlignmentModule

    module = StableAlignmentModule(backbone=create_backbone("hrnet_lite", 68, input_size=(32, 32)))
    checkpoint = {
        "state_dict": dict(module.state_dict()),
        "backbone_reference": {"class_path": "x.Y", "init_args": {"num_landmarks": 98}},
    }
    with pytest.raises(ValueError, match=r"fine-tuned for 98 landmarks, but this model .* has 68"):
        module.on_load_checkpoint(checkpoint)
