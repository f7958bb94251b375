"""A Hugging Face transformers model trains unchanged (skipped when transformers is not installed).

The models are built from tiny configs: nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from trainer_kit import make_args

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.transformers

from treadle.data import DataCollatorWithPadding  # noqa: E402
from treadle.trainer import Trainer  # noqa: E402

VOCAB = 40


def sentences(n: int, seed: int = 0) -> list[dict]:
    """Token sequences of varying length; the class is whether token 1 occurs."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(3, 10, (1,), generator=g))
        ids = torch.randint(2, VOCAB, (length,), generator=g)
        label = int(torch.rand(1, generator=g) < 0.5)
        if label:
            ids[int(torch.randint(0, length, (1,), generator=g))] = 1
        rows.append({"input_ids": ids.tolist(), "label": label, "text": "unused column"})
    return rows


def test_a_sequence_classifier_trains_and_evaluates(tmp_path):
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16, num_labels=2,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    train, test = sentences(128), sentences(64, seed=1)

    def accuracy(p):
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    args = make_args(tmp_path, num_train_epochs=4, learning_rate=3e-3, optim="adamw_torch", per_device_train_batch_size=16)
    trainer = Trainer(model, args, train_dataset=train, eval_dataset=test, data_collator=DataCollatorWithPadding(),
                      compute_metrics=accuracy)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert trainer.label_names == ["labels"]
    assert after["eval_loss"] < before["eval_loss"]
    assert after["eval_accuracy"] > 0.6


def test_a_causal_language_model_trains_with_gradient_accumulation(tmp_path):
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0, pad_token_id=0
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    rows = [{"input_ids": r["input_ids"], "labels": r["input_ids"]} for r in sentences(64)]
    args = make_args(tmp_path, num_train_epochs=3, learning_rate=3e-3, optim="adamw_torch", per_device_train_batch_size=8,
                     gradient_accumulation_steps=2, logging_strategy="epoch")
    trainer = Trainer(model, args, train_dataset=rows, eval_dataset=rows, data_collator=DataCollatorWithPadding())
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before
    out = trainer.predict(rows[:8])
    assert isinstance(out.predictions, np.ndarray) and out.predictions.shape[:1] == (8,)
    assert out.predictions.shape[-1] == VOCAB  # logits only: the cache is not gathered


def _causal_lm() -> "transformers.GPT2LMHeadModel":
    """GPT-2 names no loss in its class name (loss_type None): transformers falls back to the causal LM loss.
    Without dropout, so a training step computes the loss an evaluation of the same weights does."""
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def _shifted_mean_cross_entropy(model, rows, smoothing: float = 0.0) -> float:
    """The loss of one batch of every row: cross entropy of position t against token t + 1, over all rows' targets."""
    total, targets = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            logits = model(input_ids=ids).logits[0, :-1].float()
            total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum", label_smoothing=smoothing))
            targets += ids.shape[1] - 1
    return total / targets


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_a_causal_lm_step_averages_over_its_shifted_targets_like_transformers(tmp_path, smoothing):
    """transformers' Trainer counts num_items_in_batch over labels[..., 1:] for a causal LM (its loss
    shifts the labels), and smooths labels after the same shift. One step of two accumulated
    micro-batches of different lengths holds every row, so its logged loss is that of one batch."""
    rows = [{"input_ids": r["input_ids"], "labels": r["input_ids"]} for r in sentences(8)]
    model = _causal_lm()
    expected = _shifted_mean_cross_entropy(model, rows, smoothing)
    args = make_args(tmp_path, max_steps=1, learning_rate=1e-3, optim="adamw_torch", per_device_train_batch_size=4,
                     gradient_accumulation_steps=2, logging_strategy="steps", logging_steps=1,
                     label_smoothing_factor=smoothing)
    trainer = Trainer(model, args, train_dataset=rows, data_collator=DataCollatorWithPadding())
    assert trainer.model_accepts_loss_kwargs  # a transformers forward taking **kwargs gets num_items_in_batch
    trainer.train()
    logged = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    assert logged == pytest.approx(expected, rel=1e-4)
