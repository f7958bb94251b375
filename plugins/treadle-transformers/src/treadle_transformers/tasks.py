"""The three tasks: data files -> tokenized datasets, a transformers model, metrics.

Each is a treadle task function ``(args) -> TaskParts``; ``treadle train --task NAME`` calls it.
Data files are read with ``datasets`` (its cache keeps the tokenized splits, so a second run
skips tokenizing); the model comes from ``--model_name_or_path``: weights when the directory has
them, otherwise a fresh model from its ``config.json``. The tokenizer travels with the model
(``processing_class``), so the output directory loads with ``from_pretrained``.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np

from treadle import TaskParts
from treadle.errors import UsageError
from treadle.markers import hookimpl

logger = logging.getLogger("treadle.transformers")

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".txt": "text", ".text": "text", ".parquet": "parquet"}


# ------------------------------------------------------------------------------ shared pieces


def _load_files(args: Any) -> Any:
    """A ``DatasetDict`` with the splits whose files were given (train / validation / test)."""
    import datasets

    files = {split: path for split, path in (("train", args.transformers_train_file),
                                             ("validation", args.transformers_validation_file),
                                             ("test", args.transformers_test_file)) if path}
    kinds = set()
    for split, path in files.items():
        if not os.path.isfile(path):
            raise UsageError(f"--{split}_file {path}: no such file")
        kind = FORMATS.get(os.path.splitext(path)[1].lower())
        if kind is None:
            raise UsageError(f"{path}: unknown data format; use one of {', '.join(sorted(FORMATS))}")
        kinds.add(kind)
    if len(kinds) > 1:
        raise UsageError(f"the data files mix formats ({', '.join(sorted(kinds))}); give every split in one format")
    (kind,) = kinds
    options = {"delimiter": "\t"} if kind == "csv" and any(p.endswith(".tsv") for p in files.values()) else {}
    try:
        return datasets.load_dataset(kind, data_files=files, **options)
    except Exception as exc:  # datasets raises many types for a malformed file
        raise UsageError(f"could not read the data files ({type(exc).__name__}: {exc})") from None


def _model_dir(args: Any) -> str:
    return args.transformers_model_name_or_path


def _has_weights(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, name)) for name in WEIGHT_FILES)


def _tokenizer(args: Any) -> Any:
    from transformers import AutoTokenizer

    where = args.transformers_tokenizer_name or _model_dir(args)
    try:
        return AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as exc:
        raise UsageError(f"no tokenizer in {where} ({exc}); save one there or pass --tokenizer_name DIR") from None


def _config(args: Any, **overrides: Any) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(_model_dir(args), **overrides)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--model_name_or_path {_model_dir(args)}: no model config there ({exc})") from None


def _model(args: Any, auto_class: Any, config: Any) -> Any:
    """Pretrained weights when the directory has them, else a new model from the config."""
    path = _model_dir(args)
    if _has_weights(path) or not os.path.isdir(path):  # not a directory: a hub id, downloaded by transformers
        return auto_class.from_pretrained(path, config=config)
    logger.info("%s has no weights: starting from a freshly initialised model", path)
    return auto_class.from_config(config)


def _map(args: Any, dataset: Any, function: Any, description: str, **kwargs: Any) -> Any:
    return dataset.map(
        function, batched=True, num_proc=args.transformers_preprocessing_num_workers,
        load_from_cache_file=not args.transformers_overwrite_cache, desc=description, **kwargs,
    )


def _text_column(args: Any, columns: list[str], avoid: tuple[str, ...] = ()) -> str:
    if args.transformers_text_column:
        if args.transformers_text_column not in columns:
            raise UsageError(f"--text_column {args.transformers_text_column}: the data has columns {', '.join(columns)}")
        return args.transformers_text_column
    for name in ("text", "sentence", "content"):
        if name in columns:
            return name
    candidates = [c for c in columns if c not in avoid]
    if not candidates:
        raise UsageError(f"no text column among {', '.join(columns)}; pass --text_column")
    return candidates[0]


def _splits(tokenized: Any) -> dict[str, Any]:
    return {"train_dataset": tokenized.get("train"), "eval_dataset": tokenized.get("validation"),
            "test_dataset": tokenized.get("test")}


# ------------------------------------------------------------------------------ text classification


def text_classification(args: Any) -> TaskParts:
    """``--task text-classification``: accuracy and F1 (macro) as metrics."""
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    raw = _load_files(args)
    first = next(iter(raw.values()))
    label = args.transformers_label_column
    if label not in first.column_names:
        raise UsageError(f"--label_column {label}: the data has columns {', '.join(first.column_names)}")
    text = _text_column(args, first.column_names, avoid=(label,))
    pair = args.transformers_text_pair_column
    labels = sorted({value for split in raw.values() if label in split.column_names for value in split[label]}, key=str)
    label_to_id = {value: i for i, value in enumerate(labels)}
    tokenizer = _tokenizer(args)
    config = _config(args, num_labels=len(labels), id2label={i: str(v) for i, v in enumerate(labels)},
                     label2id={str(v): i for i, v in enumerate(labels)})

    def tokenize(batch: dict) -> dict:
        texts = (batch[text],) if pair is None else (batch[text], batch[pair])
        encoded = tokenizer(*texts, truncation=True, max_length=args.transformers_max_seq_length)
        if label in batch:
            encoded["labels"] = [label_to_id[value] for value in batch[label]]
        return encoded

    tokenized = _map(args, raw, tokenize, "tokenizing", remove_columns=first.column_names)
    return TaskParts(
        model=_model(args, AutoModelForSequenceClassification, config), **_splits(tokenized),
        data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=classification_metrics,
        processing_class=tokenizer,
    )


def classification_metrics(prediction: Any) -> dict[str, float]:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    predicted, labels = np.asarray(logits).argmax(-1), np.asarray(prediction.label_ids)
    scores = []
    for cls in np.unique(np.concatenate([labels, predicted])):
        tp = np.sum((predicted == cls) & (labels == cls))
        precision = tp / max(np.sum(predicted == cls), 1)
        recall = tp / max(np.sum(labels == cls), 1)
        scores.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return {"accuracy": float((predicted == labels).mean()), "f1": float(np.mean(scores))}


# ------------------------------------------------------------------------------ causal language model


def causal_lm(args: Any) -> TaskParts:
    """``--task causal-lm``: texts concatenated and cut into ``--block_size`` blocks; perplexity."""
    from transformers import AutoModelForCausalLM, default_data_collator

    raw = _load_files(args)
    first = next(iter(raw.values()))
    text = _text_column(args, first.column_names)
    tokenizer = _tokenizer(args)
    block = args.transformers_block_size

    def tokenize(batch: dict) -> dict:
        return tokenizer(batch[text])

    def blocks(batch: dict) -> dict:
        joined = {k: sum(batch[k], []) for k in batch}
        total = (len(joined["input_ids"]) // block) * block
        result = {k: [v[i: i + block] for i in range(0, total, block)] for k, v in joined.items()}
        result["labels"] = [list(ids) for ids in result["input_ids"]]
        return result

    tokenized = _map(args, raw, tokenize, "tokenizing", remove_columns=first.column_names)
    grouped = _map(args, tokenized, blocks, f"grouping in blocks of {block}")
    for split, data in grouped.items():
        if len(data) == 0:
            raise UsageError(f"the {split} data has fewer than --block_size {block} tokens in all; lower --block_size")
    model = _model(args, AutoModelForCausalLM, _config(args))
    return TaskParts(
        model=model, **_splits(grouped), data_collator=default_data_collator, processing_class=tokenizer,
        compute_metrics=next_token_accuracy, preprocess_logits_for_metrics=_argmax_logits, callbacks=[Perplexity()],
    )


def _argmax_logits(logits: Any, labels: Any) -> Any:
    """Keep only the predicted ids (the logits of a whole vocabulary do not fit in memory)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def next_token_accuracy(prediction: Any) -> dict[str, float]:
    predicted, labels = np.asarray(prediction.predictions)[:, :-1], np.asarray(prediction.label_ids)[:, 1:]
    mask = labels != -100
    return {"accuracy": float((predicted[mask] == labels[mask]).mean()) if mask.any() else 0.0}


