"""No core module names a concrete plugin (DESIGN: the core meets plugins only through contracts).

The names users type to select a first-party plugin's component (``cuda``, ``ddp``, ``wandb``,
``treadle-amp`` ...) may appear only in ``treadle.catalog`` (the one table of seed
compatibility and install hints) and in ``treadle.builtin`` (the core's own plugins). Field
names of the seeds (``fp16``, ``fsdp``, ``deepspeed``) are schema, not plugin names, so the check
looks at the *values* the core compares selectors with: any string constant that is exactly a
plugin's name. Docstrings and messages that merely mention a name in a sentence are fine.
"""

from __future__ import annotations

import ast
from pathlib import Path

import treadle

CORE = Path(treadle.__file__).parent
ALLOWED = {CORE / "catalog.py"}
SEED_VALUES = {
    ("args/rules.py", "xla"): "a key of the seeds' fsdp_config (XLA's FSDP), not a selector value",
    ("args/schema.py", "huggingface"): "the seeds' default of the `project` field",
}

PLUGIN_NAMES = {
    "cuda", "mps", "xla", "tpu", "ddp", "fsdp2", "fp16-true", "bf16-true", "tensorboard", "wandb", "mlflow",
    "huggingface", "optuna",
}
PLUGIN_DISTRIBUTIONS = {"treadle-" + x for x in (
    "amp", "cuda", "mps", "xla", "ddp", "fsdp", "deepspeed", "tensorboard", "wandb", "mlflow", "hub", "optuna", "transformers")}


def _constants(tree: ast.AST):
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


def test_core_modules_compare_with_no_plugin_name():
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        if path in ALLOWED or "builtin" in path.relative_to(CORE).parts or "testing" in path.relative_to(CORE).parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _constants(tree):
            value = node.value.strip().lower()
            if (value in PLUGIN_NAMES or value in PLUGIN_DISTRIBUTIONS) and (str(path.relative_to(CORE)), value) not in SEED_VALUES:
                offenders.append(f"{path.relative_to(CORE)}:{node.lineno}: {node.value!r}")
    assert not offenders, "core modules naming a plugin (move it into treadle.catalog or the plugin):\n" + "\n".join(offenders)


def test_seed_flags_select_through_the_catalog(installed_plugins):
    """A plugin's row in the catalog drives selection like the seed rows do (no core edit)."""
    from treadle.args import TrainingArguments
    from treadle.catalog import get_catalog

    catalog = get_catalog()
    catalog.imply("strategy", "fixture_sharded", lambda args: "implied by run_name=shard-me" if args.run_name == "shard-me" else None,
                  field="run_name")
    assert TrainingArguments("o", run_name="shard-me").strategy == "fixture_sharded"
    assert TrainingArguments("o").strategy == "single"
    assert TrainingArguments("o", fsdp="full_shard").strategy == "fsdp"
    assert TrainingArguments("o", bf16=True).precision == "bf16"


def test_install_hints_come_from_the_catalog():
    from treadle.plugins import get_plugin_manager

    message = get_plugin_manager().missing_message("backend", "xla")
    assert "treadle-xla" in message
