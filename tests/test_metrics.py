"""Metrics (SPEC 5): functional forms against literal slow loops, properties, torchmetrics classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lightning_fa.metrics import LandmarkAccuracy, VideoStability
from lightning_fa.metrics import functional as F

# ---------------------------------------------------------------- literal references (numpy loops)


def ref_nme(pred, target, norm_pair=None, box_size=None, visible=None):
    pred, target = np.asarray(pred, float), np.asarray(target, float)
    out = []
    for i in range(len(pred)):
        if box_size is not None:
            d = float(box_size[i])
        else:
            a, b = target[i, norm_pair[0]], target[i, norm_pair[1]]
            d = math.hypot(a[0] - b[0], a[1] - b[1])
        errors = [
            math.hypot(*(pred[i, k] - target[i, k]))
            for k in range(pred.shape[1])
            if visible is None or visible[i][k]
        ]
        out.append(sum(errors) / len(errors) / d)
    return np.array(out)


def ref_mcv(videos):
    cvars = []
    for video in videos:
        v = np.asarray(video, float)
        ratios = [
            np.std(v[:, k, a], ddof=1) / np.mean(v[:, k, a])
            for k in range(v.shape[1])
            for a in range(2)
        ]
        cvars.append(np.mean(ratios))
    return 100 * np.mean(cvars)


def ref_allan(videos, valid=None):
    values = []
    for i, video in enumerate(videos):
        v = np.asarray(video, float)
        per_point = []
        for k in range(v.shape[1]):
            total, pairs = 0.0, 0
            for t in range(len(v) - 1):
                if valid is None or (valid[i][t] and valid[i][t + 1]):
                    total += float(np.sum((v[t + 1, k] - v[t, k]) ** 2))
                    pairs += 1
            per_point.append(total / (2 * pairs))
        values.append(np.mean(per_point))
    return np.mean(values)


def ref_accel(videos):
    values = []
    for video in videos:
        v = np.asarray(video, float)
        norms = [
            np.linalg.norm(v[t + 1, k] - 2 * v[t, k] + v[t - 1, k])
            for t in range(1, len(v) - 1)
            for k in range(v.shape[1])
        ]
        values.append(np.mean(norms))
    return np.mean(values)


def ref_auc_by_integration(nmes, tau):
    """Integrate the CED curve numerically (independent of the closed form)."""
    grid = np.linspace(0.0, tau, 200_001)
    ced = (np.asarray(nmes)[None, :] <= grid[:, None]).mean(axis=1)
    return 100 * np.trapezoid(ced, grid) / tau


def random_faces(n, num_points=68, seed=0, noise=3.0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, num_points, 2, generator=g, dtype=torch.float64) * 200 + 50
    pred = target + noise * torch.randn(n, num_points, 2, generator=g, dtype=torch.float64)
    return pred, target


def random_video(frames, num_points=5, seed=0, step=1.0, offset=300.0):
    g = torch.Generator().manual_seed(seed)
    walk = (step * torch.randn(frames, num_points, 2, generator=g, dtype=torch.float64)).cumsum(0)
    return offset + torch.rand(1, num_points, 2, generator=g, dtype=torch.float64) * 50 + walk


# ---------------------------------------------------------------- accuracy


def test_nme_hand_computed_3_4_5():
    target = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [5.0, 5.0]]])
    pred = target + torch.tensor([3.0, 4.0])  # every point off by 5 px; eye distance 10 px
    assert F.nme(pred, target, (0, 1)).tolist() == pytest.approx([0.5])
    assert F.nme(pred, target, None, box_size=torch.tensor([20.0])).tolist() == pytest.approx(
        [0.25]
    )


def test_nme_matches_literal_loop():
    pred, target = random_faces(7)
    np.testing.assert_allclose(F.nme(pred, target), ref_nme(pred, target, (36, 45)), rtol=1e-12)
    box = torch.rand(7, dtype=torch.float64) * 100 + 20
    np.testing.assert_allclose(
        F.nme(pred, target, box_size=box), ref_nme(pred, target, box_size=box), rtol=1e-12
    )


def test_nme_visible_mask_ignores_invisible_points_even_nan():
    pred, target = random_faces(6, num_points=29, seed=1)
    visible = torch.rand(6, 29, generator=torch.Generator().manual_seed(2)) > 0.3
    visible[:, [8, 9]] = True
    expected = ref_nme(pred, target, (8, 9), visible=visible.numpy())
    target = target.masked_fill(~visible[..., None], float("nan"))
    np.testing.assert_allclose(F.nme(pred, target, (8, 9), visible=visible), expected, rtol=1e-12)


def test_failure_rate_and_auc_hand_cases():
    perfect = torch.zeros(5)
    assert F.auc(perfect, 0.1).item() == pytest.approx(100.0)
    assert F.failure_rate(perfect, 0.1).item() == 0.0
    bad = torch.tensor([0.2, 0.11, 0.5])
    assert F.failure_rate(bad, 0.1).item() == pytest.approx(100.0)
    assert F.auc(bad, 0.1).item() == 0.0
    # half at 0 (area 1), half at tau / 2 (area 1/2) -> 75 %
    assert F.auc(torch.tensor([0.0, 0.04, 0.0, 0.04]), 0.08).item() == pytest.approx(75.0)


@pytest.mark.parametrize("tau", [0.08, 0.10])
def test_auc_equals_integral_of_ced(tau):
    nmes = torch.rand(50, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.15
    assert F.auc(nmes, tau).item() == pytest.approx(ref_auc_by_integration(nmes, tau), abs=1e-3)
    fails = sum(1 for x in nmes.tolist() if x > tau)
    assert F.failure_rate(nmes, tau).item() == pytest.approx(100 * fails / 50)


def test_nrmse_is_mean_nme_in_percent():
    pred, target = random_faces(9, seed=4)
    expected = 100 * ref_nme(pred, target, (36, 45)).mean()
    assert F.nrmse(pred, target).item() == pytest.approx(expected, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    scale=st.floats(0.1, 10.0),
    shift=st.floats(-100.0, 100.0),
    error_scale=st.floats(0.0, 5.0),
    seed=st.integers(0, 1000),
)
def test_nme_properties(scale, shift, error_scale, seed):
    pred, target = random_faces(4, seed=seed)
    base = F.nme(pred, target)
    # A similarity of the whole scene leaves NME unchanged.
    torch.testing.assert_close(F.nme(scale * pred + shift, scale * target + shift), base)
    # Scaling only the error scales NME by the same factor.
    scaled_error = target + error_scale * (pred - target)
    torch.testing.assert_close(F.nme(scaled_error, target), error_scale * base)


@settings(max_examples=40, deadline=None)
@given(nmes=st.lists(st.floats(0.0, 0.5), min_size=1, max_size=30), tau=st.floats(0.01, 0.3))
@example(nmes=[0.0], tau=0.1904269537679833)  # 100 * tau / tau rounded to 100.00000000000001
def test_fr_auc_ranges_and_monotonic(nmes, tau):
    nmes = torch.tensor(nmes, dtype=torch.float64)
    assert 0.0 <= F.auc(nmes, tau).item() <= 100.0
    assert F.failure_rate(nmes, tau * 1.5) <= F.failure_rate(nmes, tau)
    assert F.auc(nmes, tau * 1.5) >= F.auc(nmes, tau) - 1e-9


# ---------------------------------------------------------------- stability


def test_static_video_is_perfectly_stable():
    video = torch.full((6, 4, 2), 123.0, dtype=torch.float64)
    assert F.mav([video]).item() == 0.0
    assert F.accel([video]).item() == 0.0
    assert F.mcv([video]).item() == 0.0
    assert F.error_jitter([video], [video - 3.0]).item() == 0.0


def test_linear_motion_closed_forms():
    t = torch.arange(9, dtype=torch.float64)[:, None, None]
    video = 100.0 + t * torch.tensor([3.0, 4.0], dtype=torch.float64) + torch.zeros(1, 5, 2)
    assert F.accel([video]).item() == pytest.approx(0.0, abs=1e-12)
    assert F.mav([video]).item() == pytest.approx(25.0 / 2)  # |v|^2 / 2


def test_stability_matches_literal_loops():
    videos = [random_video(frames, seed=frames) for frames in (2, 5, 11)]
    assert F.mcv(videos).item() == pytest.approx(ref_mcv(videos), rel=1e-10)
    assert F.mav(videos).item() == pytest.approx(ref_allan(videos), rel=1e-10)
    long_videos = videos[1:]
    assert F.accel(long_videos).item() == pytest.approx(ref_accel(long_videos), rel=1e-10)
    scales = [7.0, 12.5]
    assert F.mav(long_videos, scales).item() == pytest.approx(
        ref_allan([v / s for v, s in zip(long_videos, scales)]), rel=1e-10
    )
    assert F.accel(long_videos, scales).item() == pytest.approx(
        ref_accel([v / s for v, s in zip(long_videos, scales)]), rel=1e-10
    )


def test_error_jitter_with_broken_frames_matches_literal_loop():
    preds = [random_video(8, seed=1), random_video(6, seed=2)]
    targets = [random_video(8, seed=3), random_video(6, seed=4)]
    valid = [
        torch.tensor([1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool),
        torch.tensor([1, 1, 1, 1, 1, 1], dtype=torch.bool),
    ]
    errors = [p - t for p, t in zip(preds, targets)]
    expected = ref_allan(errors, [v.tolist() for v in valid])
    broken = [t.clone() for t in targets]
    broken[0][~valid[0]] = float("nan")  # broken labels are never read
    assert F.error_jitter(preds, broken, valid).item() == pytest.approx(expected, rel=1e-10)
    scales = [2.0, 4.0]
    scaled = ref_allan([e / s for e, s in zip(errors, scales)], [v.tolist() for v in valid])
    assert F.error_jitter(preds, broken, valid, scales).item() == pytest.approx(scaled, rel=1e-10)


@settings(max_examples=30, deadline=None)
@given(
    shift=st.floats(-50.0, 50.0),
    scale=st.floats(0.2, 5.0),
    frames=st.integers(3, 12),
    seed=st.integers(0, 1000),
)
def test_stability_properties(shift, scale, frames, seed):
    video = random_video(frames, seed=seed)
    drift = random_video(frames, seed=seed + 1)
    offset = torch.tensor([shift, -shift], dtype=torch.float64)
    # Allan variance: a constant offset does nothing, a scale acts squared.
    torch.testing.assert_close(F.mav([video + offset]), F.mav([video]))
    torch.testing.assert_close(F.mav([scale * video]), scale**2 * F.mav([video]))
    torch.testing.assert_close(F.mav([video], [scale]), F.mav([video]) / scale**2)
    # CVar is a ratio: scale-free (not translation-invariant, so no such check).
    torch.testing.assert_close(F.mcv([scale * video]), F.mcv([video]))
    # Accel ignores offsets and constant velocity.
    t = torch.arange(frames, dtype=torch.float64)[:, None, None]
    torch.testing.assert_close(F.accel([video + offset + shift * t]), F.accel([video]))
    # The error jitter depends only on the error: shared motion cancels.
    torch.testing.assert_close(
        F.error_jitter([video + drift], [video + 1.0 + drift]),
        F.error_jitter([video], [video + 1.0]),
    )


# ---------------------------------------------------------------- bad input


def test_bad_input_raises_value_error():
    pred, target = random_faces(3)
    with pytest.raises(ValueError, match="shapes differ"):
        F.nme(pred, target[:, :60])
    with pytest.raises(ValueError, match=r"\(N, L, 2\)"):
        F.nme(pred[0], target[0])
    with pytest.raises(ValueError, match="NaN"):
        F.nme(pred.masked_fill(pred > 200, float("nan")), target)
    with pytest.raises(ValueError, match="norm_indices or box_size"):
        F.nme(pred, target, None)
    with pytest.raises(ValueError, match="out of range"):
        F.nme(pred, target, (0, 70))
    same_eyes = target.clone()
    same_eyes[:, 45] = same_eyes[:, 36]
    with pytest.raises(ValueError, match="<= 0"):
        F.nme(pred, same_eyes)
    with pytest.raises(ValueError, match="box_size"):
        F.nme(pred, target, box_size=torch.ones(2))
    with pytest.raises(ValueError, match="no visible"):
        F.nme(pred, target, visible=torch.zeros(3, 68, dtype=torch.bool))
    with pytest.raises(ValueError, match="non-empty"):
        F.auc(torch.zeros(0))
    with pytest.raises(ValueError, match="threshold"):
        F.failure_rate(torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="at least 2 frames"):
        F.mav([random_video(1)])
    with pytest.raises(ValueError, match="at least 3 frames"):
        F.accel([random_video(2)])
    with pytest.raises(ValueError, match="non-empty list"):
        F.mcv([])
    with pytest.raises(ValueError, match="NaN"):
        F.mcv([random_video(4).masked_fill(torch.rand(4, 5, 2) > 0.5, float("nan"))])
    with pytest.raises(ValueError, match="mean 0"):
        F.mcv([torch.zeros(4, 5, 2)])
    with pytest.raises(ValueError, match="scales"):
        F.mav([random_video(4)], [0.0])
    with pytest.raises(ValueError, match="differs"):
        F.error_jitter([random_video(4)], [random_video(5)])
    with pytest.raises(ValueError, match="consecutive valid"):
        F.error_jitter([random_video(4)], [random_video(4)], [torch.tensor([1, 0, 1, 0])])


def test_first_occurrences_orders_by_key_and_drops_repeats():
    keys = torch.tensor([[2, 1], [0, 5], [2, 1], [0, 3], [1, 0], [0, 5]])
    assert F.first_occurrences(keys).tolist() == [3, 1, 4, 0]


# ---------------------------------------------------------------- torchmetrics classes


def shuffled_batches(num_rows, seed, sizes=(1, 4, 3, 7)):
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed))
    batches, start = [], 0
    while start < num_rows:
        size = sizes[len(batches) % len(sizes)]
        batches.append(order[start : start + size])
        start += size
    return batches


def test_landmark_accuracy_equals_functional_in_any_order():
    pred, target = random_faces(23, seed=5, noise=6.0)
    metric = LandmarkAccuracy(thresholds=(0.08, 0.10))
    for rows in shuffled_batches(23, seed=6):
        metric.update(pred[rows], target[rows], index=rows)
    metric.update(pred[:3], target[:3], index=torch.arange(3))  # padded repeats count once
    result = metric.compute()
    nmes = torch.tensor(ref_nme(pred, target, (36, 45)))
    assert list(result) == ["nme", "fr@0.08", "auc@0.08", "fr@0.10", "auc@0.10"]
    assert result["nme"].item() == pytest.approx(100 * nmes.mean().item(), rel=1e-5)
    for tau in (0.08, 0.10):
        key = f"{tau:.2f}"
        assert result[f"fr@{key}"].item() == pytest.approx(F.failure_rate(nmes, tau).item())
        assert result[f"auc@{key}"].item() == pytest.approx(F.auc(nmes, tau).item(), rel=1e-5)


def test_landmark_accuracy_box_size_and_visible():
    pred, target = random_faces(8, num_points=19, seed=7)
    box = torch.rand(8, dtype=torch.float64) * 100 + 50
    visible = torch.rand(8, 19, generator=torch.Generator().manual_seed(8)) > 0.2
    visible[:, 0] = True
    metric = LandmarkAccuracy(norm_indices=None, thresholds=(0.05,))
    metric.update(pred[:5], target[:5], box_size=box[:5], visible=visible[:5])
    metric.update(pred[5:], target[5:], box_size=box[5:], visible=visible[5:])
    expected = ref_nme(pred, target, box_size=box, visible=visible.numpy())
    result = metric.compute()
    assert result["nme"].item() == pytest.approx(100 * expected.mean(), rel=1e-5)
    assert set(result) == {"nme", "fr@0.05", "auc@0.05"}


def make_videos(lengths=(2, 9, 6, 13), num_points=68, seed=10):
    """Per-video (pred, target, valid), frames in order; some labels broken."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, frames in enumerate(lengths):
        target = random_video(frames, num_points, seed=seed + i, step=0.5, offset=200.0)
        target[:, 45] += 60.0  # a plausible inter-ocular distance
        pred = target + torch.randn(frames, num_points, 2, generator=g, dtype=torch.float64)
        valid = torch.rand(frames, generator=g) > 0.25
        out.append((pred, target, valid))
    return out


