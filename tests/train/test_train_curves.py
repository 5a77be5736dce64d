"""curves.png: a smoothed training curve over the raw one, and tick labels a reader can read."""

import numpy as np
import pytest

from gpt124m.train.metrics import curves_figure, human_count, plot_curves, smooth


@pytest.mark.parametrize(
    "x, label",
    [(0, "0"), (950, "950"), (1500, "1.5k"), (150_000, "150k"), (1_200_000, "1.2M"),
     (10_000_000_000, "10B"), (2.5e9, "2.5B")],
)  # fmt: skip
def test_human_count(x, label):
    assert human_count(x) == label


def test_smooth_is_a_centred_mean_narrowing_at_the_ends():
    values = list(np.random.default_rng(0).normal(size=30))
    window = 5
    got = smooth(values, window)
    # reference: a full convolution divided by how many points each window really covers
    sums = np.convolve(values, np.ones(window), mode="same")
    counts = np.convolve(np.ones(len(values)), np.ones(window), mode="same")
    assert got == pytest.approx(list(sums / counts))


def records(steps=200, tokens_per_step=6000):
    rng = np.random.default_rng(1)
    out = []
    for step in range(1, steps + 1):
        loss = 10 * np.exp(-step / 60) + 3 + rng.normal(scale=0.5)
        out.append({"kind": "train", "step": step, "tokens": step * tokens_per_step, "loss": loss})
        if step % 50 == 0:
            out.append({"kind": "val", "step": step, "tokens": step * tokens_per_step, "loss": 4})
    return out


def test_figure_has_raw_and_smoothed_train_curves_and_readable_ticks():
    fig = curves_figure(records(), "run")
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"train", "train, smoothed (17 steps)", "val"}
    raw = lines["train"].get_ydata()
    smoothed = lines["train, smoothed (17 steps)"].get_ydata()
    assert np.std(np.diff(smoothed)) < np.std(np.diff(raw)) / 3  # smoother
    fig.canvas.draw()
    ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert "600k" in ticks and "1.2M" in ticks, ticks
    assert all("e" not in t for t in ticks)  # no 1e6 offset notation


def test_short_runs_draw_the_raw_curve_only(tmp_path):
    fig = curves_figure(records(steps=20), "short")
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["train"]
    assert plot_curves(records(steps=20), tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert plot_curves([], tmp_path / "none.png") is None
