"""Heatmap codec: Gaussian rendering, decoders against literal references, coordinate transforms."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_fa.heatmaps import (
    apply_affine,
    argmax,
    argmax_quarter,
    augment_patches,
    crop_to_frame,
    crop_to_heatmap,
    decode,
    frame_to_crop,
    heatmap_to_crop,
    invert_affine,
    landmark_patches,
    pdc,
    render_gaussian,
)


def literal_argmax(phi: torch.Tensor) -> tuple[float, float]:
    """First maximum in row-major order, by loops."""
    best, best_xy = -math.inf, (0.0, 0.0)
    for y in range(phi.shape[0]):
        for x in range(phi.shape[1]):
            if phi[y, x] > best:
                best, best_xy = float(phi[y, x]), (float(x), float(y))
    return best_xy


def literal_algorithm1(phi: torch.Tensor, threshold: float) -> tuple[float, float] | None:
    """Paper Algorithm 1 transcribed line by line (1-based weights), returned 0-based."""
    height, width = phi.shape
    phi = phi.clone()
    for h in range(height):  # 1: set all values less than the threshold to 0
        for w in range(width):
            if phi[h, w] < threshold:
                phi[h, w] = 0.0
    sum_phi = float(phi.sum())  # 2
    if sum_phi <= 0:
        return None
    sum_x = 0.0  # 3
    for i in range(width):  # 4-6
        sum_x += (i + 1) * sum(float(phi[h, i]) for h in range(height))
    sum_y = 0.0  # 7
    for i in range(height):  # 8-10
        sum_y += (i + 1) * sum(float(phi[i, w]) for w in range(width))
    return sum_x / sum_phi - 1.0, sum_y / sum_phi - 1.0  # 11-13, shifted to 0-based


@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5, 0.9])
def test_pdc_matches_literal_algorithm1(threshold: float, relative: bool) -> None:
    heatmaps = torch.rand(2, 3, 7, 9, dtype=torch.float64) * 1.2 - 0.2
    heatmaps[1, 2] *= 0.5  # a map whose values all stay below the raw 0.5 / 0.9 thresholds
    coords, valid = pdc(heatmaps, threshold=threshold, relative=relative, return_valid=True)
    for b in range(2):
        for k in range(3):
            phi = heatmaps[b, k]
            cut = threshold * float(phi.max()) if relative else threshold
            expected = literal_algorithm1(phi, cut)
            assert bool(valid[b, k]) == (expected is not None)
            if expected is None:
                expected = literal_argmax(phi)
            torch.testing.assert_close(
                coords[b, k], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-10
            )


def test_pdc_keeps_values_equal_to_threshold() -> None:
    heatmaps = torch.zeros(1, 1, 3, 4)
    heatmaps[0, 0, 1, 3] = 0.2  # exactly the threshold: survives (Algorithm 1 zeroes "< 0.2")
    heatmaps[0, 0, 1, 0] = 0.2
    coords, valid = pdc(heatmaps, threshold=0.2, return_valid=True)
    assert bool(valid[0, 0])
    torch.testing.assert_close(coords[0, 0], torch.tensor([1.5, 1.0]))


def test_pdc_falls_back_to_argmax_when_nothing_survives() -> None:
    heatmaps = torch.rand(2, 3, 6, 5) * 0.1
    coords, valid = pdc(heatmaps, threshold=0.2, return_valid=True)
    assert not valid.any()
    for b in range(2):
        for k in range(3):
            assert tuple(coords[b, k].tolist()) == literal_argmax(heatmaps[b, k])
    torch.testing.assert_close(coords, argmax(heatmaps))


def test_pdc_recovers_subpixel_gaussian_centre() -> None:
    centres = torch.rand(3, 5, 2, dtype=torch.float64) * 20 + 6  # well inside 32 x 32
    heatmaps = render_gaussian(centres, 32, 32, sigma=1.5)
    torch.testing.assert_close(pdc(heatmaps, threshold=0.0), centres, rtol=0, atol=0.01)


def test_render_gaussian_matches_formula_and_peaks_at_one() -> None:
    centres = torch.tensor([[[3.0, 4.0], [2.3, 5.7]]])
    sigma = 1.5
    heatmaps = render_gaussian(centres, 8, 10, sigma)
    assert heatmaps.shape == (1, 2, 8, 10)
    assert heatmaps[0, 0, 4, 3] == 1.0
    assert heatmaps[0, 0].max() == 1.0
    for k in range(2):
        cx, cy = centres[0, k].tolist()
        for y in range(8):
            for x in range(10):
                value = math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
                assert heatmaps[0, k, y, x].item() == pytest.approx(value, rel=1e-5, abs=1e-7)


def test_render_gaussian_leading_dims_and_missing_landmarks() -> None:
    centres = torch.rand(2, 3, 4, 2) * 10
    centres[1, 2, 3] = torch.tensor([float("nan"), 5.0])
    centres[0, 1, 0] = torch.tensor([2.0, float("inf")])
    heatmaps = render_gaussian(centres, 12, 12, 1.0)
    assert heatmaps.shape == (2, 3, 4, 12, 12)
    assert heatmaps[1, 2, 3].abs().sum() == 0
    assert heatmaps[0, 1, 0].abs().sum() == 0
    assert torch.isfinite(heatmaps).all()
    torch.testing.assert_close(heatmaps[0, 0], render_gaussian(centres[0, 0], 12, 12, 1.0))


def test_argmax_hand_made() -> None:
    heatmaps = torch.zeros(1, 2, 4, 5)
    heatmaps[0, 0, 3, 1] = 2.0  # x = 1, y = 3
    heatmaps[0, 1, 0, 4] = 0.5  # x = 4, y = 0
    heatmaps[0, 1, 2, 2] = 0.4
    assert argmax(heatmaps).tolist() == [[[1.0, 3.0], [4.0, 0.0]]]


def test_argmax_quarter_hand_made() -> None:
    heatmap = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.1, 0.5, 0.2, 0.0],
            [0.0, 0.3, 1.0, 0.7, 0.0],  # peak (2, 2); right (0.7) > left (0.3): x + 0.25
            [0.0, 0.1, 0.4, 0.2, 0.0],  # up (0.5) > down (0.4): y - 0.25
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    border = torch.zeros(5, 5)
    border[0, 4] = 1.0  # a corner peak has no neighbour pair on either axis: unchanged
    border[1, 4] = 0.5
    ties = torch.zeros(5, 5)
    ties[3, 1] = 1.0  # equal neighbours on both axes: unchanged
    heatmaps = torch.stack((heatmap, border, ties))[None]
    assert argmax_quarter(heatmaps).tolist() == [[[2.25, 1.75], [4.0, 0.0], [1.0, 3.0]]]


def test_decoders_accept_leading_dims() -> None:
    heatmaps = torch.rand(2, 3, 4, 8, 8)
    for method in ("pdc", "argmax", "argmax_quarter"):
        coords = decode(heatmaps, method=method)
        assert coords.shape == (2, 3, 4, 2)
        torch.testing.assert_close(coords[1, 2], decode(heatmaps[1, 2], method=method))


def _peaked_map(seed: int, size: int, patch: int) -> tuple[torch.Tensor, int, int]:
    """A size x size map that is zero except for a random patch with a unique peak."""
    generator = torch.Generator().manual_seed(seed)
    heatmap = torch.zeros(size, size, dtype=torch.float64)
    values = torch.rand(patch, patch, generator=generator, dtype=torch.float64)
    values[patch // 2, patch // 2] = 2.0
    x0 = y0 = (size - patch) // 2
    heatmap[y0 : y0 + patch, x0 : x0 + patch] = values
    return heatmap, x0, y0


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    dx=st.integers(-5, 5),
    dy=st.integers(-5, 5),
    threshold=st.sampled_from([0.0, 0.2, 0.6]),
)
def test_decoders_are_translation_equivariant(
    seed: int, dx: int, dy: int, threshold: float
) -> None:
    heatmap, _, _ = _peaked_map(seed, size=16, patch=5)  # patch spans 5..9: shifts stay inside
    shifted = torch.roll(heatmap, shifts=(dy, dx), dims=(0, 1))
    offset = torch.tensor([dx, dy], dtype=torch.float64)
    maps = torch.stack((heatmap, shifted))[None]
    for coords in (pdc(maps, threshold=threshold), argmax(maps)):
        torch.testing.assert_close(coords[0, 1], coords[0, 0] + offset, rtol=0, atol=1e-12)


def test_pdc_gradcheck() -> None:
    heatmaps = torch.rand(2, 2, 5, 6, dtype=torch.float64)
    heatmaps[1, 1] *= 0.1  # a fallback landmark (no gradient) in the mix
    heatmaps.requires_grad_(True)
    for relative in (False, True):
        assert torch.autograd.gradcheck(
            lambda h, relative=relative: pdc(h, threshold=0.3, relative=relative), (heatmaps,)
        )


@pytest.mark.parametrize(
    ("shape", "message"),
    [((5, 5), "at least 3 dims"), ((2, 0, 4), "non-empty"), ((2, 3, 0), "non-empty")],
)
def test_bad_shapes_raise(shape: tuple[int, ...], message: str) -> None:
    for method in ("pdc", "argmax", "argmax_quarter"):
        with pytest.raises(ValueError, match=message):
            decode(torch.zeros(shape), method=method)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_heatmaps_raise(bad: float) -> None:
    heatmaps = torch.rand(2, 3, 6, 6)
    heatmaps[1, 2, 3, 4] = bad
    heatmaps[0, 0, 0, 0] = bad
    for method in ("pdc", "argmax", "argmax_quarter"):
        with pytest.raises(ValueError, match="found 2 NaN/inf"):
            decode(heatmaps, method=method)
    with pytest.raises(ValueError, match="found 2 NaN/inf"):
        pdc(heatmaps, relative=True)


def test_unknown_method_raises() -> None:
    with pytest.raises(ValueError, match="argmax_quarter"):
        decode(torch.rand(1, 1, 4, 4), method="soft-argmax")


def test_heatmap_crop_transforms_are_inverse_and_align_pixel_centres() -> None:
    coords = torch.rand(3, 5, 2, dtype=torch.float64) * 64
    torch.testing.assert_close(crop_to_heatmap(heatmap_to_crop(coords, 4), 4), coords)
    # Heatmap pixel 0 covers crop pixels 0..3, whose centre is 1.5.
    assert heatmap_to_crop(torch.tensor([[0.0, 63.0]]), 4).tolist() == [[1.5, 253.5]]


def _random_affine(*batch: int) -> torch.Tensor:
    angle = torch.rand(batch, dtype=torch.float64) * 2 * math.pi
    scale = torch.rand(batch, dtype=torch.float64) + 0.5
    cos, sin = scale * angle.cos(), scale * angle.sin()
    shift = torch.randn(*batch, 2, dtype=torch.float64) * 50
    return torch.stack(
        (
            torch.stack((cos, -sin, shift[..., 0]), -1),
            torch.stack((sin, 1.3 * cos, shift[..., 1]), -1),  # anisotropic: not just a similarity
        ),
        -2,
    )


def test_affine_round_trip_and_literal_application() -> None:
    affine = _random_affine(2, 3)  # (B, T, 2, 3) as in sequence batches
    frame = torch.rand(2, 3, 4, 2, dtype=torch.float64) * 300
    crop = frame_to_crop(frame, affine)
    for b in range(2):
        for t in range(3):
            for k in range(4):
                x, y = frame[b, t, k].tolist()
                m = affine[b, t].tolist()
                expected = [
                    m[0][0] * x + m[0][1] * y + m[0][2],
                    m[1][0] * x + m[1][1] * y + m[1][2],
                ]
                torch.testing.assert_close(crop[b, t, k].tolist(), expected)
    torch.testing.assert_close(crop_to_frame(crop, affine), frame)
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(
        apply_affine(apply_affine(frame, invert_affine(affine)), affine), frame
    )
    torch.testing.assert_close(apply_affine(frame, identity), frame)


def test_invert_affine_matches_matrix_inverse() -> None:
    affine = _random_affine(5)
    full = torch.cat(
        (affine, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(5, 1, 3)), 1
    )
    torch.testing.assert_close(invert_affine(affine), torch.linalg.inv(full)[:, :2])


def test_bad_transform_inputs_raise() -> None:
    with pytest.raises(ValueError, match=r"\(\.\.\., 2, 3\)"):
        apply_affine(torch.zeros(4, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"\(\.\.\., L, 2\)"):
        apply_affine(torch.zeros(4, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="singular"):
        invert_affine(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="stride"):
        heatmap_to_crop(torch.zeros(1, 2), 0)
    with pytest.raises(ValueError, match="sigma"):
        render_gaussian(torch.zeros(1, 2), 4, 4, 0.0)


def test_isolated_negative_infinity_decodes_like_a_low_value() -> None:
    heatmaps = torch.rand(1, 2, 6, 6)
    floored = heatmaps.clone()
    heatmaps[0, 1, 2, 2] = float("-inf")
    floored[0, 1, 2, 2] = -1.0
    for maps in (heatmaps, floored):  # a peak with two -inf (-1) neighbours on the x axis
        maps[0, 0, 3, 3] = 2.0
        maps[0, 0, 3, 2] = maps[0, 0, 3, 4] = maps[0, 1, 2, 2]
    for method in ("pdc", "argmax", "argmax_quarter"):
        torch.testing.assert_close(decode(heatmaps, method=method), decode(floored, method=method))


class _Decoder(torch.nn.Module):
    def __init__(self, method: str, relative: bool) -> None:
        super().__init__()
        self.method = method
        self.relative = relative

    def forward(self, heatmaps: torch.Tensor) -> torch.Tensor:
        return decode(heatmaps, method=self.method, relative=self.relative)


@pytest.mark.parametrize(
    ("method", "relative"),
    [("pdc", False), ("pdc", True), ("argmax", False), ("argmax_quarter", False)],
)
def test_decoders_export_to_onnx(method: str, relative: bool, tmp_path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    example = torch.rand(1, 3, 8, 8)
    path = tmp_path / "decoder.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer / legacy-exporter chatter
        torch.onnx.export(
            _Decoder(method, relative),
            (example,),
            str(path),
            input_names=["heatmaps"],
            dynamic_axes={"heatmaps": {0: "batch"}},
            dynamo=False,
        )
    heatmaps = torch.rand(2, 3, 8, 8)
    heatmaps[0, 1, 2, 5] = 0.2  # exactly at the threshold: kept by the exported graph too
    heatmaps[1, 2] *= 0.1  # nothing survives: argmax fallback inside the exported graph
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (exported,) = session.run(None, {"heatmaps": heatmaps.numpy()})
    torch.testing.assert_close(
        torch.from_numpy(exported), decode(heatmaps, method=method, relative=relative)
    )


def test_pdc_alternates_between_inference_mode_and_normal_mode() -> None:
    """The reusable CPU buffer must not leak an inference tensor into normal mode (or back)."""
    heatmaps = torch.rand(2, 3, 8, 8)
    expected = pdc(heatmaps.clone())
    with torch.inference_mode():
        inside = pdc(heatmaps)
    with torch.no_grad():
        outside = pdc(heatmaps)
    with torch.inference_mode():
        inside_again = pdc(heatmaps)
    for result in (inside, outside, inside_again):
        torch.testing.assert_close(result, expected)


def test_landmark_patches_keep_each_peak_where_the_moved_landmark_says():
    stride, size = 4.0, 12
    truth = torch.tensor([[10.3, 20.7], [2.2, 3.9], [29.6, 30.1]])  # heatmap px; two near borders
    maps = render_gaussian(truth[None], 32, 32, sigma=1.5).expand(5, -1, -1, -1)
    landmarks = heatmap_to_crop(truth, stride)[None].expand(5, -1, -1)
    rng = np.random.default_rng(0)
    patches, moved = landmark_patches(maps, landmarks, stride, size, rng, max_shift=2)
    assert patches.shape == (5, 3, size, size)
    # A patch decodes where its moved landmark lies, up to the whole map's own decoding error
    # (the border Gaussians are cut off alike in the map and in their clamped patches).
    full_error = decode(maps[0], "pdc") - truth
    in_patch = crop_to_heatmap(moved[0], stride)
    torch.testing.assert_close(decode(patches[0], "pdc"), in_patch + full_error)
    assert (in_patch >= 0).all() and (in_patch <= size - 1).all()
    assert (moved[1:] == moved[:1]).all()
    # Without rng each window is centred on its landmark (up to rounding and the map border).
    _, centred = landmark_patches(maps, landmarks, stride, size)
    assert (crop_to_heatmap(centred[0, 0], stride) - (size / 2)).abs().max() <= 0.5


def _symmetries(square: torch.Tensor) -> list[torch.Tensor]:
    """The 8 images of a (..., S, S) square under rotations by 90 degrees and a mirror."""
    rotations = [torch.rot90(square, k, dims=(-2, -1)) for k in range(4)]
    return rotations + [r.flip(-1) for r in rotations]


def test_augment_patches_moves_every_landmark_with_its_map():
    stride, size, sigma = 4.0, 12, 1.5
    rng = np.random.default_rng(5)
    truth = torch.from_numpy(rng.uniform(2, size - 3, (6, 40, 2))).float()  # heatmap px
    maps = render_gaussian(truth, size, size, sigma)
    landmarks = heatmap_to_crop(truth, stride)
    # A marked copy (asymmetric content) tells which symmetry each landmark got; the draws do
    # not depend on the content, so equal seeds give both calls the same symmetries.
    marked = maps.clone()
    marked[..., 0, 1] = 5.0
    before = marked.clone()
    out_marked, moved_marked = augment_patches(marked, landmarks, stride, np.random.default_rng(0))
    out, moved = augment_patches(maps, landmarks, stride, np.random.default_rng(0))
    assert torch.equal(marked, before)  # the inputs are left alone
    assert torch.equal(moved, moved_marked)
    drawn = set()
    for k in range(40):
        # Each landmark's whole sequence is one symmetry of the square, the same in every frame.
        images = _symmetries(marked[:, k])
        matches = [i for i, image in enumerate(images) if torch.equal(image, out_marked[:, k])]
        assert len(matches) == 1
        drawn.add(matches[0])
    assert drawn == set(range(8))  # 40 draws: every symmetry occurs
    # The moved landmark is where the moved Gaussian lies: drawing one there gives the output
    # (a wrong coordinate bookkeeping would put the peak elsewhere).
    redrawn = render_gaussian(crop_to_heatmap(moved, stride), size, size, sigma)
    torch.testing.assert_close(redrawn, out, atol=1e-5, rtol=0)


def test_augment_patches_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"\(T, L, S, S\)"):
        augment_patches(torch.zeros(2, 3, 8, 6), torch.zeros(2, 3, 2), 4.0, np.random.default_rng())
    with pytest.raises(ValueError, match="landmarks must be"):
        augment_patches(torch.zeros(2, 3, 8, 8), torch.zeros(2, 4, 2), 4.0, np.random.default_rng())


def test_landmark_patches_reject_bad_shapes_and_sizes():
    maps, landmarks = torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 2)
    with pytest.raises(ValueError, match=r"\(T, L, H, W\)"):
        landmark_patches(maps[0], landmarks, 4.0, 8)
    with pytest.raises(ValueError, match=r"size must be in 1\.\.16"):
        landmark_patches(maps, landmarks, 4.0, 17)
