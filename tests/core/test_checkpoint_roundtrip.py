"""A checkpoint restores everything, exactly, and never through pickle."""

from __future__ import annotations

import json
import math
import pickle
import random

import numpy as np
import pytest
import torch
from checkpoint_standin import StandinTrainer
from safetensors import safe_open
from treadle.checkpoint import (
    MANIFEST_NAME,
    list_checkpoints,
    load_checkpoint,
    resolve_resume_checkpoint,
    save_checkpoint,
    save_model_files,
)
from treadle.checkpoint.model_files import read_weights
from treadle.checkpoint.serialization import UnsupportedStateError, join_tensors, split_tensors


def _optimizer_state_equal(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for key, entry in a["state"].items():
        for name, value in entry.items():
            other = b["state"][key][name]
            assert type(other) is type(value), name
            if isinstance(value, torch.Tensor):
                assert value.dtype == other.dtype and torch.equal(value, other), name
            else:
                assert value == other


def test_resume_continues_bitwise_identically(tmp_path):
    straight = StandinTrainer(tmp_path / "a")
    straight.train_steps(3)
    path = save_checkpoint(straight, None)
    straight.train_steps(4)
    next_draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))

    resumed = StandinTrainer(tmp_path / "b", seed=123)  # different init: everything must come from the checkpoint
    random.random(), np.random.rand(), torch.rand(1)  # disturb the generators too
    load_checkpoint(resumed, path)
    assert resumed.state.global_step == 3
    assert resumed.counter.count == 3 and torch.equal(resumed.counter.buffer, torch.full((3,), 3.0))
    resumed.train_steps(4)

    for name, tensor in straight.weights().items():
        assert torch.equal(tensor, resumed.weights()[name]), name
    _optimizer_state_equal(straight.optimizer.state_dict(), resumed.optimizer.state_dict())
    assert straight.lr_scheduler.state_dict() == resumed.lr_scheduler.state_dict()
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == next_draws


def test_layout_and_manifest(tmp_path):
    trainer = StandinTrainer(tmp_path)
    trainer.train_steps(2)
    path = save_checkpoint(trainer, None)
    assert path == tmp_path / "checkpoint-2"
    names = {p.name for p in path.iterdir()}
    assert {"model.safetensors", "trainer_state.json", "training_args.json", "optimizer.json",
            "optimizer.safetensors", "scheduler.json", "rng_state.json", "rng_state.safetensors",
            "plugin_states.json", MANIFEST_NAME} <= names
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    assert set(manifest["files"]) == names - {MANIFEST_NAME}
    assert manifest["global_step"] == 2 and manifest["kind"] == "full"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-2"]  # no staging directory left
    assert "secret-token" not in (path / "training_args.json").read_text()


def test_optimizer_state_keeps_types(tmp_path):
    trainer = StandinTrainer(tmp_path)
    trainer.train_steps(1)
    path = save_checkpoint(trainer, None)
    with safe_open(str(path / "optimizer.safetensors"), framework="pt") as fh:
        keys = set(fh.keys())
        assert fh.get_tensor("state.0.step").dtype == torch.float32  # AdamW's step is a float32 tensor
    assert "state.0.exp_avg" in keys and "state.0.exp_avg_sq" in keys
    fresh = StandinTrainer(tmp_path / "other")
    load_checkpoint(fresh, path)
    _optimizer_state_equal(trainer.optimizer.state_dict(), fresh.optimizer.state_dict())


def test_tree_encoding_round_trips_exactly():
    tree = {
        "ints": {0: 1, 7: [2, 3]},
        "tuple": (3, (1, 2), None),
        "floats": [0.1, float("inf"), -float("inf"), 1e-310],
        "nan": float("nan"),
        "tag_lookalike": {"__tuple__": 1},
        "array": np.arange(5, dtype=np.uint32),
        "tensor": torch.arange(4, dtype=torch.bfloat16),
        "dtype": torch.float16,
        "bool": True,
    }
    encoded, tensors = split_tensors(tree)
    json.dumps(encoded, allow_nan=False)  # strict JSON
    back = join_tensors(json.loads(json.dumps(encoded)), tensors)
    assert back["ints"] == {0: 1, 7: [2, 3]} and all(type(k) is int for k in back["ints"])
    assert back["tuple"] == (3, (1, 2), None)
    assert back["floats"] == [0.1, float("inf"), -float("inf"), 1e-310]
    assert math.isnan(back["nan"])
    assert back["tag_lookalike"] == {"__tuple__": 1}
    assert back["array"].dtype == np.uint32 and (back["array"] == np.arange(5)).all()
    assert back["tensor"].dtype == torch.bfloat16 and torch.equal(back["tensor"], tree["tensor"])
    assert back["dtype"] is torch.float16 and back["bool"] is True


