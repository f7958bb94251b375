"""A plugin field may offer shorter spellings (``aliases``) that argv and config files accept."""

from __future__ import annotations

import pytest

from treadle.config import ArgvReader, FieldInfo, field_aliases
from treadle.errors import UsageError
from treadle.plugins import ArgumentSchema, PluginRecord


def _schema(taken=None, core=frozenset({"learning_rate"})):
    record = PluginRecord("acme", "acme-treadle", "1.0", "acme.hooks")
    return ArgumentSchema(record, "acme", taken if taken is not None else {}, set(core))


def test_an_alias_is_recorded_with_its_field():
    schema = _schema()
    schema.add("acme_model_name_or_path", default=None, aliases=("model_name_or_path",))
    assert schema.added[0].aliases == ("model_name_or_path",)


@pytest.mark.parametrize("alias, message", [
    ("learning_rate", "already a core treadle argument"),
    ("not-an-identifier", "not a valid name"),
])
def test_an_alias_may_not_shadow_a_core_argument_or_be_malformed(alias, message):
    with pytest.raises(ValueError, match=message):
        _schema().add("acme_x", aliases=(alias,))


def test_two_plugins_cannot_claim_one_alias():
    first = _schema()
    first.add("acme_model", aliases=("model_name_or_path",))
    taken = {f.name: f for f in first.added}
    other = ArgumentSchema(PluginRecord("zeta", "zeta-treadle", "1.0", "zeta.hooks"), "zeta", taken, set())
    with pytest.raises(ValueError, match="already declared by acme"):
        other.add("zeta_model", aliases=("model_name_or_path",))


def test_argv_reads_an_alias_into_its_field():
    fields = {"acme_model_name_or_path": FieldInfo("acme_model_name_or_path", str, None, aliases=("model_name_or_path",))}
    assert field_aliases(fields) == {"model_name_or_path": "acme_model_name_or_path"}
    pairs, _ = ArgvReader(fields, {}).read(["--model_name_or_path", "dir", "--model-name-or-path=other"])
    assert pairs == [("acme_model_name_or_path", "dir"), ("acme_model_name_or_path", "other")]
    with pytest.raises(UsageError, match="unknown argument --model_path"):
        ArgvReader(fields, {}).read(["--model_path", "x"])
