"""Seq2SeqTrainer without transformers: any model with a generate() method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from treadle import Seq2SeqTrainer, Seq2SeqTrainingArguments
from treadle.errors import UsageError

VOCAB = 12


class Rows(torch.utils.data.Dataset):
    """Source sequences of varied length; the target is the source reversed."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            length = 3 + i % 4
            ids = torch.randint(2, VOCAB, (length,), generator=g)
            self.items.append({"input_ids": ids, "labels": ids.flip(0)})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def pad_collate(rows):
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = r["input_ids"]
        labels[i, : len(r["labels"])] = r["labels"]
    return {"input_ids": ids, "labels": labels}


class Reverser(nn.Module):
    """Predicts each target token from the whole source (a bag of embeddings + position)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 16)
        self.position = nn.Embedding(8, 16)
        self.out = nn.Linear(16, VOCAB)
        self.generate_calls: list[dict] = []
        self.config = type("Config", (), {"pad_token_id": 0})()

    def logits(self, input_ids, length):
        context = self.embed(input_ids).mean(dim=1, keepdim=True)
        positions = self.position(torch.arange(length)).unsqueeze(0)
        return self.out(context + positions)

    def forward(self, input_ids, labels=None):
        logits = self.logits(input_ids, input_ids.shape[1])
        if labels is None:
            return {"logits": logits}
        return {"loss": F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100), "logits": logits}

    def generate(self, input_ids, max_length=None, num_beams=1, **kwargs):
        self.generate_calls.append({"max_length": max_length, "num_beams": num_beams, **kwargs})
        length = input_ids.shape[1] if max_length is None else min(max_length, input_ids.shape[1])
        return self.logits(input_ids, length).argmax(-1)


def _args(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=4, report_to="none",
                  disable_tqdm=True, predict_with_generate=True, max_steps=3)
    values.update(overrides)
    return Seq2SeqTrainingArguments(**values)


def test_predict_with_generate_hands_generated_ids_to_compute_metrics(tmp_path):
    seen = {}

    def metrics(prediction):
        seen["predictions"], seen["labels"] = prediction.predictions, prediction.label_ids
        width = min(prediction.predictions.shape[1], prediction.label_ids.shape[1])
        same = prediction.predictions[:, :width] == prediction.label_ids[:, :width]
        return {"exact": float(same.all(axis=1).mean())}

    model = Reverser()
    trainer = Seq2SeqTrainer(model=model, args=_args(tmp_path, generation_num_beams=3), data_collator=pad_collate,
                             train_dataset=Rows(16), eval_dataset=Rows(10, seed=1), compute_metrics=metrics)
    result = trainer.evaluate()
    assert "eval_exact" in result and "eval_loss" in result
    predictions = seen["predictions"]
    assert predictions.dtype.kind == "i" and predictions.shape == (10, 6)
    # the batches generated 6, 6 and 4 tokens: one array, the short batch padded with -100
    assert (predictions[8:, 4:] == -100).all() and (predictions[:8] != -100).all()
    assert {c["num_beams"] for c in model.generate_calls} == {3}  # generation_num_beams

    model.generate_calls.clear()
    trainer.evaluate(max_length=5, num_beams=1)
    assert {c["max_length"] for c in model.generate_calls} == {5} and {c["num_beams"] for c in model.generate_calls} == {1}
    predictions = seen["predictions"]
    assert predictions.shape == (10, 5)
    assert (predictions[8:, 4] == 0).all()  # a batch shorter than max_length: padded with the model's pad id


def test_generation_defaults_and_a_dict_generation_config(tmp_path):
    model = Reverser()
    args = _args(tmp_path, generation_max_length=4, generation_config={"temperature": 0.5})
    trainer = Seq2SeqTrainer(model=model, args=args, data_collator=pad_collate, eval_dataset=Rows(6))
    output = trainer.predict(Rows(6))
    assert output.predictions.shape == (6, 4)
    assert model.generate_calls[-1] == {"max_length": 4, "num_beams": 1, "temperature": 0.5}
    assert output.label_ids.shape[0] == 6


def test_without_predict_with_generate_it_is_a_plain_trainer(tmp_path):
    model = Reverser()
    trainer = Seq2SeqTrainer(model=model, args=_args(tmp_path, predict_with_generate=False), data_collator=pad_collate,
                             eval_dataset=Rows(6))
    output = trainer.predict(Rows(6))
    assert output.predictions.ndim == 3  # logits
    assert not model.generate_calls


def test_a_model_without_generate_is_a_clear_error(tmp_path):
    class NoGenerate(Reverser):
        generate = None

    trainer = Seq2SeqTrainer(model=NoGenerate(), args=_args(tmp_path), data_collator=pad_collate, eval_dataset=Rows(4),
                             compute_metrics=lambda p: {})
    with pytest.raises(UsageError, match="has no generate"):
        trainer.evaluate()


def test_training_with_the_sortish_sampler_groups_lengths_and_trains(tmp_path):
    trainer = Seq2SeqTrainer(model=Reverser(), args=_args(tmp_path, sortish_sampler=True, max_steps=8),
                             data_collator=pad_collate, train_dataset=Rows(32))
    sampler = trainer._get_train_sampler(trainer.train_dataset)
    assert type(sampler).__name__ == "LengthGroupedSampler"
    result = trainer.train()
    assert result.global_step == 8 and np.isfinite(result.training_loss)


def test_a_generation_config_file(tmp_path):
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "generation_config.json").write_text('{"num_beams": 2, "max_length": 3}')
    model = Reverser()
    trainer = Seq2SeqTrainer(model=model, args=_args(tmp_path, generation_config=str(tmp_path / "gen")),
                             data_collator=pad_collate, eval_dataset=Rows(4), compute_metrics=lambda p: {})
    trainer.evaluate()
    assert model.generate_calls[-1] == {"max_length": 3, "num_beams": 2}


def test_seq2seq_arguments_serialise(tmp_path):
    args = _args(tmp_path, generation_config={"num_beams": 2})
    assert args.to_dict()["generation_config"] == {"num_beams": 2}
    assert '"predict_with_generate": true' in args.to_json_string()