def test_python_and_numpy_rng_states_round_trip():
    random.seed(5)
    np.random.seed(5)
    tree = {"python": random.getstate(), "numpy": np.random.get_state(legacy=False)}
    encoded, tensors = split_tensors(tree)
    back = join_tensors(json.loads(json.dumps(encoded)), tensors)
    expected = (random.random(), np.random.rand())
    random.setstate(back["python"])
    np.random.set_state(back["numpy"])
    assert (random.random(), np.random.rand()) == expected


def test_unsupported_value_is_named():
    with pytest.raises(UnsupportedStateError, match=r"scheduler\.lr_lambdas\.0 is a function"):
        split_tensors({"lr_lambdas": [lambda s: s]}, where="scheduler")


def test_no_file_is_a_pickle_and_loading_never_unpickles(tmp_path, monkeypatch):
    trainer = StandinTrainer(tmp_path)
    trainer.train_steps(2)
    path = save_checkpoint(trainer, None)
    for file in path.iterdir():
        head = file.read_bytes()[:4]
        assert not head.startswith(b"\x80"), f"{file.name} starts with a pickle protocol header"
        assert not head.startswith(b"PK\x03\x04"), f"{file.name} is a zip (torch.save format)"

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load unpickled something")

    for name in ("loads", "load", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    fresh = StandinTrainer(tmp_path / "fresh")
    load_checkpoint(fresh, resolve_resume_checkpoint("true", tmp_path))
    assert torch.equal(fresh.weights()["hidden.weight"], trainer.weights()["hidden.weight"])


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    trainer = StandinTrainer(tmp_path, tied=True)
    trainer.train_steps(2)
    path = save_checkpoint(trainer, None)
    with safe_open(str(path / "model.safetensors"), framework="pt") as fh:
        assert "out.weight" not in fh.keys() and "embed.weight" in fh.keys()
        assert fh.metadata()["format"] == "pt"
    weights = read_weights(path / "model.safetensors")
    assert weights["out.weight"] is weights["embed.weight"]
    fresh = StandinTrainer(tmp_path / "fresh", seed=9, tied=True)
    load_checkpoint(fresh, path)
    assert fresh.model.out.weight is fresh.model.embed.weight
    assert torch.equal(fresh.model.out.weight, trainer.model.embed.weight)


def test_save_model_files_writes_weights_config_and_args(tmp_path):
    trainer = StandinTrainer(tmp_path)
    trainer.model.config = {"hidden_size": 8}
    save_model_files(trainer, tmp_path / "final")
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == ["config.json", "model.safetensors", "training_args.json"]
    assert json.loads((tmp_path / "final" / "config.json").read_text()) == {"hidden_size": 8}
    assert torch.equal(read_weights(tmp_path / "final" / "model.safetensors")["hidden.bias"], trainer.model.hidden.bias)


def test_save_only_model_cannot_resume(tmp_path):
    trainer = StandinTrainer(tmp_path, save_only_model=True)
    trainer.train_steps(1)
    path = save_checkpoint(trainer, None)
    assert not (path / "optimizer.json").exists() and not (path / "rng_state.json").exists()
    assert (path / "model.safetensors").exists() and (path / "trainer_state.json").exists()
    from treadle.errors import CheckpointError

    with pytest.raises(CheckpointError, match="save_only_model"):
        resolve_resume_checkpoint(str(path), tmp_path)


def test_a_second_save_of_the_same_step_replaces_the_first(tmp_path):
    trainer = StandinTrainer(tmp_path)
    trainer.train_steps(1)
    save_checkpoint(trainer, None)
    trainer.model.hidden.bias.data.add_(1)
    path = save_checkpoint(trainer, None)
    assert list_checkpoints(tmp_path) == [path]
    assert torch.equal(read_weights(path / "model.safetensors")["hidden.bias"], trainer.model.hidden.bias)
    assert resolve_resume_checkpoint(True, tmp_path) == path


@pytest.mark.transformers
def test_a_transformers_model_saved_by_treadle_loads_with_from_pretrained(tmp_path):
    transformers = pytest.importorskip("transformers")
    from treadle.args import TrainingArguments
    from treadle.trainer import Trainer

    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)  # lm_head is tied to the token embedding
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=["none"]))
    save_model_files(trainer, tmp_path)
    assert {"config.json", "model.safetensors", "training_args.json"} <= {p.name for p in tmp_path.iterdir()}
    loaded = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path))
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
