"""The hot path has no host syncs, and compiles whole (issue 20), checked on the CPU.

A graph break under `torch.compile(fullgraph=True)` is an error, and on a GPU it would be a host
sync. Most checks use the "aot_eager" backend, which traces forward and backward graphs like
inductor but generates no code (seconds, not minutes, on two cores); one test runs inductor.
The meta device has shapes but no values, so any read-back (`.item()`, `bool(tensor)`,
`nonzero`, `.tolist()`, a copy to the CPU) raises there: code that runs on it never syncs on an
accelerator either.
"""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from lightning_fa.backbones import create_backbone
from lightning_fa.heatmaps import argmax, argmax_quarter, decode, pdc
from lightning_fa.inference.onnx import StreamingStep
from lightning_fa.inference.streaming import MultiStreamInference, compile_step
from lightning_fa.losses import JitterLoss
from lightning_fa.systems.finetune import StableAlignmentModule
from lightning_fa.temporal import ConvLSTM, FaceMotionStage, GatedBlendConvLSTM, TemporalStage

BATCH, STEPS, LANDMARKS, SIZE = 2, 3, 3, 16

# The stage's default, the gated blend (experiments/gated-blend.yaml) and the embedded
# default's face-level motion filter (experiments/embedded.yaml).
STAGES = {
    "default": (ConvLSTM, {}),
    "gated_blend": (
        GatedBlendConvLSTM,
        {"hidden_channels": 4, "max_blend": 0.98, "motion_smoothing": 0.2},
    ),
    "embedded": (FaceMotionStage, {"max_smoothing": 0.99}),
}


def build_stage(name: str) -> TemporalStage:
    stage, kwargs = STAGES[name]
    return stage(LANDMARKS, **kwargs)


needs_cxx = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="inductor on the CPU needs a C++ compiler",
)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: no cache hits nor recompile limits from another test."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def trained_stage(name: str) -> TemporalStage:
    """A stage whose state matters: random read-out (zero-initialised otherwise) and a gate."""
    stage = build_stage(name).eval()
    with torch.no_grad():
        for parameter in stage.parameters():
            parameter.normal_(0.0, 0.2)
        if isinstance(stage, GatedBlendConvLSTM):
            stage.blend_strength.fill_(0.8)
    return stage


def heatmaps(*lead: int) -> torch.Tensor:
    """Backbone-like maps: a peak per landmark above noise, plus one map where nothing passes
    PDC's threshold, so the argmax fallback is part of what is compiled."""
    generator = torch.Generator().manual_seed(sum(lead))
    maps = 0.15 * torch.rand(*lead, LANDMARKS, SIZE, SIZE, generator=generator)
    maps[..., :2, 5:8, 6:10] += 0.8
    return maps


def stage_and_decode(stage: TemporalStage):
    def step(frames: torch.Tensor, state):
        stabilised, state = stage(frames, state)
        return pdc(stabilised), state

    return step


def run_stream(step, frames: torch.Tensor, state):
    """Coordinates of every frame and the final state, the state carried from frame to frame."""
    coords = []
    for t in range(frames.shape[1]):
        out, state = step(frames[:, t], state)
        coords.append(out)
    return torch.stack(coords, 1), state


