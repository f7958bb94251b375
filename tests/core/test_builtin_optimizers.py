"""The builtin optimizer factories: torch's optimizers for real, the others' argument mapping.

Libraries such as bitsandbytes or GaLore are not installed here. Selecting one must give the
registry's clear message; the mapping from arguments to the library's keywords is checked by
putting a small stand-in module under the library's import name.
"""

import importlib.util
import sys
import types

import pytest
import torch

from treadle.args import TrainingArguments
from treadle.builtin import hooks, optimizers
from treadle.builtin.layerwise import LayerwiseOptimizer
from treadle.errors import PluginError, UsageError
from treadle.plugins import get_plugin_manager


def _args(tmp_path, **overrides):
    return TrainingArguments(output_dir=str(tmp_path), **overrides)


def _factory(name):
    return get_plugin_manager().resolve("optimizer", name).load()


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


def _loss(model):
    inputs = torch.linspace(-1, 1, 32).reshape(8, 4)
    return ((model(inputs) - 1.0) ** 2).mean()


def _build(cls, kwargs, model):
    kwargs = dict(kwargs)
    params = kwargs.pop("params", model.parameters())
    return cls(params, **kwargs)


# ---------------------------------------------------------------------------------------------
# torch optimizers
# ---------------------------------------------------------------------------------------------


def test_every_registered_name_has_a_factory_of_that_name():
    names = set(get_plugin_manager().names("optimizer"))
    assert names == set(hooks.TORCH_OPTIMIZERS) | set(hooks.LIBRARY_OPTIMIZERS)
    for name in names:
        assert getattr(optimizers, name).__name__ == name


@pytest.mark.parametrize("name", sorted(hooks.TORCH_OPTIMIZERS))
def test_torch_optimizer_trains(tmp_path, name):
    cls, kwargs = _factory(name)(_args(tmp_path, optim=name, learning_rate=1e-2), _model())
    model = _model()
    optimizer = _build(cls, kwargs, model)
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.defaults["lr"] == 1e-2
    before = _loss(model).item()
    for _ in range(5):
        optimizer.zero_grad()
        _loss(model).backward()
        optimizer.step()
    assert _loss(model).item() < before


def test_adam_family_reads_betas_epsilon_and_weight_decay(tmp_path):
    args = _args(tmp_path, learning_rate=3e-4, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6, weight_decay=0.1)
    cls, kwargs = optimizers.adamw_torch(args)
    assert cls is torch.optim.AdamW
    assert kwargs == {"lr": 3e-4, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1}


def test_weight_decay_default_is_the_argument_not_torch_default(tmp_path):
    cls, kwargs = optimizers.adamw_torch(_args(tmp_path))
    optimizer = _build(cls, kwargs, _model())
    assert optimizer.defaults["weight_decay"] == 0.0  # torch's AdamW alone would use 0.01


def test_fused_adamw_is_fused_and_steps_on_cpu(tmp_path):
    cls, kwargs = optimizers.adamw_torch_fused(_args(tmp_path))
    assert kwargs["fused"] is True
    model = _model()
    optimizer = _build(cls, kwargs, model)
    _loss(model).backward()
    optimizer.step()


def test_optim_args_set_torch_optimizer_keywords(tmp_path):
    args = _args(tmp_path, optim="sgd", optim_args="momentum=0.9, nesterov=true,dampening=0")
    cls, kwargs = optimizers.sgd(args)
    optimizer = _build(cls, kwargs, _model())
    assert optimizer.defaults["momentum"] == 0.9
    assert optimizer.defaults["nesterov"] is True

    _, kwargs = optimizers.adamw_torch(_args(tmp_path, optim_args="betas=(0.5,0.6),amsgrad=True"))
    assert kwargs["betas"] == (0.5, 0.6)
    assert kwargs["amsgrad"] is True


@pytest.mark.parametrize(
    ("optim", "optim_args", "message"),
    [
        ("sgd", "momentom=0.9", "torch.optim.SGD (--optim sgd) has no option momentom. Its options are: lr, momentum"),
        ("sgd", "momentum", "expected key=value pairs"),
        ("adamw_torch", "=1", "expected key=value pairs"),
    ],
)
def test_bad_optim_args_are_usage_errors(tmp_path, optim, optim_args, message):
    with pytest.raises(UsageError) as info:
        getattr(optimizers, optim)(_args(tmp_path, optim=optim, optim_args=optim_args))
    assert message in str(info.value)


