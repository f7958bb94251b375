"""A task may hand over its tokenizer (saved next to the model) and the Trainer class to run."""

from __future__ import annotations

import json

import pytest
from trainer_kit import Classifier, make_data

from treadle import Seq2SeqTrainer, TaskParts, Trainer, TrainingArguments
from treadle.errors import UsageError
from treadle.run import make_trainer


class Processor:
    """The part of a tokenizer's interface treadle uses: save_pretrained(directory)."""

    def save_pretrained(self, directory):
        with open(f"{directory}/tokenizer_config.json", "w") as fh:
            json.dump({"kind": "test"}, fh)


def test_the_processing_class_is_saved_with_the_model_and_in_checkpoints(tmp_path):
    args = TrainingArguments(str(tmp_path), report_to="none", disable_tqdm=True, max_steps=2, save_strategy="steps",
                             save_steps=2, per_device_train_batch_size=8)
    trainer = make_trainer(args, TaskParts(model=Classifier(), train_dataset=make_data(32), processing_class=Processor()))
    trainer.train()
    trainer.save_model()
    assert json.loads((tmp_path / "tokenizer_config.json").read_text()) == {"kind": "test"}
    assert (tmp_path / "checkpoint-2" / "tokenizer_config.json").is_file()
    manifest = json.loads((tmp_path / "checkpoint-2" / "manifest.json").read_text())
    assert "tokenizer_config.json" in manifest["files"]  # covered by the checksums like every other file


def test_the_task_chooses_the_trainer_class(tmp_path):
    args = TrainingArguments(str(tmp_path), report_to="none")
    assert type(make_trainer(args, TaskParts(model=Classifier(), trainer_class=Seq2SeqTrainer))) is Seq2SeqTrainer
    assert type(make_trainer(args, TaskParts(model=Classifier()))) is Trainer
    with pytest.raises(UsageError, match="trainer_class must be treadle.Trainer"):
        make_trainer(args, TaskParts(model=Classifier(), trainer_class=dict))
