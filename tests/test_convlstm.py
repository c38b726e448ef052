"""The ConvLSTM temporal stages: identity at init, explicit state, TBPTT detach, autocast, export,
registry and old records."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch

from lightning_fa.backbones import HRNet
from lightning_fa.systems.finetune import StableAlignmentModule
from lightning_fa.temporal import (
    TEMPORAL_STAGES,
    ConvLSTM,
    ConvLSTMCell,
    GatedBlendConvLSTM,
    LandmarkWiseConvLSTM,
    TemporalStage,
    build_temporal_stage,
    detach_state,
    registered_name,
)
from tests.conftest import TINY_HRNET

L, H, W = 5, 8, 8
# The stages (class, extra arguments) that every behavioural test below runs on.
VARIANTS = {
    "direct": (ConvLSTM, {"input_proj": None}),
    "squeezed": (ConvLSTM, {"input_proj": 3}),
    "landmark_wise": (LandmarkWiseConvLSTM, {}),
    "gated_blend": (GatedBlendConvLSTM, {}),
}
# The variants the exporters must handle (the squeezed default and both landmark-wise forms).
EXPORTED = ("squeezed", "landmark_wise", "gated_blend")


def _variant(variant: str, *args, **kwargs) -> TemporalStage:
    stage, extra = VARIANTS[variant]
    return stage(L, *args, **kwargs, **extra)


def _trained_like(model: TemporalStage) -> TemporalStage:
    """Give the zero-initialised projection weights so the recurrence shows in the output."""
    with torch.no_grad():
        model.proj.weight.normal_(0.0, 0.5)
        model.proj.bias.normal_(0.0, 0.1)
        if isinstance(model, GatedBlendConvLSTM):
            model.blend_strength.fill_(0.8)
    return model


def _cell_step_literal(cell: ConvLSTMCell, x, h, c):
    """Shi et al. 2015 equations written out gate by gate, with separate convolutions for the
    input and hidden parts of the fused weight."""
    n = cell.hidden_channels
    w, b = cell.gates.weight, cell.gates.bias
    pad = cell.gates.padding
    wx, wh = w[:, : x.shape[1]], w[:, x.shape[1] :]
    z = torch.nn.functional.conv2d(x, wx, b, padding=pad) + torch.nn.functional.conv2d(
        h, wh, None, padding=pad
    )
    zi, zf, zg, zo = (z[:, k * n : (k + 1) * n] for k in range(4))
    if cell.peephole:
        zi = zi + cell.peephole_i * c
        zf = zf + cell.peephole_f * c
    c_new = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zg)
    if cell.peephole:
        zo = zo + cell.peephole_o * c_new
    return torch.sigmoid(zo) * torch.tanh(c_new), c_new


@pytest.mark.parametrize("variant", VARIANTS)
def test_untrained_head_returns_input_exactly(variant):
    model = _variant(variant, hidden_channels=4, num_layers=2)
    seq = torch.randn(2, 3, L, H, W)
    out, _ = model.forward_sequence(seq)
    assert torch.equal(out, seq)
    step, _ = model(seq[:, 0])
    assert torch.equal(step, seq[:, 0])


@pytest.mark.parametrize("peephole", [False, True])
def test_cell_matches_literal_equations(peephole):
    cell = ConvLSTMCell(3, 4, kernel_size=3, peephole=peephole)
    if peephole:
        with torch.no_grad():
            for p in (cell.peephole_i, cell.peephole_f, cell.peephole_o):
                p.normal_()
    x, h, c = torch.randn(2, 3, H, W), torch.randn(2, 4, H, W), torch.randn(2, 4, H, W)
    got_h, got_c = cell(x, (h, c))
    want_h, want_c = _cell_step_literal(cell, x, h, c)
    torch.testing.assert_close(got_h, want_h)
    torch.testing.assert_close(got_c, want_c)


def test_forget_bias_is_one_and_other_biases_are_not():
    cell = ConvLSTMCell(3, 4)
    bias = cell.gates.bias.detach()
    assert torch.equal(bias[4:8], torch.ones(4))
    assert not torch.equal(bias[:4], torch.ones(4))


def test_peephole_parameters_only_when_enabled():
    plain = {n for n, _ in ConvLSTMCell(3, 4).named_parameters()}
    peep = dict(ConvLSTMCell(3, 4, peephole=True).named_parameters())
    assert not any("peephole" in n for n in plain)
    for name in ("peephole_i", "peephole_f", "peephole_o"):
        assert peep[name].shape == (1, 4, 1, 1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sequence_equals_stepping_with_state(variant):
    model = _trained_like(_variant(variant, 4, num_layers=2, peephole=True))
    seq = torch.randn(2, 4, L, H, W)
    out, final = model.forward_sequence(seq)
    state = None
    for t in range(seq.shape[1]):
        step, state = model(seq[:, t], state)
        torch.testing.assert_close(out[:, t], step)
    for group_sequence, group_steps in zip(final, state, strict=True):
        for from_sequence, from_steps in zip(group_sequence, group_steps, strict=True):
            torch.testing.assert_close(from_sequence, from_steps)
    # The recurrence matters: frame 2 alone differs from frame 2 after frame 1.
    fresh, _ = model(seq[:, 1])
    assert not torch.allclose(fresh, out[:, 1])


def test_none_state_equals_zero_state_and_resets():
    model = _trained_like(ConvLSTM(L, 4))
    x = torch.randn(1, L, H, W)
    first, state = model(x)
    zeros, _ = model(x, model.init_state(1, H, W))
    torch.testing.assert_close(first, zeros, rtol=0, atol=0)
    _, state = model(torch.randn(1, L, H, W), state)
    again, _ = model(x, None)
    torch.testing.assert_close(again, first, rtol=0, atol=0)


@pytest.mark.parametrize("detach", [False, True])
def test_detach_state_cuts_the_graph(detach):
    model = _trained_like(ConvLSTM(L, 4))
    x1 = torch.randn(1, L, H, W, requires_grad=True)
    x2 = torch.randn(1, L, H, W)
    _, state = model(x1)
    if detach:
        state = model.detach_state(state)
    out, _ = model(x2, state)
    if detach:
        assert not any(t.requires_grad for layer in state for t in layer)
        with pytest.raises(RuntimeError):
            torch.autograd.grad(out.sum(), x1)
    else:
        (grad,) = torch.autograd.grad(out.sum(), x1)
        assert grad.abs().sum() > 0


def test_detach_state_keeps_none():
    assert detach_state(None) is None


def test_bf16_autocast_on_cpu():
    model = _trained_like(ConvLSTM(L, 4, peephole=True))
    seq = torch.randn(1, 3, L, H, W)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = model.forward_sequence(seq)
    assert out.shape == seq.shape and torch.isfinite(out).all()
    ref, _ = model.forward_sequence(seq)
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)
    # The memory keeps full precision under autocast.
    assert state[0][1].dtype == torch.float32


def test_channels_last_input_gives_same_output():
    model = _trained_like(ConvLSTM(L, 4, kernel_size=5))
    x = torch.randn(2, L, H, W)
    ref, ref_state = model(x)
    out, state = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(state[0][0], ref_state[0][0])


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
@pytest.mark.parametrize("variant", EXPORTED)
def test_jit_trace_with_explicit_state_matches_eager(variant):
    model = _trained_like(_variant(variant, 4, num_layers=2, peephole=True)).eval()
    x = torch.randn(1, L, H, W)
    state = model.init_state(1, H, W)
    traced = torch.jit.trace(model, (x, state))
    x2 = torch.randn(1, L, H, W)
    _, state2 = model(x, state)
    eager, eager_state = model(x2, state2)
    got, got_state = traced(x2, state2)
    torch.testing.assert_close(got, eager)
    torch.testing.assert_close(got_state[1][1], eager_state[1][1])


@pytest.mark.parametrize("variant", EXPORTED)
def test_torch_export_with_explicit_state_matches_eager(variant):
    model = _trained_like(_variant(variant, 4)).eval()
    x = torch.randn(1, L, H, W)
    state = model.init_state(1, H, W)
    exported = torch.export.export(model, (x, state))
    _, state = model(x, state)
    torch.testing.assert_close(exported.module()(x, state)[0], model(x, state)[0])


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((L, H, W), "B, L, h, w"),
        ((1, L + 1, H, W), "L=5"),
    ],
)
def test_bad_heatmaps_raise(shape, match):
    with pytest.raises(ValueError, match=match):
        ConvLSTM(L, 4)(torch.randn(shape))


def test_bad_sequence_raises():
    model = ConvLSTM(L, 4)
    with pytest.raises(ValueError, match="B, T, L, h, w"):
        model.forward_sequence(torch.randn(1, L, H, W))
    with pytest.raises(ValueError, match="T >= 1"):
        model.forward_sequence(torch.randn(1, 0, L, H, W))


def test_bad_state_raises():
    model = ConvLSTM(L, 4, num_layers=2)
    x = torch.randn(2, L, H, W)
    with pytest.raises(ValueError, match="2 \\(h, c\\) pairs"):
        model(x, model.init_state(2, H, W)[:1])
    with pytest.raises(ValueError, match="batch, hidden, h, w"):
        model(x, model.init_state(1, H, W))
    with pytest.raises(ValueError, match="batch, hidden, h, w"):
        model(x, model.init_state(2, H, W + 1))


# The stages built on the ConvLSTM cell stack (FaceMotionStage has no cells: test_face_motion).
CELL_STAGES = (ConvLSTM, LandmarkWiseConvLSTM, GatedBlendConvLSTM)


@pytest.mark.parametrize(
    ("stage", "kwargs"),
    [
        *((stage, {"kernel_size": 4}) for stage in CELL_STAGES),
        *((stage, {"hidden_channels": 0}) for stage in CELL_STAGES),
        *((stage, {"num_layers": 0}) for stage in CELL_STAGES),
        (ConvLSTM, {"input_proj": 0}),
        (GatedBlendConvLSTM, {"max_blend": 0.0}),
        (GatedBlendConvLSTM, {"max_blend": 1.5}),
        (GatedBlendConvLSTM, {"motion_smoothing": 0.0}),
        (GatedBlendConvLSTM, {"motion_smoothing": 1.2}),
    ],
)
def test_bad_constructor_arguments_raise(stage, kwargs):
    with pytest.raises(ValueError):
        stage(L, **kwargs)


@pytest.mark.parametrize(
    "flags",
    [
        {"landmark_wise": True},  # with the default input_proj=16
        {"gated_blend": True, "input_proj": None},  # without landmark_wise
    ],
)
def test_contradicting_legacy_flags_raise(flags):
    """The flag combinations the old all-in-one ConvLSTM refused stay refused in old records."""
    with pytest.raises(ValueError, match="cannot build temporal stage"):
        build_temporal_stage("ConvLSTM", {"num_landmarks": L, **flags}, "old.ckpt")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("variant", EXPORTED)
def test_onnx_export_with_explicit_state_matches_eager(tmp_path, variant):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = _trained_like(_variant(variant, 4, num_layers=2, peephole=True)).eval()
    x = torch.randn(1, L, H, W)
    state = model.init_state(1, H, W)
    path = tmp_path / "convlstm.onnx"
    # The legacy (TorchScript) exporter: the dynamo one needs onnxscript, not a dependency.
    torch.onnx.export(model, (x, state), str(path), dynamo=False)
    _, state = model(x, state)
    session = ort.InferenceSession(str(path))
    flat = [x.numpy()] + [t.detach().numpy() for layer in state for t in layer]
    feeds = {i.name: a for i, a in zip(session.get_inputs(), flat)}
    out, *new_state = session.run(None, feeds)
    ref, ref_state = model(x, state)
    torch.testing.assert_close(torch.from_numpy(out), ref.detach())
    reference = [t.detach() for group in ref_state for t in group]
    for exported, expected in zip(new_state, reference, strict=True):
        torch.testing.assert_close(torch.from_numpy(exported), expected)


def _landmark_wise(
    peephole: bool = True, num_layers: int = 2, gated_blend: bool = False
) -> TemporalStage:
    stage = GatedBlendConvLSTM if gated_blend else LandmarkWiseConvLSTM
    model = stage(L, 3, num_layers=num_layers, peephole=peephole)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.5)
    return model


def test_landmark_wise_equals_one_single_map_model_per_landmark():
    """Each landmark's output is what a one-landmark ConvLSTM with the same weights gives on that
    landmark's heatmaps alone (the shared cell sees no other map)."""
    model = _landmark_wise()
    single = ConvLSTM(1, 3, num_layers=2, peephole=True, input_proj=None)
    single.load_state_dict(model.state_dict())
    seq = torch.randn(2, 4, L, H, W)
    out, state = model.forward_sequence(seq)
    assert state[0][0].shape == (2, L * 3, H, W)  # batch first, landmark-major channels
    for k in range(L):
        want, want_state = single.forward_sequence(seq[:, :, k : k + 1])
        torch.testing.assert_close(out[:, :, k : k + 1], want)
        torch.testing.assert_close(state[1][1][:, 3 * k : 3 * (k + 1)], want_state[1][1])


