import math

import pytest

from gpt124m.train.schedule import lr_at

KW = dict(max_lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)


def test_warmup_is_linear_and_reaches_max_at_its_last_step():
    assert lr_at(0, **KW) == pytest.approx(0.1)
    assert lr_at(4, **KW) == pytest.approx(0.5)
    assert lr_at(9, **KW) == pytest.approx(1.0)


def test_cosine_starts_at_max_ends_at_min_and_is_monotone():
    assert lr_at(10, **KW) == pytest.approx(1.0)
    assert lr_at(109, **KW) == pytest.approx(0.1)
    assert lr_at(500, **KW) == pytest.approx(0.1)  # past the end: stays at the floor
    mid = 10 + (109 - 10) / 2
    assert lr_at(int(mid), **KW) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.4949)), rel=1e-2
    )
    values = [lr_at(s, **KW) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_constant_and_wsd():
    assert lr_at(50, **KW, schedule="constant") == 1.0
    wsd = dict(KW, schedule="wsd", decay_fraction=0.2)  # 20 decay steps ending at step 109
    assert lr_at(89, **wsd) == 1.0
    assert lr_at(99, **wsd) == pytest.approx(0.55)
    assert lr_at(109, **wsd) == pytest.approx(0.1)


def test_no_warmup_starts_at_max():
    assert lr_at(0, max_lr=3e-4, min_lr=0.0, warmup_steps=0, max_steps=5) == pytest.approx(3e-4)
    assert lr_at(4, max_lr=3e-4, min_lr=0.0, warmup_steps=0, max_steps=5) == pytest.approx(0.0)
