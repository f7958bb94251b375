"""A task for the ddp tests: variable-length token sequences, a model without dropout.

Without dropout the run's result depends only on the data each step sees, so 2 ranks x 8
samples and 1 process x 16 samples must end with the same weights. The sequences have different
lengths, so per-token outputs have a different width on each rank (evaluation must pad them to
gather), and the evaluation set (21 samples) leaves one rank a shorter last batch.

Environment knobs (read by the callback, for the fault test): ``DDP_TEST_FAIL_RANK`` and
``DDP_TEST_FAIL_STEP`` make that rank raise at the start of that step.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from treadle import TaskParts
from treadle.markers import hookimpl

VOCAB, CLASSES, MAX_LEN = 12, 4, 6


class Sequences(torch.utils.data.Dataset):
    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        lengths = torch.randint(1, MAX_LEN + 1, (size,), generator=generator)
        self.samples = [torch.randint(1, VOCAB, (int(n),), generator=generator) for n in lengths]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ids = self.samples[index]
        return {"input_ids": ids, "labels": int(ids.sum()) % CLASSES}


def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros(len(features), width, dtype=torch.long)
    for row, feature in enumerate(features):
        ids[row, : len(feature["input_ids"])] = feature["input_ids"]
    return {"input_ids": ids, "labels": torch.tensor([f["labels"] for f in features])}


class TokenClassifier(nn.Module):
    """Mean of per-token scores; the loss sums over samples and divides by ``num_items_in_batch``
    when the loop passes it (the path ``average_tokens_across_devices`` takes)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.hidden = nn.Linear(16, 16)
        self.score = nn.Linear(16, CLASSES)

    def forward(self, input_ids: torch.Tensor, labels: Optional[torch.Tensor] = None, num_items_in_batch: Any = None):
        mask = (input_ids != 0).unsqueeze(-1).float()
        token_logits = self.score(torch.tanh(self.hidden(self.embed(input_ids))))
        logits = (token_logits * mask).sum(1) / mask.sum(1)
        if labels is None:
            return {"logits": logits, "token_logits": token_logits}
        losses = nn.functional.cross_entropy(logits, labels, reduction="none")
        loss = losses.sum() / num_items_in_batch if num_items_in_batch is not None else losses.mean()
        if getattr(self, "poisoned", False):
            loss = loss * float("nan")
        return {"loss": loss, "logits": logits, "token_logits": token_logits}


class FailOnRank:
    """Raises (or, with ``DDP_TEST_FAIL_HOW=hang``, hangs) on one rank at the start of one step (the fault tests)."""

    @hookimpl
    def treadle_on_step_begin(self, state: Any) -> None:
        rank, step = os.environ.get("DDP_TEST_FAIL_RANK"), os.environ.get("DDP_TEST_FAIL_STEP")
        if rank == os.environ.get("RANK") and step is not None and state.global_step + 1 == int(step):
            if os.environ.get("DDP_TEST_FAIL_HOW") == "hang":
                time.sleep(600)  # alive but stuck: the others must give up after ddp_timeout
            raise RuntimeError(f"rank {rank} fails at step {step} on purpose")


class DisagreeOnRank:
    """Makes the ranks disagree: ``DDP_TEST_NAN_RANK`` gets a NaN loss at step ``DDP_TEST_NAN_STEP``,
    and ``DDP_TEST_STOP_RANK`` alone asks to stop after step ``DDP_TEST_STOP_STEP``."""

    @hookimpl
    def treadle_on_step_begin(self, trainer: Any, state: Any) -> None:
        rank, step = os.environ.get("RANK"), state.global_step + 1
        trainer.model.poisoned = rank == os.environ.get("DDP_TEST_NAN_RANK") and step == int(os.environ.get("DDP_TEST_NAN_STEP", 0))

    @hookimpl
    def treadle_on_step_end(self, state: Any, control: Any) -> None:
        if os.environ.get("RANK") == os.environ.get("DDP_TEST_STOP_RANK") and state.global_step == int(os.environ.get("DDP_TEST_STOP_STEP", 0)):
            control.should_training_stop = True


