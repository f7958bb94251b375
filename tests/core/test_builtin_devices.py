"""The builtin cpu backend, fp32 precision and single-device strategy, through the registry."""

import pytest
import torch

from treadle.args import TrainingArguments
from treadle.components import Backend, Precision, Strategy
from treadle.plugins import get_plugin_manager


@pytest.fixture
def args(tmp_path):
    return TrainingArguments(str(tmp_path))


def _load(kind, name):
    return get_plugin_manager().resolve(kind, name).load()


def _strategy(args):
    backend = _load("backend", "cpu")(args)
    precision = _load("precision", "fp32")(args)
    return _load("strategy", "single")(args, backend, precision)


def test_cpu_backend(args):
    cls = _load("backend", "cpu")
    assert issubclass(cls, Backend) and cls.name == "cpu"
    assert cls.is_available() is True and cls.device_count() == 1
    assert get_plugin_manager().select_default("backend", args) == "cpu"
    backend = cls(args)
    assert backend.setup_device(0) == torch.device("cpu")
    assert backend.rng_state() == {}
    backend.set_rng_state({})
    backend.synchronize()
    backend.empty_cache()
    backend.teardown()


def test_fp32_precision_changes_nothing(args):
    cls = _load("precision", "fp32")
    assert cls is _load("precision", "32-true"), "the Lightning spellings are aliases"
    precision = cls(args)
    assert isinstance(precision, Precision) and precision.name == "fp32"
    model = torch.nn.Linear(3, 1)
    assert precision.convert_module(model) is model
    with precision.forward_context(), precision.eval_context():
        assert not torch.is_autocast_enabled()
        out = model(torch.ones(2, 3))
    assert out.dtype == torch.float32
    assert precision.state_dict() == {}


def test_single_strategy_places_the_model_and_trains(args):
    strategy = _strategy(args)
    assert isinstance(strategy, Strategy) and strategy.name == "single"
    strategy.setup_environment()
    assert strategy.root_device == torch.device("cpu")
    assert (strategy.world_size, strategy.global_rank, strategy.is_global_zero) == (1, 0, True)
    assert strategy.shard_info() == (1, 0)

    torch.manual_seed(0)
    model = strategy.setup_model(torch.nn.Linear(3, 1))
    optimizer = strategy.setup_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    assert strategy.unwrap_model(model) is model
    before = model.weight.detach().clone()
    loss = model(torch.ones(4, 3)).pow(2).mean()
    strategy.backward(loss, model)
    norm = strategy.clip_grad_norm(model, optimizer, max_norm=1e-3)
    assert norm > 1e-3
    assert strategy.optimizer_step(optimizer, model) is True
    strategy.zero_grad(optimizer)
    assert model.weight.grad is None
    assert not torch.equal(model.weight, before)

    value = torch.tensor([1.0, 2.0])
    assert strategy.all_reduce(value) is value and strategy.all_gather(value) is value
    assert strategy.all_gather_object("x") == ["x"] and strategy.broadcast_object(3) == 3
    strategy.barrier("end")
    state = strategy.model_state_dict(model)
    strategy.load_model_state_dict(model, state)
    strategy.teardown()


def test_single_strategy_sets_up_the_device_when_asked_for_a_model_first(args):
    strategy = _strategy(args)
    model = strategy.setup_model(torch.nn.Linear(2, 2))
    assert strategy.root_device == torch.device("cpu")
    assert next(model.parameters()).device == torch.device("cpu")
