"""lightning_fa.metrics.frontier: the filter sweep, the frontier and the verdict line."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_fa.metrics import frontier

POINTS = [
    {"filter": "moving-average", "window": 2, "nrmse": 5.0, "error_jitter": 0.5, "lag": 0.5},
    {"filter": "moving-average", "window": 3, "nrmse": 5.5, "error_jitter": 0.3, "lag": 1.0},
    {"filter": "moving-average", "window": 4, "nrmse": 6.0, "error_jitter": 0.6, "lag": 0.5},
    {"filter": "moving-average", "window": 9, "nrmse": 4.0, "error_jitter": 0.1, "lag": 3.0},
    {"filter": "one-euro", "min_cutoff": 0.5, "beta": 10.0, "nrmse": 5.4, "error_jitter": 0.35,
     "lag": float("nan")},
]  # fmt: skip


def test_setting_names_list_the_parameters_only():
    assert frontier.setting_name(POINTS[0]) == "moving-average(window=2)"
    assert frontier.setting_name(POINTS[4]) == "one-euro(min_cutoff=0.5, beta=10)"


def test_frontier_keeps_the_undominated_settings_within_the_lag():
    front = [frontier.setting_name(p) for p in frontier.frontier(POINTS, "nrmse", "error_jitter")]
    assert front == [
        "moving-average(window=2)",
        "one-euro(min_cutoff=0.5, beta=10)",
        "moving-average(window=3)",
    ]


def test_verdict_names_the_dominating_setting_with_the_lowest_stability_figure():
    ours = {"nrmse": 5.6, "error_jitter": 0.45, "lag": 1.0}
    beating = frontier.dominating(ours, POINTS, "nrmse", "error_jitter")
    assert [frontier.setting_name(p) for p in beating] == [
        "moving-average(window=3)",
        "one-euro(min_cutoff=0.5, beta=10)",
    ]
    line = frontier.verdict(ours, POINTS, "nrmse", "error_jitter")
    assert line.startswith("dominated by moving-average(window=3) (nrmse 5.500 vs ours 5.600")
    assert "2 of 5 settings" in line
    # A 3-frame lag admits the 3-frame-lag setting as a competitor.
    laggy = frontier.dominating({**ours, "lag": 3.0}, POINTS, "nrmse", "error_jitter")
    assert frontier.setting_name(laggy[0]) == "moving-average(window=9)"
    ahead = {"nrmse": 4.5, "error_jitter": 0.2, "lag": 0.0}
    assert frontier.verdict(ahead, POINTS, "nrmse", "error_jitter").startswith("not dominated")


def test_sweep_runs_each_setting_from_a_fresh_filter():
    rng = np.random.default_rng(0)
    raw = 10 + rng.normal(size=(2, 20, 3, 2))
    grids = {"moving-average": frontier.FILTER_GRIDS["moving-average"]}
    seen = []

    def score(smoothed: np.ndarray) -> dict[str, float]:
        seen.append(smoothed)
        return {"nrmse": 0.0, "error_jitter": 0.0, "lag": 0.0}

    points = frontier.sweep(raw, score, grids)
    assert [p["window"] for p in points] == [2, 3, 4, 5, 7, 9, 13]
    # Window 3 as a literal causal mean over the frames so far (at most 3).
    expected = np.stack(
        [[raw[v, max(0, t - 2) : t + 1].mean(0) for t in range(20)] for v in range(2)]
    )
    np.testing.assert_allclose(seen[1], expected, atol=1e-5)


def test_one_euro_grid_is_the_full_product():
    grid = frontier.FILTER_GRIDS["one-euro"]
    assert len(grid.values) == len(frontier.ONE_EURO_CUTOFFS) * len(frontier.ONE_EURO_BETAS)
    assert sum(len(g.values) for g in frontier.FILTER_GRIDS.values()) == 70


@pytest.mark.parametrize("lag", [0.2, 1.0])
def test_lag_limit_is_at_least_one_frame(lag):
    assert frontier.lag_limit(lag) == 1.0
    assert frontier.lag_limit(2.5) == 2.5 and frontier.lag_limit(float("nan")) == 1.0