def test_landmark_wise_permuting_landmarks_permutes_outputs_and_state():
    model = _landmark_wise()
    seq = torch.randn(1, 3, L, H, W)
    perm = torch.randperm(L, generator=torch.Generator().manual_seed(0))
    out, state = model.forward_sequence(seq)
    out_p, state_p = model.forward_sequence(seq[:, :, perm])
    torch.testing.assert_close(out_p, out[:, :, perm])
    by_landmark = state[0][1].unflatten(1, (L, 3))
    torch.testing.assert_close(state_p[0][1].unflatten(1, (L, 3)), by_landmark[:, perm])


def test_landmark_wise_streams_in_a_batch_keep_their_own_state():
    """The state's first axis is the stream: stepping two streams together equals stepping each
    alone (what batched streaming inference relies on)."""
    model = _landmark_wise(num_layers=1)
    seq = torch.randn(2, 3, L, H, W)
    both, _ = model.forward_sequence(seq)
    for b in range(2):
        alone, _ = model.forward_sequence(seq[b : b + 1])
        torch.testing.assert_close(both[b : b + 1], alone)


def test_landmark_wise_config_rebuilds_the_same_model():
    model = _landmark_wise()
    rebuilt = LandmarkWiseConvLSTM(**model.config)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(1, L, H, W)
    torch.testing.assert_close(rebuilt(x)[0], model(x)[0])


