"""A real transformers tokenizer as ``processing_class``: the output folder and every checkpoint
load whole with ``from_pretrained`` (model and tokenizer), and a resume reads such a checkpoint.

The tokenizer is built here with the ``tokenizers`` library; nothing is downloaded.
"""

from __future__ import annotations

import json

import pytest
import torch
from trainer_kit import make_args

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

pytestmark = pytest.mark.transformers

from treadle.checkpoint import processing_files  # noqa: E402
from treadle.data import DataCollatorWithPadding  # noqa: E402
from treadle.trainer import Trainer  # noqa: E402

WORDS = ["the", "cat", "dog", "is", "red", "blue"]


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]")


def rows(tokenizer, n=32):
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (6,), generator=g)) for _ in range(n)]
    return [{"input_ids": ids, "labels": ids} for ids in tokenizer(texts)["input_ids"]]


def test_the_tokenizer_is_saved_with_the_model_and_in_checkpoints(tmp_path):
    tokenizer = word_tokenizer()
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                     pad_token_id=0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    data = rows(tokenizer)
    args = make_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, optim="adamw_torch")
    trainer = Trainer(transformers.GPT2LMHeadModel(config), args, train_dataset=data, processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding())
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"

    for folder in (out, out / "checkpoint-2"):
        loaded = transformers.AutoTokenizer.from_pretrained(str(folder))
        assert loaded("the cat is red")["input_ids"] == tokenizer("the cat is red")["input_ids"]
        assert transformers.AutoModelForCausalLM.from_pretrained(str(folder)).config.n_embd == 16
    manifest = json.loads((out / "checkpoint-2" / "manifest.json").read_text())
    assert "tokenizer.json" in processing_files(manifest) and set(processing_files(manifest)) <= set(manifest["files"])

    torch.manual_seed(0)
    resumed = Trainer(transformers.GPT2LMHeadModel(config), make_args(tmp_path, max_steps=4, optim="adamw_torch"),
                      train_dataset=data, processing_class=tokenizer, data_collator=DataCollatorWithPadding())
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, trainer.model.state_dict()[name]), name  # the resume is exact


def test_without_a_collator_the_tokenizer_pads_ragged_batches_on_its_side(tmp_path):
    """The seeds' default: a tokenizer as processing_class means DataCollatorWithPadding(tokenizer)."""
    tokenizer = word_tokenizer()
    tokenizer.padding_side = "left"
    texts = ["the cat", "the dog is red", "blue", "the cat is blue"]
    data = [{"input_ids": ids, "labels": ids} for ids in tokenizer(texts)["input_ids"]]
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                     pad_token_id=0, bos_token_id=0, eos_token_id=0)
    trainer = Trainer(transformers.GPT2LMHeadModel(config), make_args(tmp_path, max_steps=2, per_device_train_batch_size=2),
                      train_dataset=data, processing_class=tokenizer)
    assert isinstance(trainer.data_collator, DataCollatorWithPadding)
    batch = trainer.data_collator(data[:2])
    assert batch["input_ids"].tolist() == [[0, 0, 2, 3], [2, 4, 5, 6]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 2, 3], [2, 4, 5, 6]]
    trainer.train()
    assert trainer.state.global_step == 2
