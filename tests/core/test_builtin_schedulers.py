"""The builtin learning-rate schedules: the seeds' formulas, JSON-only state, clear errors."""

import json

import pytest
import torch

from treadle.builtin import hooks, schedulers
from treadle.errors import UsageError
from treadle.plugins import get_plugin_manager

BASE_LR = 0.1
WARMUP, TOTAL = 4, 20
STEPS = [0, 2, 4, 7, 12, 19, 20, 25]

# Learning rate / BASE_LR at STEPS, worked out from the formulas of the seed documents with
# 4 warmup steps out of 20 (steps past the end included: some shapes keep moving there).
REFERENCE = [
    ("linear", {}, [0.0, 0.5, 1.0, 0.8125, 0.5, 0.0625, 0.0, 0.0]),
    ("cosine", {}, [0.0, 0.5, 1.0, 0.915735, 0.5, 0.009607, 0.0, 0.222215]),
    ("cosine", {"num_cycles": 1.5}, [0.0, 0.5, 1.0, 0.402455, 0.5, 0.084265, 0.0, 0.990393]),
    ("cosine_with_restarts", {"num_cycles": 3}, [0.0, 0.5, 1.0, 0.402455, 0.5, 0.084265, 0.0, 0.0]),
    ("polynomial", {"lr_end": 0.01, "power": 2.0}, [0.0, 0.5, 1.0, 0.694141, 0.325, 0.103516, 0.1, 0.1]),
    ("constant", {}, [1.0] * 8),
    ("constant_with_warmup", {}, [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ("inverse_sqrt", {}, [0.0, 0.5, 1.0, 0.755929, 0.57735, 0.458831, 0.447214, 0.4]),
    ("inverse_sqrt", {"timescale": 10}, [0.0, 0.5, 1.0, 0.877058, 0.745356, 0.632456, 0.620174, 0.567962]),
    ("cosine_with_min_lr", {"min_lr": 0.01}, [0.0, 0.5, 1.0, 0.924161, 0.55, 0.108647, 0.1, 0.299993]),
    ("cosine_with_min_lr", {"min_lr_rate": 0.1}, [0.0, 0.5, 1.0, 0.924161, 0.55, 0.108647, 0.1, 0.299993]),
    (
        "cosine_warmup_with_min_lr",
        {"min_lr_rate": 0.1},
        [0.25, 0.75, 0.991353, 0.868198, 0.462209, 0.1, 0.108647, 0.377792],
    ),
    (
        "cosine_warmup_with_min_lr",
        {"min_lr_rate": 0.1, "warmup_lr_rate": 0.4},
        [0.4, 0.8, 0.991353, 0.868198, 0.462209, 0.1, 0.108647, 0.377792],
    ),
    ("warmup_stable_decay", {"num_decay_steps": 8}, [0.0, 0.5, 1.0, 1.0, 1.0, 0.03806, 0.0, 0.0]),
    (
        "warmup_stable_decay",
        {"num_decay_steps": 8, "warmup_type": "cosine", "decay_type": "1-sqrt", "min_lr_ratio": 0.1},
        [0.1, 0.55, 1.0, 1.0, 1.0, 0.158127, 0.1, 0.1],
    ),
    (
        "warmup_stable_decay",
        {"num_decay_steps": 8, "num_stable_steps": 2, "decay_type": "linear"},
        [0.0, 0.5, 1.0, 0.875, 0.25, 0.0, 0.0, 0.0],
    ),
]


def _optimizer(lr=BASE_LR, groups=1):
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(groups)]
    return torch.optim.SGD([{"params": [p]} for p in params], lr=lr)


def _factory(name):
    """The scheduler factory as the Trainer gets it: through the plugin manager."""
    return get_plugin_manager().resolve("scheduler", name).load()


def _rates(scheduler, optimizer, steps):
    seen, step = {}, 0
    for target in steps:
        while step < target:
            optimizer.step()
            scheduler.step()
            step += 1
        seen[target] = optimizer.param_groups[0]["lr"] / BASE_LR
    return [seen[s] for s in steps]


def test_every_registered_name_has_a_factory():
    assert set(get_plugin_manager().names("scheduler")) == set(hooks.SCHEDULERS)
    for name in hooks.SCHEDULERS:
        assert callable(_factory(name))


@pytest.mark.parametrize(("name", "kwargs", "expected"), REFERENCE, ids=[f"{n}{k or ''}" for n, k, _ in REFERENCE])
def test_schedule_matches_reference_values(name, kwargs, expected):
    optimizer = _optimizer()
    scheduler = _factory(name)(optimizer, num_warmup_steps=WARMUP, num_training_steps=TOTAL, **kwargs)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    assert _rates(scheduler, optimizer, STEPS) == pytest.approx(expected, abs=1e-6)


def test_factor_applies_to_each_group_initial_rate():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": [params[0]], "lr": 0.1}, {"params": [params[1]], "lr": 0.02}], lr=0.1)
    scheduler = _factory("linear")(optimizer, num_warmup_steps=0, num_training_steps=4)
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.075, 0.015])