# ---------------------------------------------------------------------------------------------
# libraries that are not installed
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(hooks.LIBRARY_OPTIMIZERS))
def test_selecting_a_library_optimizer_names_the_missing_module(name):
    (module,), _ = hooks.LIBRARY_OPTIMIZERS[name]
    spec = get_plugin_manager().resolve("optimizer", name)
    if spec.available():
        pytest.skip(f"{module} is installed")
    with pytest.raises(PluginError) as info:
        spec.load()
    message = str(info.value)
    assert f"optimizer '{name}'" in message
    assert f"{module} is not importable" in message
    assert "pip install" in message


def test_calling_a_library_factory_directly_explains_the_import_failure(tmp_path):
    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    with pytest.raises(PluginError, match=r"--optim adamw_8bit needs bitsandbytes\.optim\.AdamW.*pip install bitsandbytes"):
        optimizers.adamw_8bit(_args(tmp_path))


# ---------------------------------------------------------------------------------------------
# the library code paths, against stand-in modules
# ---------------------------------------------------------------------------------------------


def _stand_in(monkeypatch, dotted, **classes):
    """Put fresh modules under ``dotted`` and its parents (for this test only), exposing ``classes``."""
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    for attr, cls in classes.items():
        setattr(sys.modules[dotted], attr, cls)
    return sys.modules[dotted]


class _Recorder:
    def __init__(self, params, **kwargs):
        self.params, self.kwargs = params, kwargs


def _classes(*names):
    return {n: type(n, (_Recorder,), {}) for n in names}


@pytest.mark.parametrize(
    ("optim", "cls", "expected"),
    [
        ("adamw_bnb_8bit", "AdamW", {"optim_bits": 8, "is_paged": False, "betas": (0.9, 0.999), "eps": 1e-8}),
        ("paged_adamw_32bit", "AdamW", {"optim_bits": 32, "is_paged": True, "betas": (0.9, 0.999)}),
        ("paged_lion_8bit", "Lion", {"optim_bits": 8, "is_paged": True, "betas": (0.9, 0.999)}),
        ("lion_32bit", "Lion", {"optim_bits": 32, "is_paged": False}),
        ("ademamix_8bit", "AdEMAMix", {"optim_bits": 8, "betas": (0.9, 0.999, 0.9999), "alpha": 5.0, "eps": 1e-8}),
        ("rmsprop_bnb_8bit", "RMSprop", {"optim_bits": 8}),
    ],
)
def test_bitsandbytes_keywords(tmp_path, monkeypatch, optim, cls, expected):
    module = _stand_in(monkeypatch, "bitsandbytes.optim", **_classes("AdamW", "Lion", "RMSprop", "AdEMAMix"))
    chosen, kwargs = getattr(optimizers, optim)(_args(tmp_path, optim=optim, learning_rate=0.01))
    assert chosen is getattr(module, cls)
    assert kwargs["lr"] == 0.01
    assert kwargs.items() >= expected.items()
    if cls == "RMSprop":
        assert "is_paged" not in kwargs


def test_bitsandbytes_optim_args(tmp_path, monkeypatch):
    _stand_in(monkeypatch, "bitsandbytes.optim", **_classes("AdamW", "Lion", "RMSprop", "AdEMAMix"))
    _, kwargs = optimizers.ademamix(_args(tmp_path, optim_args="beta3=0.999,alpha=8,t_alpha=100"))
    assert kwargs["betas"][2] == 0.999 and kwargs["alpha"] == 8.0 and kwargs["t_alpha"] == 100
    _, kwargs = optimizers.rmsprop_bnb(_args(tmp_path, optim_args="alpha=0.9,centered=true"))
    assert kwargs["alpha"] == 0.9 and kwargs["centered"] is True
    with pytest.raises(UsageError, match="does not take gamma"):
        optimizers.lion_8bit(_args(tmp_path, optim_args="gamma=1"))