def assert_same_state(actual, expected) -> None:
    assert len(actual) == len(expected)
    for group, expected_group in zip(actual, expected):
        for tensor, expected_tensor in zip(group, expected_group):
            torch.testing.assert_close(tensor, expected_tensor, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# No host syncs: the accelerator path runs on the meta device
# --------------------------------------------------------------------------------------------


def test_decoders_never_read_values_back_off_the_cpu() -> None:
    maps = torch.empty(BATCH, LANDMARKS, SIZE, SIZE, device="meta")
    for coords in (pdc(maps), pdc(maps, relative=True), argmax(maps), argmax_quarter(maps)):
        assert coords.shape == (BATCH, LANDMARKS, 2) and coords.device.type == "meta"


@pytest.mark.parametrize("name", STAGES)
def test_stage_and_jitter_loss_never_read_values_back_off_the_cpu(name: str) -> None:
    stage = build_stage(name).to("meta")
    clip = torch.empty(BATCH, STEPS, LANDMARKS, SIZE, SIZE, device="meta")
    out, state = stage(clip[:, 0], None)
    out, state = stage(out, state)
    outputs, state = stage.forward_sequence(clip, state)
    loss, last = JitterLoss(pixel_weight=1.0, coord_weight=0.5)(
        outputs,
        torch.empty_like(clip),
        torch.empty(BATCH, STEPS, LANDMARKS, 2, device="meta"),
        prev_pred_coords=torch.empty(BATCH, LANDMARKS, 2, device="meta"),
        prev_target_coords=torch.empty(BATCH, LANDMARKS, 2, device="meta"),
        return_last_coords=True,
    )
    loss.backward()
    assert loss.device.type == "meta" and last.shape == (BATCH, LANDMARKS, 2)
    assert all(p.grad is not None for p in stage.parameters() if p.requires_grad)


class _NoOptimizer:
    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def step(self) -> None:
        pass


def test_training_step_and_streaming_forward_never_read_values_back_off_the_cpu(
    monkeypatch,
) -> None:
    """StableAlignmentModule's TBPTT step (frozen backbone, targets, stage, Jitter loss,
    backward, state detached between chunks) without a Trainer: the optimizer and logging are
    stand-ins, which see meta tensors only."""
    backbone = create_backbone("hrnet_lite", LANDMARKS, input_size=(32, 32))
    stage = build_stage("embedded")
    module = StableAlignmentModule(backbone, stage, tbptt_chunk=2).to("meta")
    logged = {}
    monkeypatch.setattr(module, "optimizers", _NoOptimizer)
    monkeypatch.setattr(module, "manual_backward", lambda loss: loss.backward())
    monkeypatch.setattr(module, "log", lambda name, value, **_: logged.update({name: value}))
    batch = {
        "frames": torch.empty(BATCH, 5, 3, 32, 32, dtype=torch.uint8, device="meta"),
        "landmarks": torch.empty(BATCH, 5, LANDMARKS, 2, device="meta"),
    }
    loss = module.training_step(batch, 0)
    assert loss.device.type == "meta" and logged["train/loss"] is loss
    assert all(p.grad is not None for p in module.temporal.parameters())
    with torch.no_grad():
        coords, raw, _ = module(batch["frames"][:, 0])
    assert coords.shape == raw.shape == (BATCH, LANDMARKS, 2)


# --------------------------------------------------------------------------------------------
# fullgraph compilation gives the eager numbers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "backend"),
    [
        ("default", "aot_eager"),
        ("embedded", "aot_eager"),
        pytest.param("embedded", "inductor", marks=needs_cxx),
    ],
)
def test_stage_step_and_decode_compile_whole_and_match_eager(name: str, backend: str) -> None:
    stage = trained_stage(name)
    step = stage_and_decode(stage)
    compiled = torch.compile(step, fullgraph=True, dynamic=False, backend=backend)
    frames = heatmaps(BATCH, STEPS)
    with torch.no_grad():
        expected, expected_state = run_stream(step, frames, None)
        # The zero state instead of None: one graph for every frame, the first one included.
        actual, state = run_stream(compiled, frames, stage.init_state(BATCH, SIZE, SIZE))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert_same_state(state, expected_state)


@pytest.mark.parametrize("name", STAGES)
def test_stage_sequence_compiles_whole_and_matches_eager(name: str) -> None:
    stage = trained_stage(name)
    compiled = torch.compile(stage.forward_sequence, fullgraph=True, backend="aot_eager")
    clip = heatmaps(BATCH, STEPS)
    with torch.no_grad():
        expected, expected_state = stage.forward_sequence(clip)
        actual, state = compiled(clip)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert_same_state(state, expected_state)