class RecordLogLevel:
    """Writes the ``treadle`` logger's level of this rank to ``$DDP_TEST_CACHE/level-<rank>`` (log_level_replica)."""

    @hookimpl
    def treadle_on_train_begin(self) -> None:
        level = logging.getLogger("treadle").getEffectiveLevel()
        with open(os.path.join(os.environ["DDP_TEST_CACHE"], f"level-{os.environ.get('RANK', '0')}"), "w") as f:
            f.write(logging.getLevelName(level))


def fingerprint(eval_pred: Any) -> dict[str, float]:
    """What evaluation gathered: rows, the padded width of the per-token outputs, and checksums
    that change if a row is lost, repeated, reordered or mis-padded."""
    logits, token_logits = eval_pred.predictions
    labels = np.asarray(eval_pred.label_ids)
    token_logits = np.asarray(token_logits)
    valid = token_logits != -100
    order = np.arange(1, len(labels) + 1)
    return {
        "rows": float(len(labels)),
        "width": float(token_logits.shape[1]),
        "valid_tokens": float(valid.all(axis=-1).sum()),
        "token_sum": float(np.where(valid, token_logits, 0.0).sum()),
        "order": float((order * np.asarray(logits).argmax(-1)).sum() + (order * labels).sum() * 1000),
    }


def build(args: Any) -> TaskParts:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = TokenClassifier()
    callbacks = [FailOnRank()] if os.environ.get("DDP_TEST_FAIL_RANK") else []
    if os.environ.get("DDP_TEST_NAN_RANK") or os.environ.get("DDP_TEST_STOP_RANK"):
        callbacks.append(DisagreeOnRank())
    if os.environ.get("DDP_TEST_CACHE"):
        callbacks.append(RecordLogLevel())
    return TaskParts(
        model=model, train_dataset=Sequences(64, args.seed), eval_dataset=Sequences(21, args.seed + 1),
        data_collator=collate, callbacks=callbacks or None, compute_metrics=fingerprint,
    )


def build_with_shared_cache(args: Any) -> TaskParts:
    """``build``, after a "preprocessing" step that the main process does first (``main_process_first``):
    the other ranks find its file already written, or fail."""
    cache = os.environ["DDP_TEST_CACHE"]
    with args.main_process_first(desc="the test cache"):
        marker = os.path.join(cache, "made-by-main")
        if os.environ.get("LOCAL_RANK", "0") == "0":
            time.sleep(0.5)  # a replica let in early would look before this file exists
            with open(marker, "w") as f:
                f.write(os.environ.get("RANK", "0"))
        elif not os.path.exists(marker):
            raise RuntimeError("main_process_first let a replica in before the main process finished")
    return build(args)


class Rows(torch.utils.data.Dataset):
    """Token rows of 2-12 tokens for a causal LM: the ranks of one step hold different numbers of targets."""

    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        lengths = torch.randint(2, 13, (size,), generator=generator)
        self.samples = [torch.randint(1, VOCAB, (int(n),), generator=generator) for n in lengths]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_ids": self.samples[index], "labels": self.samples[index]}


def pad_rows(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros(len(features), width, dtype=torch.long)
    labels = torch.full((len(features), width), -100, dtype=torch.long)
    for row, feature in enumerate(features):
        ids[row, : len(feature["input_ids"])] = feature["input_ids"]
        labels[row, : len(feature["labels"])] = feature["labels"]
    return {"input_ids": ids, "attention_mask": (labels != -100).long(), "labels": labels}


def causal_lm(args: Any) -> TaskParts:
    """A tiny transformers GPT-2 without dropout: its forward takes **kwargs, so it is given num_items_in_batch."""
    import transformers

    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = transformers.GPT2LMHeadModel(config)
    return TaskParts(model=model, train_dataset=Rows(64, args.seed), data_collator=pad_rows)