def test_torchao_and_anyprecision_keywords(tmp_path, monkeypatch):
    _stand_in(monkeypatch, "torchao.optim", **_classes("AdamW4bit", "AdamW8bit"))
    cls, kwargs = optimizers.adamw_torch_4bit(_args(tmp_path, optim_args="block_size=128"))
    assert cls.__name__ == "AdamW4bit"
    assert kwargs["block_size"] == 128 and kwargs["bf16_stochastic_round"] is False

    _stand_in(monkeypatch, "torchdistx.optimizers", **_classes("AnyPrecisionAdamW"))
    _, kwargs = optimizers.adamw_anyprecision(_args(tmp_path, optim_args="use_kahan_summation=true,momentum_dtype=bfloat16"))
    assert kwargs["use_kahan_summation"] is True
    assert kwargs["momentum_dtype"] is torch.bfloat16
    assert kwargs["compensation_buffer_dtype"] is torch.bfloat16
    with pytest.raises(UsageError, match="not a torch dtype"):
        optimizers.adamw_anyprecision(_args(tmp_path, optim_args="variance_dtype=float99"))


def test_schedule_free_keywords(tmp_path, monkeypatch):
    _stand_in(monkeypatch, "schedulefree", **_classes("AdamWScheduleFree", "RAdamScheduleFree", "SGDScheduleFree"))
    args = _args(tmp_path, warmup_steps=7, weight_decay=0.05, optim_args="r=0.5")
    _, adamw = optimizers.schedule_free_adamw(args)
    assert adamw["warmup_steps"] == 7 and adamw["weight_decay"] == 0.05 and adamw["r"] == 0.5 and "betas" in adamw
    _, radam = optimizers.schedule_free_radam(args)
    assert "warmup_steps" not in radam
    _, sgd = optimizers.schedule_free_sgd(args)
    assert "betas" not in sgd and sgd["weight_lr_power"] == 2.0


def test_other_library_keywords(tmp_path, monkeypatch):
    _stand_in(monkeypatch, "grokadamw", **_classes("GrokAdamW"))
    _, kwargs = optimizers.grokadamw(_args(tmp_path, optim_args="lamb=3"))
    assert kwargs["lamb"] == 3.0 and kwargs["alpha_init"] == 0.98

    _stand_in(monkeypatch, "optimi", **_classes("StableAdamW"))
    _, kwargs = optimizers.stable_adamw(_args(tmp_path, optim_args="decouple_lr=false,max_lr=0.1"))
    assert kwargs["decouple_lr"] is False and kwargs["max_lr"] == 0.1 and kwargs["kahan_sum"] is None

    _stand_in(monkeypatch, "lomo_optim", **_classes("Lomo", "AdaLomo"))
    model = _model()
    cls, kwargs = optimizers.adalomo(_args(tmp_path), model)
    assert cls.__name__ == "AdaLomo" and kwargs["params"] is model
    with pytest.raises(UsageError, match="needs the model"):
        optimizers.lomo(_args(tmp_path))

    _stand_in(monkeypatch, "apex.optimizers", **_classes("FusedAdam"))
    cls, kwargs = optimizers.adamw_apex_fused(_args(tmp_path))
    assert cls.__name__ == "FusedAdam" and kwargs == {"lr": 5e-5, "betas": (0.9, 0.999), "eps": 1e-8}


class _ProjectedAdamW(torch.optim.AdamW):
    """Stands in for GaLore / APOLLO: an AdamW that tolerates the projection keys in its groups."""


def test_galore_groups_the_projected_weights(tmp_path, monkeypatch):
    _stand_in(monkeypatch, "galore_torch", GaLoreAdamW=_ProjectedAdamW, GaLoreAdamW8bit=_ProjectedAdamW, GaLoreAdafactor=_Recorder)
    model = _model()
    args = _args(tmp_path, optim="galore_adamw", optim_target_modules=["0"], optim_args="rank=4")
    cls, kwargs = optimizers.galore_adamw(args, model)
    plain, projected = kwargs["params"]
    assert [p is model[0].weight for p in projected["params"]] == [True]
    assert len(plain["params"]) == 3
    assert projected["rank"] == 4 and projected["update_proj_gap"] == 200 and projected["scale"] == 0.25
    optimizer = _build(cls, kwargs, model)
    _loss(model).backward()
    optimizer.step()

    _, kwargs = optimizers.galore_adafactor(_args(tmp_path, optim_target_modules=["all-linear"]), model)
    assert kwargs["scale_parameter"] is False and kwargs["relative_step"] is False
    assert len(kwargs["params"][1]["params"]) == 2