def _blend(strength: float = 0.8) -> GatedBlendConvLSTM:
    model = _landmark_wise(peephole=False, num_layers=1, gated_blend=True)
    with torch.no_grad():
        model.blend_strength.fill_(strength)
    return model


def test_gated_blend_with_a_constant_gate_is_an_exponential_smoother():
    """A read-out with zero weights gives the same logit b at every pixel, so the gate is
    max_blend * strength * sigmoid(b) on every map: s_t = (1 - a) o_t + a s_{t-1}, s_0 = o_0."""
    model = _blend(strength=0.9)
    with torch.no_grad():
        model.proj.weight.zero_()
        model.proj.bias.fill_(0.4)
    a = 0.95 * 0.9 / (1.0 + math.exp(-0.4))
    seq = torch.rand(2, 6, L, H, W)
    out, _ = model.forward_sequence(seq)
    smoothed = seq[:, 0]
    torch.testing.assert_close(out[:, 0], smoothed)
    for t in range(1, seq.shape[1]):
        smoothed = (1 - a) * seq[:, t] + a * smoothed
        torch.testing.assert_close(out[:, t], smoothed)


def _centre_literal(heatmap: torch.Tensor) -> torch.Tensor:
    """(x, y) centre of mass of the pixels at or above 20 % of the map's peak, pixel by pixel."""
    peak = float(heatmap.max())
    total = sx = sy = 0.0
    for y in range(heatmap.shape[0]):
        for x in range(heatmap.shape[1]):
            value = float(heatmap[y, x])
            if value >= 0.2 * peak:
                total, sx, sy = total + value, sx + value * x, sy + value * y
    return torch.tensor([sx / total, sy / total])


