"""Safe checkpoint loading: official format, wrappings, refusals and mismatch reports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lightning_fa.backbones import (
    HRNet,
    HRNetConfig,
    ModuleBackbone,
    build_from_spec,
    create_backbone,
    load_checkpoint,
    read_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomised(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state_dict with every floating entry replaced by random values (BN vars positive)."""
    state = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            value = (
                torch.rand_like(value) + 0.5 if "running_var" in key else torch.randn_like(value)
            )
            value = value * 0.05 if key.endswith("weight") and value.ndim == 4 else value
        state[key] = value
    return state


def _lite_state() -> dict[str, torch.Tensor]:
    return _randomised(create_backbone("hrnet_lite", 19))


def _same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    loaded = model.state_dict()
    return all(torch.equal(loaded[k], v) for k, v in state.items())


def test_official_format_checkpoint_loads_and_runs(tmp_path: Path) -> None:
    source = create_backbone("hrnet_w18", 68)
    state = _randomised(source)
    path = tmp_path / "HR18-300W.pth"
    torch.save(state, path)  # the official files are plain state_dicts
    model = create_backbone("hrnet_w18", 68, checkpoint=path).eval()
    assert _same_weights(model, state)
    source.load_state_dict(state)
    images = torch.randint(0, 256, (1, 3, 256, 256), dtype=torch.uint8)
    with torch.no_grad():
        out = model(model.preprocess(images))
        torch.testing.assert_close(out, source.eval()(source.preprocess(images)))
    assert out.shape == (1, 68, 64, 64)


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda s: {f"module.{k}": v for k, v in s.items()}, id="dataparallel"),
        pytest.param(lambda s: {"state_dict": s}, id="state_dict"),
        pytest.param(
            lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}, "epoch": 3},
            id="state_dict+module",
        ),
        pytest.param(
            lambda s: {
                "state_dict": {
                    **{f"backbone.{k}": v for k, v in s.items()},
                    "temporal.proj.weight": torch.zeros(3),
                },
                "pytorch-lightning_version": "2.6.6",
                "epoch": 1,
            },
            id="lightning-system",
        ),
    ],
)
def test_wrapped_checkpoints_load(tmp_path: Path, wrap) -> None:
    state = _lite_state()
    path = tmp_path / "wrapped.ckpt"
    torch.save(wrap(state), path)
    model = create_backbone("hrnet_lite", 19, checkpoint=path)
    assert _same_weights(model, state)


def test_explicit_prefix(tmp_path: Path) -> None:
    state = _lite_state()
    path = tmp_path / "teacher.ckpt"
    torch.save({f"teacher.{k}": v for k, v in state.items()}, path)
    model = create_backbone("hrnet_lite", 19)
    load_checkpoint(model, path, prefix="teacher.")
    assert _same_weights(model, state)
    with pytest.raises(ValueError, match=r"no keys starting with prefix 'student\.'"):
        load_checkpoint(model, path, prefix="student.")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_running_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Exploit(marker)}, path)
    with pytest.raises(ValueError) as err:
        create_backbone("hrnet_lite", 19, checkpoint=path)
    message = str(err.value)
    assert "evil.pth" in message
    assert "not a plain tensor checkpoint" in message and "weights_only" in message
    assert "system" in message  # names the blocked callable
    assert not marker.exists()


def test_wrong_landmark_count_names_head_keys_and_shapes(tmp_path: Path) -> None:
    path = tmp_path / "HR18-WFLW.pth"
    torch.save(create_backbone("hrnet_w18", 98).state_dict(), path)
    with pytest.raises(ValueError) as err:
        create_backbone("hrnet_w18", 68, checkpoint=path)
    message = str(err.value)
    assert "HR18-WFLW.pth" in message and "wrong shapes (2)" in message
    assert "head.3.weight: checkpoint (98, 270, 1, 1) vs model (68, 270, 1, 1)" in message
    assert "head.3.bias: checkpoint (98,) vs model (68,)" in message


def test_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = _lite_state()
    del state["head.0.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    model = create_backbone("hrnet_lite", 19)
    with pytest.raises(
        ValueError, match=r"missing \(1\): head.0.bias.*unexpected \(1\): extra.weight"
    ):
        load_checkpoint(model, path)
    missing, unexpected = load_checkpoint(model, path, strict=False)
    assert missing == ["head.0.bias"] and unexpected == ["extra.weight"]
    assert torch.equal(model.state_dict()["head.3.weight"], state["head.3.weight"])


def test_long_key_lists_are_truncated(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({f"other.{i}": torch.zeros(1) for i in range(50)}, path)
    with pytest.raises(ValueError) as err:
        load_checkpoint(create_backbone("hrnet_lite", 19), path)
    assert "unexpected (50)" in str(err.value) and "and 40 more" in str(err.value)
    assert len(str(err.value)) < 2000


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        create_backbone("hrnet_lite", 19, checkpoint=tmp_path / "absent.pth")


@pytest.mark.parametrize(
    "content",
    [pytest.param(b"\x80\x02garbage bytes", id="garbage"), pytest.param(None, id="truncated")],
)
def test_corrupt_file(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "broken.pth"
    if content is None:
        torch.save(_lite_state(), path)
        content = path.read_bytes()[:200]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"broken\.pth"):
        read_checkpoint(path)


def test_non_tensor_entries_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pth"
    torch.save({"conv1.weight": torch.zeros(1), "note": "hello"}, path)
    with pytest.raises(ValueError, match="not tensors: note"):
        load_checkpoint(create_backbone("hrnet_lite", 19), path)
    torch.save([1, 2], path)
    with pytest.raises(ValueError, match="holds list"):
        load_checkpoint(create_backbone("hrnet_lite", 19), path)


def test_spec_rebuilds_the_backbone_after_a_safe_round_trip(tmp_path: Path) -> None:
    config = HRNetConfig(widths=(4, 8, 12, 16), stage_modules=(1, 1, 1), blocks_per_branch=1)
    original = HRNet(7, config, input_size=(64, 64))
    path = tmp_path / "spec.pt"
    torch.save({"spec": original.spec}, path)
    spec = torch.load(path, weights_only=True)["spec"]  # plain data only
    rebuilt = build_from_spec(spec)
    assert isinstance(rebuilt, HRNet) and rebuilt.config == config
    assert rebuilt.input_size == (64, 64) and rebuilt.num_landmarks == 7
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in original.state_dict().items()
    }


def test_spec_of_a_wrapped_module_has_no_constructor() -> None:
    wrapped = ModuleBackbone(torch.nn.Conv2d(3, 5, 1), 5, 1)
    assert wrapped.spec == {"class_path": "lightning_fa.backbones.adapters.ModuleBackbone"}
