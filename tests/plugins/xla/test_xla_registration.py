"""treadle-xla's registration: cheap, ordered after cuda/mps, chosen by ``auto`` only where XLA is meant.

These tests do not need an XLA device, only the plugin installed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from treadle.args import TrainingArguments
from treadle.config import check_arguments
from treadle.plugins import get_plugin_manager

pytestmark = pytest.mark.usefixtures("installed_plugins")


def test_hooks_module_imports_neither_torch_nor_torch_xla():
    code = "import sys, treadle_xla.hooks; print(json.dumps(sorted(m for m in ('torch', 'torch_xla') if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_registers_the_backend_and_two_strategies():
    pm = get_plugin_manager()
    backend = pm.resolve("backend", "xla", None)
    assert backend.distribution == "treadle-xla" and backend.requires == ("torch_xla",)
    assert pm.resolve("backend", "tpu", None).name == "xla"
    assert {"xla", "xla_fsdp"} <= set(pm.names("strategy"))
    priorities = {spec.name: spec.priority for spec in pm.registry("backend").values()}
    assert priorities["xla"] > priorities["cpu"]


def test_auto_takes_xla_only_where_pjrt_or_a_tpu_says_so(monkeypatch, tmp_path):
    from treadle_xla.backend import XlaBackend, tpu_attached

    pm = get_plugin_manager()
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    assert pm.select_default("backend", None) == "xla"
    monkeypatch.delenv("PJRT_DEVICE")
    if not tpu_attached():
        assert "PJRT_DEVICE is not set" in XlaBackend.unavailable_reason()
        assert pm.select_default("backend", None) == "cpu"


def test_the_xla_backend_implies_the_xla_strategy_unless_one_is_chosen(tmp_path):
    def strategy(**values):
        args = TrainingArguments(output_dir=str(tmp_path), report_to=["none"], **values)
        check_arguments(args)
        return args.strategy

    assert strategy(backend="xla") == "xla"
    assert strategy(backend="xla", strategy="single") == "single"
    assert strategy(backend="cpu") == "single"
    assert strategy(backend="xla", fsdp="full_shard", fsdp_config={"xla": True}) == "xla_fsdp"


def test_treadle_args_says_why_the_strategy_is_xla(tmp_path):
    from treadle.config import parse_arguments

    parsed = parse_arguments(["--backend", "xla", "--output_dir", str(tmp_path)])
    assert parsed.args.strategy == "xla"
    assert parsed.sources["strategy"] == "implied by backend='xla': one XLA device per process"  # not the core's 'single'


def test_xla_fsdp_config_on_another_backend_is_one_clear_message(run_treadle):
    done = run_treadle("train", "--task", "demo", "--backend", "cpu", "--fsdp", "full_shard",
                       "--fsdp_config", '{"xla": true}', "--max_steps", "1",
                       env={"TREADLE_DISABLE_PLUGIN_AUTOLOAD": ""})
    assert done.returncode == 2, done.stderr
    assert "fsdp_config: 'xla': true needs backend 'xla'" in done.stderr and "Traceback" not in done.stderr


def test_tpu_num_cores_means_the_xla_backend_and_strategy(tmp_path):
    with pytest.warns(FutureWarning, match="tpu_num_cores"):
        args = TrainingArguments(output_dir=str(tmp_path), report_to=["none"], tpu_num_cores=8)
    check_arguments(args)
    assert (args.backend, args.strategy) == ("xla", "xla")
