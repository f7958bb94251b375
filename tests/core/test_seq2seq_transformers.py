"""Seq2SeqTrainer with a transformers encoder-decoder (tiny T5 from a config; nothing downloaded),
written the way transformers' summarization / translation examples use it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.transformers

# the examples' imports, with `transformers` changed to `treadle` for the trainer classes
from treadle import Seq2SeqTrainer, Seq2SeqTrainingArguments  # noqa: E402

VOCAB = 24


def pairs(n: int, seed: int = 0) -> list[dict]:
    """Copy task: the target is the source; sources of varied length (ids 3.., 0 pad, 1 eos)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(3, VOCAB, (2 + i % 3,), generator=g).tolist() + [1]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)})
    return rows


def tiny_tokenizer():
    """A word-level tokenizer over w3..w23 built in the test (the `tokenizers` library)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_t5():
    config = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    return transformers.T5ForConditionalGeneration(config)


def test_the_examples_script_shape_runs_with_predict_with_generate(tmp_path):
    model = tiny_t5()
    tokenizer = tiny_tokenizer()
    collator = transformers.DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    seen = {}

    def compute_metrics(eval_preds):
        preds, labels = eval_preds
        preds = np.where(preds != -100, preds, tokenizer.pad_token_id)  # what the examples do before decoding
        labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
        decoded_preds = tokenizer.batch_decode(preds, skip_special_tokens=True)
        decoded_labels = tokenizer.batch_decode(labels, skip_special_tokens=True)
        seen["preds"] = preds
        return {"exact_match": float(np.mean([p == t for p, t in zip(decoded_preds, decoded_labels)]))}

    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, per_device_eval_batch_size=4, num_train_epochs=3,
        learning_rate=5e-3, predict_with_generate=True, generation_max_length=6, generation_num_beams=2,
        report_to="none", disable_tqdm=True, save_strategy="no", eval_strategy="epoch", use_cpu=True,
    )
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=pairs(64), eval_dataset=pairs(10, seed=1),
                             data_collator=collator, processing_class=tokenizer, compute_metrics=compute_metrics)
    trainer.train()
    metrics = trainer.evaluate(max_length=6, num_beams=2, metric_key_prefix="eval")
    assert "eval_exact_match" in metrics and "eval_loss" in metrics
    assert seen["preds"].shape == (10, 6)
    output = trainer.predict(pairs(5, seed=2), max_new_tokens=3)
    assert output.predictions.shape[0] == 5 and output.predictions.shape[1] <= 4  # decoder start + 3 new
    trainer.save_model()
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path))
    assert reloaded.config.d_model == 32


def test_a_generation_config_object_is_given_to_the_model(tmp_path):
    model = tiny_t5()
    config = transformers.GenerationConfig(max_length=4, num_beams=1, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), predict_with_generate=True, generation_config=config,
                                    report_to="none", disable_tqdm=True, use_cpu=True)
    collator = transformers.DataCollatorForSeq2Seq(tiny_tokenizer(), model=model, label_pad_token_id=-100)
    trainer = Seq2SeqTrainer(model=model, args=args, data_collator=collator, compute_metrics=lambda p: {})
    assert model.generation_config.max_length == 4
    output = trainer.predict(pairs(4))
    assert output.predictions.shape[1] <= 4
    assert args.to_dict()["generation_config"]["max_length"] == 4
