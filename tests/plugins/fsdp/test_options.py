"""The seeds' --fsdp words and fsdp_config keys map onto FSDP2, or fail naming what cannot be honoured."""

from __future__ import annotations

import json
import sys

import pytest

from treadle import TrainingArguments
from treadle.config import check_arguments
from treadle.errors import UsageError
from treadle.plugins import reset_plugin_manager
from treadle_fsdp.options import FsdpOptionError, settings


@pytest.fixture
def fsdp_plugin(monkeypatch):
    """The real entry point of treadle-fsdp (and nothing else installed) loads."""
    monkeypatch.delenv("TREADLE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("TREADLE_PLUGINS", "fsdp")
    reset_plugin_manager()


@pytest.mark.parametrize(
    ("words", "mode", "reshard", "mesh"),
    [
        ([], "full_shard", True, "shard"),
        (["full_shard"], "full_shard", True, "shard"),
        (["shard_grad_op"], "shard_grad_op", False, "shard"),
        (["hybrid_shard"], "hybrid_shard", True, "hybrid"),
        (["hybrid_shard_zero2"], "hybrid_shard_zero2", False, "hybrid"),
        (["no_shard"], "no_shard", True, "replicate"),
    ],
)
def test_sharding_modes_become_a_mesh_and_a_reshard_policy(words, mode, reshard, mesh):
    result = settings(words, None)
    assert (result.mode, result.reshard_after_forward, result.mesh_kind) == (mode, reshard, mesh)


def test_config_keys_with_and_without_the_fsdp_prefix():
    result = settings(
        ["full_shard", "offload", "auto_wrap"],
        {
            "fsdp_transformer_layer_cls_to_wrap": "Block, Other",
            "forward_prefetch": True,
            "fsdp_activation_checkpointing": "true",
            "sync_module_states": False,
            "cpu_ram_efficient_loading": True,
            "state_dict_type": "FULL_STATE_DICT",
            "backward_prefetch": "backward_pre",
            "limit_all_gathers": True,
            "use_orig_params": True,
            "fsdp_version": 2,
            "reshard_after_forward": False,
        },
    )
    assert result.offload and result.wrap == "transformer" and result.layer_classes == ["Block", "Other"]
    assert result.forward_prefetch and result.activation_checkpointing and result.meta_init
    assert not result.sync_module_states and result.state_dict_type == "full" and result.reshard_after_forward is False
    assert settings(["auto_wrap"], None).wrap == "auto"
    assert (settings([], {"min_num_params": 100}).wrap, settings([], {"min_num_params": 100}).min_num_params) == ("size", 100)
    assert settings([], {"sharding_strategy": "SHARD_GRAD_OP"}).mode == "shard_grad_op"
    assert settings([], {"sharding_strategy": 3}).mode == "no_shard"


@pytest.mark.parametrize(
    ("words", "config", "named"),
    [
        ([], {"backward_prefetch": "backward_post"}, "backward_prefetch='backward_post'"),
        ([], {"use_orig_params": False}, "use_orig_params=false"),
        ([], {"limit_all_gathers": False}, "limit_all_gathers=false"),
        ([], {"fsdp_version": 1}, "version=1"),
        ([], {"xla": True}, "xla asks for PyTorch/XLA"),
        ([], {"fsdp_min_num_parms": 10}, "unknown key(s) 'min_num_parms'"),
        (["full_shard"], {"sharding_strategy": "NO_SHARD"}, "contradicts fsdp='full_shard'"),
        (["no_shard", "offload"], None, "'no_shard' has no shards"),
        ([], {"activation_checkpointing": True}, "nothing is wrapped"),
        ([], {"min_num_params": 10, "transformer_layer_cls_to_wrap": ["Block"]}, "not both"),
        ([], {"reshard_after_forward": 1}, "reshard_after_forward must be"),
        ([], {"state_dict_type": "LOCAL_STATE_DICT"}, "state_dict_type='LOCAL_STATE_DICT'"),
    ],
)
def test_what_fsdp2_cannot_honour_is_named(words, config, named):
    with pytest.raises(FsdpOptionError) as caught:
        settings(words, config)
    assert named in str(caught.value)


def test_problems_are_reported_together_at_argument_parsing(fsdp_plugin, tmp_path):
    """A JSON file and a JSON string reach the same checks, before any process group exists."""
    path = tmp_path / "fsdp.json"
    path.write_text(json.dumps({"fsdp_backward_prefetch": "backward_post", "fsdp_bogus": 1}))
    for value in (str(path), path.read_text()):
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, fsdp="full_shard", fsdp_config=value)
        with pytest.raises(UsageError) as caught:
            check_arguments(args)  # what Trainer, the parser and `treadle train` run
        message = str(caught.value)
        assert "backward_prefetch='backward_post'" in message and "'bogus'" in message
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, fsdp="shard_grad_op", fsdp_config={"fsdp_min_num_params": 5})
    check_arguments(args)
    assert args.strategy == "fsdp" and args.fsdp_config == {"min_num_params": 5}


def test_the_cli_reports_a_bad_key_in_one_message(run_treadle, tmp_path):
    env = {"TREADLE_PLUGINS": "fsdp", "TREADLE_DISABLE_PLUGIN_AUTOLOAD": ""}
    result = run_treadle(
        "train", "--output_dir", tmp_path / "out", "--use_cpu", "--fsdp", "no_shard", "--fsdp_config", '{"limit_all_gathers": false}',
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "limit_all_gathers=false cannot be honoured" in result.stderr and "Traceback" not in result.stderr


def test_registration_does_not_import_torch():
    import subprocess

    code = (
        "import sys, treadle_fsdp.hooks, treadle_fsdp.options; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
