"""With a tokenizer as ``processing_class`` and no ``data_collator``, batches are padded (the seeds' default).

transformers' Trainer picks ``DataCollatorWithPadding(processing_class)`` when the processing
class is a tokenizer or a sequence feature extractor, and ``default_data_collator`` otherwise.
The stand-in tokenizer below has the parts of a tokenizer the collator relies on: ``pad`` (here
left padding with its own pad id, as a decoder-only model's tokenizer often is), ``pad_token_id``
and ``padding_side``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from treadle import Trainer, TrainingArguments
from treadle.data import DataCollatorWithPadding, default_data_collator
from treadle.errors import UsageError


class LeftPadder:
    """Pads ``input_ids`` on the left with id 7 and writes the mask, like a tokenizer's ``pad``."""

    pad_token_id = 7
    padding_side = "left"

    def __init__(self) -> None:
        self.calls = 0

    def pad(self, features, padding=True, pad_to_multiple_of=None, return_tensors="pt"):
        self.calls += 1
        assert "labels" not in features[0]  # labels are the collator's to pad
        width = max(len(f["input_ids"]) for f in features)
        ids = [[self.pad_token_id] * (width - len(f["input_ids"])) + list(f["input_ids"]) for f in features]
        mask = [[0] * (width - len(f["input_ids"])) + [1] * len(f["input_ids"]) for f in features]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}


class NoPadToken(LeftPadder):
    pad_token_id = None

    def pad(self, features, **kwargs):
        raise ValueError("Asking to pad but the tokenizer does not have a padding token.")


class Counter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(8, 4)
        self.head = nn.Linear(4, 8)
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, input_ids, attention_mask=None, labels=None):
        self.shapes.append(tuple(input_ids.shape))
        logits = self.head(self.embed(input_ids))
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return {"loss": loss, "logits": logits}


ROWS = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4], "labels": [4]}] * 4


def test_a_tokenizer_as_processing_class_pads_ragged_batches(tmp_path):
    tokenizer = LeftPadder()
    model = Counter()
    args = TrainingArguments(str(tmp_path), max_steps=2, per_device_train_batch_size=2, report_to="none",
                             save_strategy="no", disable_tqdm=True, use_cpu=True)
    trainer = Trainer(model, args, train_dataset=ROWS, processing_class=tokenizer)
    assert isinstance(trainer.data_collator, DataCollatorWithPadding) and trainer.data_collator.tokenizer is tokenizer
    trainer.train()
    assert tokenizer.calls >= 2 and all(shape[1] == 3 for shape in model.shapes)


def test_without_a_padding_processing_class_the_default_collator_stays(tmp_path):
    args = TrainingArguments(str(tmp_path), report_to="none", use_cpu=True)
    assert Trainer(Counter(), args, processing_class=object()).data_collator is default_data_collator
    assert Trainer(Counter(), args).data_collator is default_data_collator


def test_labels_are_padded_on_the_tokenizers_side():
    batch = DataCollatorWithPadding(LeftPadder())(ROWS[:2])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [7, 7, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["labels"].tolist() == [[1, 2, 3], [-100, -100, 4]]


def test_padding_here_follows_padding_side_and_the_old_signature_still_works():
    left = DataCollatorWithPadding(pad_token_id=9, padding_side="left")(ROWS[:2])
    assert left["input_ids"].tolist() == [[1, 2, 3], [9, 9, 4]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert DataCollatorWithPadding(5)(ROWS[:2])["input_ids"].tolist() == [[1, 2, 3], [4, 5, 5]]  # pad id first, as before
    with pytest.raises(UsageError, match="padding_side must be"):
        DataCollatorWithPadding(padding_side="middle")


def test_fixed_length_batches_need_no_pad_token_and_a_missing_one_is_explained():
    same = [{"input_ids": [1, 2], "labels": [1, 2]}] * 2
    assert DataCollatorWithPadding(NoPadToken())(same)["input_ids"].tolist() == [[1, 2], [1, 2]]
    with pytest.raises(UsageError, match=r"NoPadToken.pad could not pad the batch .*pad_token = tokenizer.eos_token"):
        DataCollatorWithPadding(NoPadToken())(ROWS[:2])
