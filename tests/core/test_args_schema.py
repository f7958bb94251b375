# ruff: noqa: UP007, UP045  -- the CLI parses typing.Optional/Union annotations; keep them explicit
"""The TrainingArguments schema covers every field of the seed parameter lists.

``tests/core/data/seed_fields.json`` is generated from the seed documents by
``tools/extract_seed_fields.py`` (the seeds live outside the repository). These
tests walk *every* entry of that file, so a field added to the seeds and re-extracted
fails here until the schema has it.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path
from typing import Optional, Union

import pytest
from treadle.args import DEPRECATED_ALIASES, GROUPS, TrainingArguments

ROOT = Path(__file__).resolve().parents[2]
SEED_JSON = Path(__file__).parent / "data" / "seed_fields.json"
SEED_DIR = Path("/work/shared/seeds")

FIELDS = {f.name: f for f in dataclasses.fields(TrainingArguments)}
HINTS = typing.get_type_hints(TrainingArguments)

# Where treadle's default deliberately differs from the seeds' (v5 wins over v4 first):
# name -> reason. Each entry must still differ, so stale ones are caught.
DEFAULT_EXCEPTIONS: dict[str, str] = {}

# Seed types treadle represents differently on purpose: name -> reason.
TYPE_EXCEPTIONS = {
    "parallelism_config": "a JSON object or a JSON file's path; accelerate's ParallelismConfig is read into that object",
}

# Annotations the CLI knows how to parse.
ALLOWED_ANNOTATIONS = {
    bool, int, float, str, dict, list[str],
    Optional[bool], Optional[int], Optional[float], Optional[str], Optional[list[str]],
    Union[dict, str, None], Union[str, bool, None],
}  # fmt: skip

TREADLE_FIELDS = {
    "backend": "auto",
    "precision": None,
    "strategy": None,
    "task": "demo",
    "nan_inf_policy": "warn",
    "plugin_options": {},
}


def load_seed_fields() -> dict[str, dict]:
    """One entry per field name; the v5 entry wins where both lists have it."""
    data = json.loads(SEED_JSON.read_text(encoding="utf-8"))
    merged: dict[str, dict] = {}
    for entry in data["fields"]:
        if entry["name"] not in merged or entry["source"] == "v5":
            merged[entry["name"]] = entry
    return merged


SEED = load_seed_fields()


def declared_default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    if f.default is dataclasses.MISSING:
        return "<required>"
    return f.default


def seed_default(text: Optional[str]):
    """Normalise the seeds' default text: 'False' -> False, '5e-5' -> 5e-5, '"linear"' -> 'linear'."""
    if text is None:
        return None
    text = text.strip().strip("`").strip()
    for quote in ('"', "'", "\u2018", "\u2019"):
        text = text.strip(quote)
    if text == "None":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as passive


def is_list_field(name: str) -> bool:
    return HINTS[name] == list[str]


def comparable(name: str, value):
    """The seeds spell 'no options' as '', False or None for list fields and give
    single names as plain strings; treadle always holds a list."""
    if is_list_field(name):
        if value in (None, False, ""):
            return []
        if isinstance(value, str):
            return [value]
    return value


def seed_kind(type_text: str) -> str:
    t = type_text.lower()
    if "dict" in t or "config" in t:
        return "json"
    if "list" in t:
        return "list"
    if "bool" in t and "str" in t:
        return "str_or_bool"
    if "float" in t:
        return "float"
    if t.startswith("int"):
        return "int"
    if t.startswith("bool"):
        return "bool"
    if t.startswith("str"):
        return "str"
    return "other"