def test_gated_blend_never_keeps_more_than_max_blend_of_the_past():
    """A saturated gate (strength and logit far above 1) still lets max_blend of the previous
    output through, no more: every frame brings at least 1 - max_blend of the new map."""
    model = GatedBlendConvLSTM(L, 3, max_blend=0.75)
    with torch.no_grad():
        model.blend_strength.fill_(5.0)
        model.proj.bias.fill_(30.0)
    first, step = torch.rand(1, L, H, W), torch.rand(1, L, H, W)
    _, state = model(first)
    out, _ = model(step, state)
    torch.testing.assert_close(out, 0.25 * step + 0.75 * first)


def test_gated_blend_gate_keeps_its_gradient_near_max_blend():
    """A gate whose unscaled value lies above max_blend still learns: the cap scales the gate
    rather than clipping it, since a clipped gate would get no gradient and stay stuck."""
    model = GatedBlendConvLSTM(L, 3, max_blend=0.5)
    with torch.no_grad():
        model.blend_strength.fill_(1.0)
        model.proj.bias.fill_(2.0)  # sigmoid 0.88: a clamp at 0.5 would cut the gradient
    out, _ = model.forward_sequence(torch.rand(1, 3, L, H, W))
    out.sum().backward()
    assert model.proj.bias.grad.abs() > 0