def video_rows(videos):
    """Flatten videos into frame rows (pred, target, video_id, frame_index, valid)."""
    pred = torch.cat([v[0] for v in videos])
    target = torch.cat([v[1] for v in videos])
    video_id = torch.cat([torch.full((len(v[0]),), 10 * i + 3) for i, v in enumerate(videos)])
    frame_index = torch.cat([torch.arange(len(v[0])) * 2 + 1 for v in videos])
    valid = torch.cat([v[2] for v in videos])
    return pred, target, video_id, frame_index, valid


def expected_video_metrics(videos):
    """The functional forms on the in-order videos, with the selection rules of VideoStability."""
    preds = [p for p, _, _ in videos]
    labelled = [v for v in videos if v[2].any()]
    paired = [v for v in videos if (v[2][1:] & v[2][:-1]).any()]

    def scale(v):
        return F.norm_distance(v[1][v[2]], (36, 45)).mean()

    return {
        "nrmse": F.nrmse(
            torch.cat([p[m] for p, _, m in videos]), torch.cat([t[m] for _, t, m in videos])
        ),
        "mcv": F.mcv(preds),
        "mav": F.mav(preds),
        "accel": F.accel([p for p in preds if len(p) >= 3]),
        "error_jitter": F.error_jitter(*zip(*paired)),
        "mav_norm": F.mav([v[0] for v in labelled], [scale(v) for v in labelled]),
        "accel_norm": F.accel(
            [v[0] for v in labelled if len(v[0]) >= 3],
            [scale(v) for v in labelled if len(v[0]) >= 3],
        ),
        "error_jitter_norm": F.error_jitter(*zip(*paired), [scale(v) for v in paired]),
    }