class Perplexity:
    """``<prefix>_perplexity`` = exp(loss) for every evaluation with a loss.

    Derived before the evaluation is logged (``treadle_derive_metrics``), so the console, the
    reporters and ``eval_results.json`` all show it next to the loss.
    """

    @hookimpl
    def treadle_derive_metrics(self, metrics: Any, metric_key_prefix: str) -> dict[str, float] | None:
        loss = metrics.get(f"{metric_key_prefix}_loss")
        if loss is None:
            return None
        try:
            return {f"{metric_key_prefix}_perplexity": math.exp(loss)}
        except OverflowError:
            return {f"{metric_key_prefix}_perplexity": float("inf")}


# ------------------------------------------------------------------------------ seq2seq


def seq2seq(args: Any) -> TaskParts:
    """``--task seq2seq``: source -> target columns, Seq2SeqTrainer, exact match of generated text."""
    from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq

    from treadle.seq2seq import Seq2SeqTrainer

    raw = _load_files(args)
    first = next(iter(raw.values()))
    source, target = args.transformers_source_column, args.transformers_target_column
    for option, column in (("--source_column", source), ("--target_column", target)):
        if column not in first.column_names:
            raise UsageError(f"{option} {column}: the data has columns {', '.join(first.column_names)}")
    tokenizer = _tokenizer(args)
    prefix = args.transformers_source_prefix or ""

    def tokenize(batch: dict) -> dict:
        encoded = tokenizer([prefix + s for s in batch[source]], truncation=True, max_length=args.transformers_max_seq_length)
        if target in batch:
            targets = tokenizer(text_target=batch[target], truncation=True, max_length=args.transformers_max_target_length)
            encoded["labels"] = targets["input_ids"]
        return encoded

    tokenized = _map(args, raw, tokenize, "tokenizing", remove_columns=first.column_names)
    model = _model(args, AutoModelForSeq2SeqLM, _config(args))
    return TaskParts(
        model=model, **_splits(tokenized), processing_class=tokenizer, trainer_class=Seq2SeqTrainer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        compute_metrics=_exact_match(tokenizer),
    )


def _exact_match(tokenizer: Any):
    def metrics(prediction: Any) -> dict[str, float]:
        predictions = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predictions = np.asarray(predictions)
        if predictions.ndim == 3:  # logits (evaluation without --predict_with_generate)
            predictions = predictions.argmax(-1)
        pad = tokenizer.pad_token_id or 0
        decoded = tokenizer.batch_decode(np.where(predictions != -100, predictions, pad), skip_special_tokens=True)
        labels = np.asarray(prediction.label_ids)
        expected = tokenizer.batch_decode(np.where(labels != -100, labels, pad), skip_special_tokens=True)
        return {"exact_match": float(np.mean([a.strip() == b.strip() for a, b in zip(decoded, expected)]))}

    return metrics