@pytest.mark.parametrize(("name", "kwargs", "_expected"), REFERENCE, ids=[f"{n}{k or ''}" for n, k, _ in REFERENCE])
def test_state_is_plain_json_and_resumes_exactly(name, kwargs, _expected):
    optimizer = _optimizer()
    scheduler = _factory(name)(optimizer, num_warmup_steps=WARMUP, num_training_steps=TOTAL, **kwargs)
    _rates(scheduler, optimizer, [7])
    saved = json.loads(json.dumps(scheduler.state_dict(), allow_nan=False))
    assert isinstance(saved["lr_lambdas"][0], dict), "a function would be saved as None, its configuration lost"

    fresh_optimizer = _optimizer()
    fresh_optimizer.load_state_dict(optimizer.state_dict())
    resumed = _factory(name)(fresh_optimizer, num_warmup_steps=WARMUP, num_training_steps=TOTAL, **kwargs)
    resumed.load_state_dict(saved)
    for _ in range(6):
        for opt, sched in ((optimizer, scheduler), (fresh_optimizer, resumed)):
            opt.step()
            sched.step()
        assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_reduce_lr_on_plateau_follows_the_metric_and_saves_json():
    optimizer = _optimizer()
    scheduler = _factory("reduce_lr_on_plateau")(
        optimizer, num_warmup_steps=3, num_training_steps=TOTAL, mode="max", factor=0.5, patience=0
    )
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    scheduler.step(0.8)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    scheduler.step(0.7)  # worse in "max" mode: halve
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    json.dumps(scheduler.state_dict())


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("cosine", {"power": 2}, "the cosine schedule does not take power; the keys it accepts are: num_cycles"),
        ("constant", {"num_cycles": 2}, "does not take num_cycles"),
        ("reduce_lr_on_plateau", {"patiense": 3}, "does not take patiense"),
        ("cosine_with_min_lr", {}, "needs min_lr"),
        ("cosine_with_min_lr", {"min_lr": 0.01, "min_lr_rate": 0.1}, "not both"),
        ("polynomial", {"lr_end": 0.5}, "lr_end (0.5) below the initial learning rate (0.1)"),
        ("warmup_stable_decay", {}, "needs num_decay_steps"),
        ("warmup_stable_decay", {"num_decay_steps": 30}, "exceed the 20 training steps"),
        ("warmup_stable_decay", {"num_decay_steps": 5, "decay_type": "exp"}, "decay_type must be one of"),
    ],
)
def test_wrong_scheduler_kwargs_are_usage_errors(name, kwargs, message):
    with pytest.raises(UsageError) as info:
        _factory(name)(_optimizer(), num_warmup_steps=WARMUP, num_training_steps=TOTAL, **kwargs)
    assert message in str(info.value)


def test_schedules_needing_the_total_say_so():
    with pytest.raises(UsageError, match="num_training_steps"):
        schedulers.linear(_optimizer(), num_warmup_steps=0, num_training_steps=None)


def test_inverse_sqrt_without_warmup_uses_a_long_timescale():
    optimizer = _optimizer()
    scheduler = schedulers.inverse_sqrt(optimizer, num_warmup_steps=0, num_training_steps=TOTAL)
    assert scheduler.lr_lambdas[0].timescale == 10_000
