"""``import treadle`` stays light, and every name it exports resolves on first use."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import treadle


def test_importing_treadle_does_not_import_torch():
    code = "import sys, treadle; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", sorted(treadle._LAZY))
def test_each_lazy_name_is_the_object_of_its_module(name):
    assert getattr(treadle, name) is getattr(importlib.import_module(treadle._LAZY[name]), name)
    assert name in treadle.__all__


@pytest.mark.parametrize(
    "name",
    ["EarlyStoppingCallback", "TrainerCallback", "EvalPrediction", "PredictionOutput", "TrainOutput",
     "DataCollatorWithPadding", "default_data_collator"],
)
def test_the_familiar_trainer_names_are_exported(name):
    assert name in treadle._LAZY


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Nonexistent'"):
        treadle.Nonexistent  # noqa: B018
