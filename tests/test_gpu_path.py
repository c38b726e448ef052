"""The GPU-path code that also runs on CPU (bf16 autocast, channels_last, compile fallback,
batched multi-stream inference), and the CUDA-only checks (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from lightning_fa.backbones import create_backbone
from lightning_fa.inference.streaming import MultiStreamInference
from lightning_fa.systems.finetune import StableAlignmentModule
from lightning_fa.temporal.convlstm import ConvLSTM

SIZE = 32


def make_module(channels_last: bool = False) -> StableAlignmentModule:
    torch.manual_seed(0)
    backbone = create_backbone("hrnet_lite", 68, input_size=(SIZE, SIZE))
    module = StableAlignmentModule(
        backbone, ConvLSTM(68, hidden_channels=4, input_proj=4), channels_last=channels_last
    )
    for p in module.temporal.parameters():  # a trained-looking head: the state matters
        torch.nn.init.normal_(p, std=0.2)
    return module.eval()


def assert_bf16_close(fast: torch.Tensor, exact: torch.Tensor) -> None:
    """(N, L, 2) coordinates decoded after bf16 vs fp32. An untrained backbone's maps are nearly
    flat: where two cells are almost equal, bf16 rounding can move a landmark's peak across the
    map, so the check is on the bulk of the landmarks, not the worst one."""
    assert fast.dtype == torch.float32 and torch.isfinite(fast).all()
    error = (fast - exact).abs().amax(-1)
    assert error.median() < 0.1
    assert (error < 1.0).float().mean() > 0.9, f"{(error >= 1.0).sum()} of {error.numel()} moved"


def frames(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=generator, dtype=torch.uint8)


def test_streams_batched_together_equal_streams_run_alone() -> None:
    module = make_module()
    video_a, video_b = frames(4, 1), frames(4, 2)
    engine = MultiStreamInference(module)
    batched = [engine.step(torch.stack([a, b]), ["a", "b"])[0] for a, b in zip(video_a, video_b)]
    alone = []
    for video in (video_a, video_b):
        state, coords = None, []
        with torch.no_grad():
            for frame in video:
                stabilised, _, state = module(frame[None], state)
                coords.append(stabilised[0])
        alone.append(coords)
    for t in range(4):
        for row, run in enumerate(alone):
            torch.testing.assert_close(batched[t][row], run[t], atol=1e-4, rtol=0)


def test_stream_state_is_per_stream_and_end_resets() -> None:
    module = make_module()
    engine = MultiStreamInference(module)
    clip = frames(3, 3)
    first = engine.step(clip[:1], ["a"])[0]
    engine.step(clip[1:2], ["a"])
    engine.step(clip[1:2], ["b"])  # another stream does not disturb "a"
    assert sorted(engine.active_streams) == ["a", "b"]
    engine.end("a")
    again = engine.step(clip[:1], ["a"])[0]  # fresh state: same as the very first step
    torch.testing.assert_close(again, first)
    with pytest.raises(ValueError, match="once per step"):
        engine.step(frames(2, 4), ["b", "b"])


def test_channels_last_gives_the_same_heatmaps() -> None:
    images = frames(2, 5)
    plain = make_module().backbone_heatmaps(images)
    nhwc = make_module(channels_last=True).backbone_heatmaps(images)
    torch.testing.assert_close(nhwc, plain, atol=1e-5, rtol=1e-4)


def test_bf16_autocast_on_cpu_runs_and_stays_close() -> None:
    module = make_module()
    clip = frames(2, 6)
    exact = MultiStreamInference(module).step(clip, [0, 1])[1]
    bf16 = MultiStreamInference(module, precision="bf16").step(clip, [0, 1])[1]
    assert_bf16_close(bf16, exact)


def test_compile_falls_back_to_eager_when_unavailable(monkeypatch) -> None:
    def unavailable(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", unavailable)
    module = make_module()
    with pytest.warns(UserWarning, match="torch.compile unavailable"):
        engine = MultiStreamInference(module, compile=True)
    torch.testing.assert_close(
        engine.step(frames(1, 7), ["a"])[0],
        MultiStreamInference(module).step(frames(1, 7), ["a"])[0],
    )


def test_training_step_under_bf16_autocast_on_cpu() -> None:
    module = make_module()
    module.train()
    batch_frames = frames(6, 8).view(2, 3, 3, SIZE, SIZE)
    raw = module.backbone_heatmaps(batch_frames)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = module.temporal.forward_sequence(raw)
        target, coords = module.codec.encode(6 + 20 * torch.rand(2, 3, 68, 2), *raw.shape[-2:])
        loss = module.loss(out.float(), target, coords)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in module.temporal.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_multistream_bf16_channels_last_compile_matches_fp32() -> None:
    module = make_module().cuda()
    clip = frames(8, 9).cuda()
    ids = list(range(8))
    exact = MultiStreamInference(module).step(clip, ids)[0]
    fast = MultiStreamInference(module, precision="bf16", channels_last=True, compile=True)
    assert_bf16_close(fast.step(clip, ids)[0], exact)