def annotation_kind(name: str) -> str:
    hint = HINTS[name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Union and type(None) in args:
        members = [a for a in args if a is not type(None)]
        if set(members) == {dict, str}:
            return "json"
        if set(members) == {str, bool}:
            return "str_or_bool"
        hint = members[0]
    if hint is dict:
        return "json"
    if hint == list[str]:
        return "list"
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(hint, "other")


# ------------------------------------------------------------------ seed coverage


def test_seed_file_covers_both_lists():
    data = json.loads(SEED_JSON.read_text(encoding="utf-8"))
    sources = {e["source"] for e in data["fields"]}
    assert sources == {"v4", "v5"}
    assert len(SEED) > 100  # sanity: the extraction found the whole lists


@pytest.mark.parametrize("name", sorted(SEED))
def test_every_seed_field_is_in_the_schema(name):
    assert name in FIELDS, f"seed field {name!r} ({SEED[name]['source']}) is missing from TrainingArguments"


@pytest.mark.parametrize("name", sorted(n for n in SEED if n not in DEPRECATED_ALIASES))
def test_seed_defaults_match(name):
    expected = comparable(name, seed_default(SEED[name]["default"]))
    actual = declared_default(FIELDS[name])
    if name in DEFAULT_EXCEPTIONS:
        assert actual != expected, f"{name}: listed as a deliberate difference but now matches the seed"
        return
    assert actual == expected, f"{name}: default {actual!r}, seed ({SEED[name]['source']}) says {expected!r}"
    if isinstance(expected, float) and not isinstance(expected, bool):
        assert isinstance(actual, (int, float))


def test_v5_default_wins_where_the_lists_disagree():
    data = json.loads(SEED_JSON.read_text(encoding="utf-8"))["fields"]
    v4 = {e["name"]: e for e in data if e["source"] == "v4"}
    v5 = {e["name"]: e for e in data if e["source"] == "v5"}
    disagree = [
        n for n in v4.keys() & v5.keys()
        if comparable(n, seed_default(v4[n]["default"])) != comparable(n, seed_default(v5[n]["default"]))
    ]  # fmt: skip
    assert {"output_dir", "optim", "report_to"} <= set(disagree)
    for name in disagree:
        if name not in DEFAULT_EXCEPTIONS:
            assert declared_default(FIELDS[name]) == comparable(name, seed_default(v5[name]["default"])), name


@pytest.mark.parametrize("name", sorted(SEED))
def test_seed_types_match(name):
    if name in TYPE_EXCEPTIONS:
        assert annotation_kind(name) == "json"
        return
    expected = seed_kind(SEED[name]["type"])
    assert expected != "other", f"unclassified seed type {SEED[name]['type']!r}"
    actual = annotation_kind(name)
    if expected == "int" and name in ("logging_steps", "save_steps", "eval_steps", "warmup_steps"):
        expected = "float"  # v4 said int; a fraction of the run is allowed since v5
    assert actual == expected, f"{name}: annotated as {HINTS[name]!r}, seed type is {SEED[name]['type']!r}"


@pytest.mark.parametrize("old", sorted(DEPRECATED_ALIASES))
def test_deprecated_aliases_are_declared_consistently(old):
    f = FIELDS[old]
    assert f.default is None, "an alias must default to None so 'not given' is detectable"
    assert f.metadata["deprecated_for"] == DEPRECATED_ALIASES[old]
    assert DEPRECATED_ALIASES[old] in FIELDS and DEPRECATED_ALIASES[old] not in DEPRECATED_ALIASES
    assert typing.get_origin(HINTS[old]) is Union and type(None) in typing.get_args(HINTS[old])


def test_v4_only_renamed_fields_are_aliases():
    v4 = {n for n, e in SEED.items() if e["source"] == "v4"}
    for old in ("evaluation_strategy", "no_cuda", "fp16_backend", "use_mps_device", "tpu_num_cores",
                "xpu_backend", "include_inputs_for_metrics", "torchdynamo"):  # fmt: skip
        assert old in v4 and old in DEPRECATED_ALIASES
    for old in ("per_gpu_train_batch_size", "per_gpu_eval_batch_size", "push_to_hub_token",
                "push_to_hub_model_id", "push_to_hub_organization"):  # fmt: skip
        assert old in DEPRECATED_ALIASES


def test_treadle_fields():
    for name, default in TREADLE_FIELDS.items():
        assert declared_default(FIELDS[name]) == default
        assert FIELDS[name].metadata["group"] == "Plugins"
    assert set(FIELDS["nan_inf_policy"].metadata["choices"]) == {"warn", "skip_step", "halt"}
    assert "choices" not in FIELDS["backend"].metadata  # plugins add backends


# ------------------------------------------------------------------ metadata for the CLI


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_field_metadata(name):
    f = FIELDS[name]
    help_text = f.metadata.get("help", "")
    assert help_text and help_text[0].isupper() and help_text.endswith("."), name
    assert help_text.count(". ") <= 2, f"{name}: keep help to one or two sentences"
    assert f.metadata.get("group") in GROUPS, name
    assert HINTS[name] in ALLOWED_ANNOTATIONS, f"{name}: {HINTS[name]!r} is not a type the CLI parses"
    choices = f.metadata.get("choices")
    if choices is not None:
        assert isinstance(choices, tuple) and choices
        default = comparable(name, declared_default(f))
        for value in default if isinstance(default, list) else [default]:
            assert value is None or value in choices, f"{name}: default {value!r} not in its choices"


def test_groups_are_contiguous_and_in_declared_order():
    order = [GROUPS.index(f.metadata["group"]) for f in dataclasses.fields(TrainingArguments)]
    assert order == sorted(order)


def test_closed_choices():
    md = {n: f.metadata for n, f in FIELDS.items()}
    assert md["eval_strategy"]["choices"] == ("no", "steps", "epoch")
    assert md["save_strategy"]["choices"] == ("no", "steps", "epoch", "best")
    assert md["hub_strategy"]["choices"] == ("end", "every_save", "checkpoint", "all_checkpoints")
    assert set(md["log_level"]["choices"]) == {"debug", "info", "warning", "error", "critical", "passive"}
    assert set(md["half_precision_backend"]["choices"]) == {"auto", "cuda_amp", "apex", "cpu_amp"}
    for open_field in ("optim", "lr_scheduler_type", "backend", "precision", "strategy", "task"):
        assert "choices" not in md[open_field]  # plugin registries own these names


def test_private_state_is_not_a_field():
    args = TrainingArguments()
    names = {f.name for f in dataclasses.fields(args)}
    assert "_derived" not in names
    assert "_derived" not in args.to_dict() and not any(k.startswith("_") for k in args.to_dict())
    assert args.derived_fields()  # there is derived state, just not as a field


# ------------------------------------------------------------------ the extraction script


@pytest.mark.skipif(not SEED_DIR.is_dir(), reason="seed documents are not available here")
def test_committed_seed_json_is_what_the_script_produces(tmp_path):
    out = tmp_path / "seed_fields.json"
    script = ROOT / "tools" / "extract_seed_fields.py"
    subprocess.run([sys.executable, str(script), str(SEED_DIR), "-o", str(out)], check=True, capture_output=True)
    assert json.loads(out.read_text()) == json.loads(SEED_JSON.read_text())