def test_apollo_uses_adam_keywords(tmp_path, monkeypatch):
    _stand_in(monkeypatch, "apollo_torch", APOLLOAdamW=_ProjectedAdamW)
    cls, kwargs = optimizers.apollo_adamw(_args(tmp_path, optim_target_modules=["2"], adam_beta2=0.9), _model())
    assert kwargs["betas"] == (0.9, 0.9)
    assert kwargs["params"][1]["proj"] == "random" and kwargs["params"][1]["scale"] == 1.0


@pytest.mark.parametrize(
    ("overrides", "model", "message"),
    [
        ({}, True, "set --optim_target_modules"),
        ({"optim_target_modules": ["attention"]}, True, "selects no nn.Linear layer"),
        ({"optim_target_modules": ["0"]}, False, "needs the model"),
        ({"optim_target_modules": ["0"], "optim_args": "rnk=3"}, True, "does not take rnk"),
    ],
)
def test_galore_usage_errors(tmp_path, monkeypatch, overrides, model, message):
    _stand_in(monkeypatch, "galore_torch", GaLoreAdamW=_ProjectedAdamW, GaLoreAdamW8bit=_ProjectedAdamW, GaLoreAdafactor=_Recorder)
    with pytest.raises(UsageError, match=message):
        optimizers.galore_adamw(_args(tmp_path, **overrides), _model() if model else None)


def test_layerwise_optimizer_matches_the_plain_one_under_a_schedule(tmp_path, monkeypatch):
    _stand_in(monkeypatch, "galore_torch", GaLoreAdamW=_ProjectedAdamW, GaLoreAdamW8bit=_ProjectedAdamW, GaLoreAdafactor=_Recorder)
    args = _args(tmp_path, optim_target_modules=["all-linear"], learning_rate=0.05)
    layerwise_model, plain_model = _model(), _model()
    cls, kwargs = optimizers.galore_adamw_layerwise(args, layerwise_model)
    assert cls is LayerwiseOptimizer
    layerwise = _build(cls, kwargs, layerwise_model)
    plain_cls, plain_kwargs = optimizers.galore_adamw(args, plain_model)
    plain = _build(plain_cls, plain_kwargs, plain_model)
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda step: 1.0 / (1 + step)) for o in (layerwise, plain)]

    for _ in range(4):
        for model, optimizer, schedule in zip((layerwise_model, plain_model), (layerwise, plain), schedules):
            optimizer.zero_grad()
            _loss(model).backward()
            optimizer.step()
            schedule.step()
        assert all(p.grad is None for p in layerwise_model.parameters()), "gradients are consumed during backward"
    for a, b in zip(layerwise_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b)

    state = layerwise.state_dict()
    assert len(state["layerwise"]) == 4
    twin = _model()
    restored = _build(*optimizers.galore_adamw_layerwise(args, twin), twin)
    restored.load_state_dict(state)
    assert torch.equal(restored.state_dict()["layerwise"][0]["state"][0]["exp_avg"], state["layerwise"][0]["state"][0]["exp_avg"])


def test_layerwise_refuses_gradient_accumulation(tmp_path, monkeypatch):
    _stand_in(monkeypatch, "galore_torch", GaLoreAdamW=_ProjectedAdamW, GaLoreAdamW8bit=_ProjectedAdamW, GaLoreAdafactor=_Recorder)
    args = _args(tmp_path, optim_target_modules=["all-linear"], gradient_accumulation_steps=2)
    with pytest.raises(UsageError, match="gradient_accumulation_steps must be 1"):
        optimizers.galore_adamw_layerwise(args, _model())


def test_env_report_says_which_optimizer_libraries_are_installed():
    lines = dict(hooks.treadle_report_env())
    report = lines["optimizer libraries"]
    for requires, _ in hooks.LIBRARY_OPTIMIZERS.values():
        for module in requires:
            assert module in report
    if importlib.util.find_spec("bitsandbytes") is None:
        assert "bitsandbytes" in report.split("not installed:")[1]
