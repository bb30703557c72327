"""The adaptive rules on hand-made inputs."""

import numpy as np
import pytest

from vsrpp_dist.config import load_config
from vsrpp_dist.training.adaptive import AdaptiveController


def controller(*overrides):
    cfg = load_config(None, ["adaptive.update_every=1", "adaptive.weight_ema=0", "adaptive.aggressive_min_steps=0",
                             *overrides])
    return AdaptiveController(cfg.adaptive, cfg.loss)


def feed(c, step, l1=1.0, ms=1.0, grad=1.0, sharpness=1.0, norm=1.0):
    c.observe(l1, ms, grad, sharpness, norm)
    return c.maybe_update(step)


def test_weights_start_at_the_base():
    c = controller()
    assert (c.weights.l1, c.weights.ms, c.weights.grad) == (1.0, 0.5, 0.1)


def test_a_part_falling_slower_than_l1_gains_weight_and_a_faster_one_loses_it():
    c = controller("adaptive.weight_gamma=1")
    feed(c, 1, l1=1.0, ms=1.0, grad=1.0)  # reference
    feed(c, 2, l1=0.5, ms=0.75, grad=0.4)  # ms kept 75 %, l1 50 %, grad 40 %
    assert c.weights.l1 == 1.0
    assert c.weights.ms == pytest.approx(0.5 * 1.5)
    assert c.weights.grad == pytest.approx(0.1 * 0.8)


def test_weights_are_bounded():
    c = controller("adaptive.weight_gamma=1", "adaptive.weight_max_factor=2", "adaptive.weight_min_factor=0.5")
    feed(c, 1)
    feed(c, 2, l1=0.01, ms=1.0, grad=0.0001)
    assert c.weights.ms == pytest.approx(0.5 * 2)
    assert c.weights.grad == pytest.approx(0.1 * 0.5)


def test_clip_threshold_is_the_95th_percentile_of_the_window():
    c = controller("adaptive.clip_window=100", "adaptive.clip_min_samples=10", "adaptive.clip_initial=7")
    for i in range(5):
        feed(c, i + 1, norm=float(i))
    assert c.clip_threshold == 7  # too few norms yet
    norms = list(range(1, 201))
    for i, n in enumerate(norms):
        feed(c, 10 + i, norm=float(n))
    assert c.clip_threshold == pytest.approx(np.percentile(norms[-100:], 95))


def test_aggressive_mode_switches_on_below_and_off_above_with_hysteresis():
    c = controller("adaptive.sharpness_on=0.8", "adaptive.sharpness_off=0.9", "adaptive.aggressive_grad_factor=3")
    base_grad = c.weights.grad
    feed(c, 1, sharpness=0.85)
    assert not c.aggressive
    feed(c, 2, sharpness=0.7)
    assert c.aggressive and c.weights.grad == pytest.approx(base_grad * 3)
    feed(c, 3, sharpness=0.85)  # between the thresholds: stays on
    assert c.aggressive
    feed(c, 4, sharpness=0.95)
    assert not c.aggressive and c.weights.grad == pytest.approx(base_grad)
    assert c.aggressive_switches == 2


def test_aggressive_mode_waits_for_its_start_step():
    c = controller("adaptive.aggressive_min_steps=100")
    feed(c, 10, sharpness=0.1)
    assert not c.aggressive
    feed(c, 100, sharpness=0.1)
    assert c.aggressive


def test_plateau_recovery_resets_weights_and_clip_statistics():
    c = controller("adaptive.weight_gamma=1", "adaptive.clip_min_samples=2", "adaptive.clip_initial=5")
    feed(c, 1, norm=100)
    feed(c, 2, ms=2.0, norm=100)
    assert c.weights.ms != 0.5 and c.clip_threshold == pytest.approx(100)
    c.on_plateau()
    assert (c.weights.l1, c.weights.ms, c.weights.grad) == (1.0, 0.5, 0.1)
    assert c.clip_threshold == 5 and len(c.norms) == 0 and c.recoveries == 1
    feed(c, 3, ms=2.0)  # the next update takes a fresh reference: no jump
    assert c.weights.ms == 0.5


def test_updates_only_every_n_steps_and_state_round_trips():
    c = controller("adaptive.update_every=5", "adaptive.weight_gamma=1")
    assert not feed(c, 3)
    assert feed(c, 5)
    for step in range(6, 11):
        feed(c, step, ms=0.5, sharpness=0.5, norm=3.0)
    d = controller("adaptive.update_every=5", "adaptive.weight_gamma=1")
    d.load_state_dict(c.state_dict())
    assert d.state_dict() == c.state_dict()
    assert d.weights == c.weights


def test_disabled_keeps_the_base_weights():
    c = controller("adaptive.enabled=false")
    feed(c, 1, sharpness=0.01)
    assert not feed(c, 2, ms=9)
    assert (c.weights.ms, c.aggressive) == (0.5, False)