def test_gated_blend_matches_a_literal_per_landmark_loop():
    """Each map: its cell sees (o_t, s_{t-1}, |d_t| everywhere) with d_t the running average
    d_t = d_{t-1} + 0.2 (centre(o_t) - centre(s_{t-1}) - d_{t-1}), d_{-1} = 0; the
    read-out logit is averaged with o_t's mass as weights,
    a_t = max_blend * strength * sigmoid(that mean),
    s_t = o_t + a_t (s_{t-1} - o_t)."""
    model = _blend(strength=0.7)
    seq = torch.rand(1, 5, L, H, W)
    with torch.no_grad():
        out, _ = model.forward_sequence(seq)
        _check_literal_blend(model, seq, out)


def _check_literal_blend(model: GatedBlendConvLSTM, seq: torch.Tensor, out: torch.Tensor) -> None:
    cell, read_out = model.cells[0], model.proj
    for k in range(L):
        h = c = torch.zeros(1, 3, H, W)
        previous = seq[:, 0, k : k + 1]
        drift = torch.zeros(2)
        for t in range(seq.shape[1]):
            o = seq[:, t, k : k + 1]
            shift = _centre_literal(o[0, 0]) - _centre_literal(previous[0, 0])
            drift = drift + 0.2 * (shift - drift)
            motion = torch.full_like(o, float(drift.norm()))
            h, c = _cell_step_literal(cell, torch.cat([o, previous, motion], 1), h, c)
            logit = read_out(h)
            pooled = float((logit * o).sum() / o.sum())
            gate = 0.95 * 0.7 / (1.0 + math.exp(-pooled))
            previous = o + gate * (previous - o)
            torch.testing.assert_close(out[:, t, k : k + 1], previous)


def _blob(x: float, y: float) -> torch.Tensor:
    """(1, L, H, W) Gaussian maps (sigma 1) centred at (x, y) on every landmark."""
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    blob = torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 2.0)
    return blob.expand(1, L, H, W).clone()


def test_gated_blend_motion_cue_averages_offsets_over_frames():
    """With a closed gate (strength 0) s_{t-1} = o_{t-1}, so the offsets are the map's moves and
    the drift is their running average with weight 0.2: a move that persists builds it up as
    d (1 - 0.8^n); a one-frame jump and its return leave only 0.2 d - 0.2 (0.2 d + d)."""
    model = _blend(strength=0.0)
    step = torch.tensor([1.0, 1.0])  # whole pixels: symmetric blobs, exact centres

    def drift_after(centres: list[torch.Tensor]) -> torch.Tensor:
        seq = torch.cat([_blob(*(torch.tensor([2.0, 2.0]) + c).tolist()) for c in centres])
        _, state = model.forward_sequence(seq[None])
        return state[-1][1][0, 0]  # the first landmark's drift (all maps are the same)

    with torch.no_grad():
        moving = drift_after([n * step for n in range(4)])
        jump = drift_after([0 * step, step, 0 * step])
    torch.testing.assert_close(moving, step * (1 - 0.8**3), atol=1e-5, rtol=0)
    torch.testing.assert_close(jump, 0.2 * step - 0.2 * (0.2 * step + step), atol=1e-5, rtol=0)


def test_gated_blend_starts_every_sequence_from_its_first_frame():
    model = _blend()
    x = torch.rand(2, L, H, W)
    first, state = model(x)
    torch.testing.assert_close(first, x, rtol=0, atol=0)  # nothing before it to blend with
    y = torch.rand(2, L, H, W)
    second, _ = model(y, state)
    assert not torch.allclose(second, y)  # the second frame did blend with the first
    zeros, _ = model(x, model.init_state(2, H, W))
    torch.testing.assert_close(zeros, first, rtol=0, atol=0)


def test_gated_blend_state_is_checked():
    model = _blend()
    x = torch.rand(2, L, H, W)
    (h, c), (previous, drift, started) = model.init_state(2, H, W)
    with pytest.raises(ValueError, match="previous, drift, started"):
        model(x, ((h, c),))
    with pytest.raises(ValueError, match=r"state\[1\] must hold 3 tensors"):
        model(x, ((h, c), (previous, started)))
    with pytest.raises(ValueError, match="previous must have shape"):
        model(x, ((h, c), (previous[:, :1], drift, started)))
    with pytest.raises(ValueError, match="drift must have shape"):
        model(x, ((h, c), (previous, drift[..., :1], started)))
    with pytest.raises(ValueError, match="started must have shape"):
        model(x, ((h, c), (previous, drift, started[:1])))
    assert model.state_names() == ["h0", "c0", "previous", "drift", "started"]


