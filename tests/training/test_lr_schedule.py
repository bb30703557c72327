"""The LR is a pure function of the step and the saved plateau state."""

import math

import pytest

from vsrpp_dist.config import load_config
from vsrpp_dist.training.lr_schedule import PHASE_COSINE, PHASE_PLATEAU, PHASE_WARMUP, LRSchedule, base_lr


def schedule(*overrides):
    cfg = load_config(None, ["train.total_steps=11000", *overrides])
    return LRSchedule(cfg.optim, cfg.plateau, cfg.guard, cfg.train.total_steps)


def test_warmup_then_cosine_to_the_minimum():
    s = schedule()
    assert s.learning_rate(0) == pytest.approx(1e-4 / 1000)
    assert s.learning_rate(499) == pytest.approx(0.5e-4)
    assert s.learning_rate(999) == pytest.approx(1e-4)
    assert s.learning_rate(1000) == pytest.approx(1e-4)
    mid = 1000 + (11000 - 1000 - 1) / 2
    assert s.learning_rate(int(mid)) == pytest.approx((1e-4 + 1e-6) / 2, rel=1e-3)
    assert s.learning_rate(10999) == pytest.approx(1e-6)
    values = [s.learning_rate(i) for i in range(1000, 11000, 250)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert [s.phase(0), s.phase(999), s.phase(1000)] == [PHASE_WARMUP, PHASE_WARMUP, PHASE_COSINE]


def test_plateau_halves_the_lr_after_patience_and_respects_the_floor():
    s = schedule("plateau.patience=2", "plateau.threshold_db=0.1", "plateau.lr_floor=2e-6")
    assert not s.observe_validation(30.0)
    assert not s.observe_validation(30.05)  # below the threshold: no improvement
    assert s.observe_validation(30.02)  # second validation without improvement: reduce
    assert s.state.reductions == 1 and s.phase(2000) == PHASE_PLATEAU
    assert s.learning_rate(2000) == pytest.approx(base_lr(2000, 1e-4, 1e-6, 1000, 11000) * 0.5)
    assert not s.observe_validation(31.0)  # a real improvement resets the count
    s.state.reductions = 10
    assert s.learning_rate(2000) == pytest.approx(2e-6)  # the floor
    assert s.learning_rate(10999) == pytest.approx(1e-6)  # never above the curve itself


def test_state_round_trip_gives_the_same_curve():
    a = schedule("plateau.patience=1")
    a.observe_validation(30.0)
    a.observe_validation(29.0)
    a.state.rollbacks = 1  # as the trainer sets it after a rollback
    b = schedule("plateau.patience=1")
    b.load_state_dict(a.state_dict())
    assert all(a.learning_rate(i) == b.learning_rate(i) for i in range(0, 11000, 37))
    assert b.learning_rate(5000) == pytest.approx(base_lr(5000, 1e-4, 1e-6, 1000, 11000) * 0.25)


def test_disabled_plateau_never_reduces():
    s = schedule("plateau.enabled=false", "plateau.patience=1")
    for value in (30, 29, 28, 27):
        assert not s.observe_validation(value)
    assert s.learning_rate(3000) == base_lr(3000, 1e-4, 1e-6, 1000, 11000)
    assert math.isfinite(s.learning_rate(0))
