"""The tokenizer / processor (``processing_class``) travels with the model, as the seeds say.

``save_model`` and every checkpoint hold its ``save_pretrained`` files (subfolders included),
the manifest checks them like any other file and names them (``processing_files``), and
neither a resume nor ``load_best_model_at_end`` trips over them.
"""

from __future__ import annotations

import json
import os

import pytest
from trainer_kit import Classifier, make_args, make_data, weights

from treadle.checkpoint import processing_files
from treadle.checkpoint.model_files import read_weights
from treadle.errors import CheckpointError
from treadle.trainer import Trainer

PROCESSOR_FILES = ["templates/chat.jinja", "tokenizer_config.json"]


class Processor:
    """What treadle needs of a tokenizer: ``save_pretrained(directory)``; this one writes a subfolder too."""

    def save_pretrained(self, directory):
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as fh:
            json.dump({"kind": "test"}, fh)
        os.makedirs(os.path.join(directory, "templates"), exist_ok=True)
        with open(os.path.join(directory, "templates", "chat.jinja"), "w") as fh:
            fh.write("{{ message }}")


def _args(tmp_path, **overrides):
    values = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2, "eval_strategy": "steps", "eval_steps": 2}
    return make_args(tmp_path, **{**values, **overrides})


def test_checkpoints_and_the_final_model_hold_the_processor_files(tmp_path):
    args = _args(tmp_path, load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=True)
    trainer = Trainer(Classifier(), args, train_dataset=make_data(32), eval_dataset=make_data(16), processing_class=Processor())
    trainer.train()  # greater_is_better on a loss: the first evaluation stays the best, so its weights come back
    out = tmp_path / "out"
    best = out / "checkpoint-2"
    assert trainer.state.best_model_checkpoint == str(best)
    assert weights(trainer.model).keys() == read_weights(best / "model.safetensors").keys()
    assert all(v.equal(read_weights(best / "model.safetensors")[k]) for k, v in weights(trainer.model).items())
    for step in (2, 4):
        manifest = json.loads((out / f"checkpoint-{step}" / "manifest.json").read_text())
        assert processing_files(manifest) == PROCESSOR_FILES
        assert set(PROCESSOR_FILES) <= set(manifest["files"])  # checked like every other file

    trainer.save_model()
    assert json.loads((out / "tokenizer_config.json").read_text()) == {"kind": "test"}
    assert (out / "templates" / "chat.jinja").read_text() == "{{ message }}"
    assert not [p for p in out.iterdir() if p.name.startswith(".incomplete")]


def test_a_resume_reads_a_checkpoint_with_processor_files_and_notices_a_changed_one(tmp_path):
    trainer = Trainer(Classifier(), _args(tmp_path), train_dataset=make_data(32), eval_dataset=make_data(16),
                      processing_class=Processor())
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"

    resumed = Trainer(Classifier(), _args(tmp_path, max_steps=6), train_dataset=make_data(32), eval_dataset=make_data(16),
                      processing_class=Processor())
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-4"))
    assert resumed.state.global_step == 6
    assert processing_files(json.loads((tmp_path / "out" / "checkpoint-6" / "manifest.json").read_text())) == PROCESSOR_FILES

    (checkpoint / "templates" / "chat.jinja").write_text("changed")
    again = Trainer(Classifier(), _args(tmp_path), train_dataset=make_data(32), processing_class=Processor())
    with pytest.raises(CheckpointError, match="chat.jinja"):
        again.train(resume_from_checkpoint=str(checkpoint))


def test_without_a_processing_class_the_manifest_names_none(tmp_path):
    trainer = Trainer(Classifier(), _args(tmp_path, max_steps=2, eval_strategy="no"), train_dataset=make_data(32))
    trainer.train()
    manifest = json.loads((tmp_path / "out" / "checkpoint-2" / "manifest.json").read_text())
    assert processing_files(manifest) == [] and "processing_files" not in manifest