# What the all-in-one ConvLSTM (before the split into one class per stage) wrote as its config:
# every record held all ten arguments, the flags choosing the stage.
_LEGACY_DEFAULTS = {
    "hidden_channels": 4,
    "num_layers": 2,
    "kernel_size": 3,
    "peephole": True,
    "input_proj": None,
    "landmark_wise": False,
    "gated_blend": False,
    "max_blend": 0.95,
    "motion_smoothing": 0.2,
}


@pytest.mark.parametrize(
    ("flags", "stage", "kwargs"),
    [
        ({"input_proj": 3}, ConvLSTM, {"input_proj": 3}),
        ({}, ConvLSTM, {"input_proj": None}),
        ({"landmark_wise": True}, LandmarkWiseConvLSTM, {}),
        (
            {"landmark_wise": True, "gated_blend": True, "max_blend": 0.98},
            GatedBlendConvLSTM,
            {"max_blend": 0.98, "motion_smoothing": 0.2},
        ),
    ],
)
def test_a_legacy_record_builds_the_stage_its_flags_chose(flags, stage, kwargs):
    """An old checkpoint (name "ConvLSTM", the flags in its config) loads its weights strictly
    into the class those flags now name, and that gives the same outputs as building it anew."""
    legacy = {"num_landmarks": L, **_LEGACY_DEFAULTS, **flags}
    common = {"hidden_channels": 4, "num_layers": 2, "kernel_size": 3, "peephole": True}
    expected = _trained_like(stage(L, **common, **kwargs))
    rebuilt = build_temporal_stage("ConvLSTM", legacy, "old.ckpt")
    assert type(rebuilt) is stage
    assert rebuilt.config == expected.config
    rebuilt.load_state_dict(expected.state_dict(), strict=True)
    seq = torch.rand(2, 3, L, H, W)
    (got, got_state), (want, want_state) = (
        stage.forward_sequence(seq) for stage in (rebuilt, expected)
    )
    assert torch.equal(got, want)
    for got_group, want_group in zip(got_state, want_state, strict=True):
        assert all(map(torch.equal, got_group, want_group))


@pytest.mark.parametrize("variant", VARIANTS)
def test_registered_name_and_config_rebuild_the_stage(variant):
    model = _trained_like(_variant(variant, 4, num_layers=2, peephole=True))
    assert isinstance(model, TemporalStage)
    name = registered_name(model)
    assert TEMPORAL_STAGES[name] is type(model)
    rebuilt = build_temporal_stage(name, model.config, "new.ckpt")
    assert type(rebuilt) is type(model) and rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(1, L, H, W)
    assert torch.equal(rebuilt(x)[0], model(x)[0])


def test_an_unregistered_stage_has_no_name():
    class Custom(ConvLSTM):
        pass

    assert registered_name(Custom(L)) is None


def _saved_module(stage: TemporalStage, path) -> StableAlignmentModule:
    """A fine-tuned checkpoint of `stage` on a tiny HRNet, written by Lightning as `fit` does."""
    backbone = HRNet(L, TINY_HRNET, input_size=(32, 32))
    module = StableAlignmentModule(backbone, stage, store_backbone_weights=True)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return module


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("variant", ["squeezed", "landmark_wise", "gated_blend"])
def test_checkpoints_record_the_stage_by_name_and_old_ones_still_load(variant, tmp_path):
    torch.manual_seed(0)
    module = _saved_module(_trained_like(_variant(variant, 4)), tmp_path / "new.ckpt")
    checkpoint = torch.load(tmp_path / "new.ckpt", weights_only=True)
    assert checkpoint["temporal_stage"] == registered_name(module.temporal)
    assert checkpoint["temporal_config"] == module.temporal.config
    x = torch.rand(1, L, 8, 8)
    for record in ("new", "old"):
        if record == "old":  # as the all-in-one ConvLSTM wrote it: no name, the flags set
            stage = type(module.temporal)
            del checkpoint["temporal_stage"]
            checkpoint["temporal_config"] = {
                **_LEGACY_DEFAULTS,
                **module.temporal.config,
                "input_proj": module.temporal.config.get("input_proj"),
                "landmark_wise": stage is not ConvLSTM,
                "gated_blend": stage is GatedBlendConvLSTM,
            }
            torch.save(checkpoint, tmp_path / "old.ckpt")
        restored = StableAlignmentModule.from_checkpoint(tmp_path / f"{record}.ckpt")
        assert type(restored.temporal) is type(module.temporal)
        assert restored.temporal.config == module.temporal.config
        assert torch.equal(restored.temporal(x)[0], module.temporal(x)[0])