@pytest.mark.parametrize(
    "options",
    [{}, {"pixel_weight": 1.0, "coord_weight": 0.5, "coord_loss": "geman_mcclure"}],
    ids=["paper", "all_terms"],
)
def test_jitter_loss_compiles_whole_and_matches_eager_with_its_gradient(options: dict) -> None:
    loss_fn = JitterLoss(**options)
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    target = heatmaps(BATCH, STEPS)
    target_coords = torch.rand(BATCH, STEPS, LANDMARKS, 2) * (SIZE - 1)
    prev = (torch.rand(BATCH, LANDMARKS, 2) * (SIZE - 1), target_coords[:, 0] + 0.3)
    noisy = target + 0.1 * torch.rand(target.shape)
    results = []
    for function in (loss_fn, compiled):
        pred = noisy.clone().requires_grad_()
        loss, last = function(pred, target, target_coords, *prev, return_last_coords=True)
        loss.backward()
        results.append((loss.detach(), last, pred.grad))
    for actual, expected in zip(results[1], results[0]):
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("method", "relative"),
    [("pdc", False), ("pdc", True), ("argmax", False), ("argmax_quarter", False)],
)
def test_compiled_decoders_fall_back_to_argmax_and_mark_non_finite_maps_nan(
    method: str, relative: bool
) -> None:
    """In CPU eager mode a NaN / inf map raises (tests/test_heatmaps.py); compiled, the check
    cannot raise without a host sync, so that landmark decodes to NaN and the others exactly."""
    function = torch.compile(
        lambda h: decode(h, method, relative=relative), fullgraph=True, backend="aot_eager"
    )
    maps = heatmaps(BATCH)
    expected = decode(maps, method, relative=relative)
    torch.testing.assert_close(function(maps), expected)
    bad = maps.clone()
    bad[0, 1, 3, 4] = float("nan")
    bad[1, 0, 0, 0] = float("inf")
    marked = function(bad)
    assert marked[0, 1].isnan().all() and marked[1, 0].isnan().all()
    keep = torch.ones(BATCH, LANDMARKS, dtype=torch.bool)
    keep[0, 1] = keep[1, 0] = False
    torch.testing.assert_close(marked[keep], expected[keep])


# --------------------------------------------------------------------------------------------
# The whole per-frame step: compile_step
# --------------------------------------------------------------------------------------------


def tiny_module(name: str = "embedded") -> StableAlignmentModule:
    backbone = create_backbone("hrnet_lite", LANDMARKS, input_size=(32, 32))
    with torch.no_grad():  # peaks above PDC's threshold: no comparison hinges on rounding at it
        heads = [m for m in backbone.modules() if getattr(m, "out_channels", None) == LANDMARKS]
        heads[-1].bias.add_(1.0)
    return StableAlignmentModule(backbone, trained_stage(name)).eval()


def images(batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, 32, 32), generator=generator, dtype=torch.uint8)


def test_compile_step_compiles_the_streaming_step_whole_and_matches_eager() -> None:
    step = StreamingStep(tiny_module()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback warning would fail the test
        compiled = compile_step(step, backend="aot_eager")
        expected_state = actual_state = step.init_state(BATCH)
        for t in range(2):
            expected = step(images(BATCH, t), *expected_state)
            actual = compiled(images(BATCH, t), *actual_state)
            assert compiled.compiled is not None  # no fallback happened
            for a, e in zip(actual, expected):
                torch.testing.assert_close(a, e, atol=1e-5, rtol=0)
            expected_state, actual_state = expected[3:-1], actual[3:-1]  # scores come last


def test_compiled_multistream_bf16_channels_last_matches_eager() -> None:
    module = tiny_module("default")
    options = {"precision": "bf16", "channels_last": True}
    eager = MultiStreamInference(module, **options)
    compiled = MultiStreamInference(module, **options, compile=True, compile_backend="aot_eager")
    for t in range(2):
        for a, e in zip(
            compiled.step(images(2, t), ["a", "b"]), eager.step(images(2, t), ["a", "b"])
        ):
            torch.testing.assert_close(a, e, atol=1e-5, rtol=0)
    assert compiled._step.compiled is not None


def test_compile_step_falls_back_to_eager_with_one_warning_line() -> None:
    def breaks_the_graph(x: torch.Tensor) -> torch.Tensor:
        torch._dynamo.graph_break()  # what a host sync in the step would be on a GPU
        return x + 1

    step = compile_step(breaks_the_graph, backend="aot_eager")
    with pytest.warns(UserWarning, match="torch.compile unavailable, running eagerly") as caught:
        torch.testing.assert_close(step(torch.zeros(2)), torch.ones(2))
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert step.compiled is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # eager from now on, without warning again
        torch.testing.assert_close(step(torch.ones(2)), torch.full((2,), 2.0))


def test_compile_step_lets_bad_input_raise_and_stays_compiled() -> None:
    def checked(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 2:
            raise ValueError(f"x must end in 2; got {tuple(x.shape)}")
        return x * 2

    step = compile_step(checked, backend="aot_eager")
    with pytest.raises(ValueError, match="x must end in 2"):
        step(torch.zeros(3))
    assert step.compiled is not None
    torch.testing.assert_close(step(torch.ones(2)), torch.full((2,), 2.0))


def test_compile_step_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="compile mode must be one of"):
        compile_step(lambda x: x, mode="fastest")
