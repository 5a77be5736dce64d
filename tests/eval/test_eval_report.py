"""The HellaSwag comparison: 95% intervals (checked against the score test they invert), item
counts in the table and on the chart, error bars only on results computed in the run."""

import math

import matplotlib.pyplot as plt
import pytest
from matplotlib.container import ErrorbarContainer

from gpt124m.eval.report import (
    comparison_figure,
    comparison_rows,
    comparison_table,
    wilson_interval,
)

Z = 1.959963984540054


def score_test_bounds(k: int, n: int) -> tuple[float, float]:
    """The p where the score statistic |k/n - p| / sqrt(p (1 - p) / n) equals z, by bisection:
    the definition of the Wilson interval, solved without its closed form."""
    phat = k / n

    def excess(p):
        return abs(phat - p) / math.sqrt(p * (1 - p) / n) - Z

    def root(a, b):  # excess(a) > 0 >= excess(b), or the reverse
        for _ in range(200):
            mid = (a + b) / 2
            if (excess(mid) > 0) == (excess(a) > 0):
                a = mid
            else:
                b = mid
        return (a + b) / 2

    eps = 1e-12
    lower = 0.0 if k == 0 else root(eps, phat)
    upper = 1.0 if k == n else root(1 - eps, phat)
    return lower, upper


@pytest.mark.parametrize("k, n", [(6, 20), (0, 20), (20, 20), (1, 3), (2955, 10042), (13, 50)])
def test_wilson_interval_inverts_the_score_test(k, n):
    lo, hi = wilson_interval(k, n)
    ref_lo, ref_hi = score_test_bounds(k, n)
    assert lo == pytest.approx(ref_lo, abs=1e-9) and hi == pytest.approx(ref_hi, abs=1e-9)
    assert lo <= k / n <= hi


@pytest.mark.parametrize("n", range(1, 41))
def test_all_wrong_or_all_right_bounds_are_exactly_zero_and_one(n):
    """A few items (`--limit 7`) can all be wrong: the bound is the proportion itself, not 1e-17
    past it, so the chart's error bar is never negative."""
    assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
    for k in (0, n):
        rows = comparison_rows({"completion": {"acc_norm": k / n, "acc": k / n, "n": n}}, "m")
        plt.close(comparison_figure(rows))  # matplotlib refuses a negative xerr


def test_twenty_items_give_a_wide_interval():
    lo, hi = wilson_interval(6, 20)
    assert lo < 0.2 and hi > 0.5  # 0.30 on 20 items does not beat GPT-2's 0.2955
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


METRICS = {
    "completion": {"acc_norm": 0.30, "acc": 0.25, "n": 20},
    "harness": {"acc_norm": 0.35, "acc": 0.30, "n": 20},
}


def test_table_says_n_and_the_interval():
    rows = comparison_rows(METRICS, "toy")
    table = comparison_table(rows)
    lo, hi = score_test_bounds(6, 20)
    assert f"| **toy** | completion | 0.3000 | {lo:.3f}–{hi:.3f} | 0.2500 | n = 20 |" in table
    assert "| GPT-2 124M | completion | 0.2955 |  |  |  |" in table  # no interval: not ours


def test_chart_draws_intervals_on_our_bars_only():
    rows = comparison_rows(METRICS, "toy")
    fig = comparison_figure(rows, "HellaSwag: toy")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "toy (completion), n = 20" in labels and "toy (harness), n = 20" in labels
    assert "GPT-2 124M (completion)" in labels
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2
    spans = sorted(
        tuple(round(x, 9) for x in segment[:, 0])
        for c in bars
        for segment in c.lines[2][0].get_segments()
    )
    want = sorted(tuple(round(x, 9) for x in score_test_bounds(k, 20)) for k in (6, 7))
    assert spans == want
    assert "95% interval" in ax.get_xlabel()
    texts = [t.get_text() for t in ax.texts]
    assert any(t.startswith("0.3000  [") for t in texts)