def test_video_stability_equals_functional_with_shuffled_split_duplicated_updates():
    videos = make_videos()
    pred, target, video_id, frame_index, valid = video_rows(videos)
    metric = VideoStability()
    metric.set_dtype(torch.float64)
    for rows in shuffled_batches(len(pred), seed=11):
        metric.update(pred[rows], target[rows], video_id[rows], frame_index[rows], valid[rows])
    repeat = torch.tensor([0, 5, 6])  # DistributedSampler padding
    metric.update(
        pred[repeat], target[repeat], video_id[repeat], frame_index[repeat], valid[repeat]
    )
    result = metric.compute()
    expected = expected_video_metrics(videos)
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert result[key].item() == pytest.approx(value.item(), rel=1e-9), key


def test_video_stability_explicit_norm_size_and_float32_states():
    videos = make_videos(lengths=(5, 7), seed=12)
    pred, target, video_id, frame_index, valid = video_rows(videos)
    metric = VideoStability()
    norm = torch.full((len(pred),), 80.0)
    metric.update(pred.float(), target.float(), video_id, frame_index, valid, norm_size=norm)
    result = metric.compute()
    expected = F.nrmse(pred[valid], target[valid], None, norm[valid].double())
    assert result["nrmse"].item() == pytest.approx(expected.item(), rel=1e-5)
    scales = [80.0, 80.0]
    preds = [v[0] for v in videos]
    assert result["mav_norm"].item() == pytest.approx(F.mav(preds, scales).item(), rel=1e-4)


def test_metrics_without_updates_return_nan():
    with pytest.warns(UserWarning, match="before the ``update``"):
        video = VideoStability().compute()
    with pytest.warns(UserWarning, match="before the ``update``"):
        image = LandmarkAccuracy().compute()
    assert all(math.isnan(v.item()) for v in [*video.values(), *image.values()])


def test_video_stability_rejects_bad_shapes():
    pred, target = random_faces(4)
    metric = VideoStability()
    with pytest.raises(ValueError, match="frame_index"):
        metric.update(pred, target, torch.zeros(4, dtype=torch.long), torch.arange(3))
    with pytest.raises(ValueError, match="equal shapes"):
        metric.update(pred, target[:, :5], torch.zeros(4), torch.arange(4))
