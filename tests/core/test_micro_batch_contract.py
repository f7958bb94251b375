"""``Strategy.micro_batch``: a strategy that splits each sequence over processes, on two real gloo processes.

The strategy below gives both processes the same batches (``shard_info`` = one replica) and hands
each one half of every sequence (what context / sequence parallel strategies do), counting the
label tokens of each half. The model is position-wise, so the halves need no attention between
them and the split run must end with exactly the weights of one process training on whole
sequences. The valid labels sit unevenly between the halves, so a plain mean of the two halves'
means would differ: the loop must weigh each half by its share of the tokens (a loss that is a
mean over the half), or by the number of splits (a loss normalised by ``num_items_in_batch``).
Tokens seen and the total batch size must count each batch once, not once per process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import traceback

import pytest
import torch
import torch.distributed as dist
from test_ported_multiprocess_tokens import GlooDDP
from torch import nn
from torch.nn import functional as F
from treadle import Trainer
from treadle.args import TrainingArguments
from treadle.components import MicroBatch

WORLD, LENGTH, VOCAB, SAMPLES = 2, 16, 7, 8


class SplitSequences(GlooDDP):
    """DDP over the test's gloo group, every process on the same batch, each on its half of the sequence."""

    name = "split-sequences"

    def shard_info(self) -> tuple[int, int]:
        return 1, 0  # one data-parallel replica: the two processes share each batch

    @contextlib.contextmanager
    def micro_batch(self, inputs):
        half = inputs["input_ids"].shape[1] // WORLD
        window = slice(self.global_rank * half, (self.global_rank + 1) * half)
        part = {key: value[:, window] for key, value in inputs.items()}
        yield MicroBatch(
            part, splits=WORLD, local_items=int((part["labels"] != -100).sum()),
            total_items=int((inputs["labels"] != -100).sum()),
        )


class MeanLoss(nn.Module):
    """Position-wise: each token's logits depend on that token alone; loss = mean over valid labels."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.embed = nn.Embedding(VOCAB, 4)
            self.head = nn.Linear(4, VOCAB)

    def losses(self, input_ids, labels):
        logits = self.head(torch.tanh(self.embed(input_ids)))
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"), logits

    def forward(self, input_ids, labels=None):
        total, logits = self.losses(input_ids, labels)
        return {"loss": total / (labels != -100).sum(), "logits": logits}


class ItemsLoss(MeanLoss):
    """The same model, its loss normalised by the accumulated batch's ``num_items_in_batch``."""

    def forward(self, input_ids, labels=None, num_items_in_batch=None):
        total, logits = self.losses(input_ids, labels)
        return {"loss": total / (num_items_in_batch if num_items_in_batch is not None else (labels != -100).sum()),
                "logits": logits}


MODELS = {"mean": MeanLoss, "items": ItemsLoss}


def samples() -> list[dict[str, torch.Tensor]]:
    """Valid labels only in the first quarter of some rows: the first half holds most of them."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for index in range(SAMPLES):
        ids = torch.randint(0, VOCAB, (LENGTH,), generator=g)
        labels = torch.randint(0, VOCAB, (LENGTH,), generator=g)
        labels[(LENGTH // 4 if index % 2 else LENGTH - 1):] = -100
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def _args(output_dir: str, strategy: str | None, accumulation: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir, max_steps=2, per_device_train_batch_size=SAMPLES // (2 * accumulation),
        gradient_accumulation_steps=accumulation, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant",
        max_grad_norm=0, report_to="none", save_strategy="no", logging_steps=1,
        include_num_input_tokens_seen="all", disable_tqdm=True, seed=0,
        **({"strategy": strategy} if strategy else {}),
    )


def _train(model: str, output_dir: str, strategy: str | None, accumulation: int) -> dict:
    trainer = Trainer(MODELS[model](), _args(output_dir, strategy, accumulation), train_dataset=samples())
    trainer.train()
    return {
        "weights": {k: v.tolist() for k, v in trainer.model.state_dict().items()},
        "tokens": trainer.state.num_input_tokens_seen,
        "total_batch": trainer.get_total_train_batch_size(),
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
    }


def _worker(rank: int, init_file: str, output_dir: str, model: str, accumulation: int, results, errors) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
        results.put((rank, _train(model, output_dir, "test_micro_batch_contract:SplitSequences", accumulation)))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        errors.put(f"rank {rank}:\n{traceback.format_exc()}")
        raise


@pytest.mark.parametrize(("model", "accumulation"), [("mean", 1), ("mean", 2), ("items", 2)])
def test_split_sequences_train_like_whole_ones(tmp_path, model, accumulation):
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "treadle.trainer"])
    results, errors = ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(r, str(tmp_path / "init"), str(tmp_path / "out"), model, accumulation, results, errors))
        for r in range(WORLD)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert errors.empty(), errors.get()
    assert [p.exitcode for p in procs] == [0] * WORLD
    got = dict(results.get() for _ in range(WORLD))

    whole = _train(model, str(tmp_path / "one"), None, accumulation)
    for rank in range(WORLD):
        for name, value in whole["weights"].items():
            torch.testing.assert_close(torch.tensor(got[rank]["weights"][name]), torch.tensor(value), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got[rank]["losses"], whole["losses"], atol=1e-6, rtol=1e-5)
        assert got[rank]["tokens"] == whole["tokens"] == 2 * SAMPLES * LENGTH // 2  # two steps of half the data
        assert got[rank]["total_batch"] == whole["total_batch"] == SAMPLES // 2


def test_the_default_micro_batch_is_the_inputs_unchanged():
    from treadle.builtin.single import SingleDeviceStrategy

    strategy = SingleDeviceStrategy(TrainingArguments("out", report_to="none"), None, None)
    inputs = {"input_ids": torch.ones(2, 3)}
    with strategy.micro_batch(inputs) as part:
        assert part.inputs is inputs and part.splits == 1 and part.loss_weight(False) == 1.0


def test_loss_weights_of_a_split_micro_batch():
    part = MicroBatch({}, splits=2, local_items=3, total_items=4)
    assert part.loss_weight(normalised_by_items=False) == pytest.approx(1.5)  # 3 of 4 tokens, two splits
    assert part.loss_weight(normalised_by_items=True) == 2.0
    assert MicroBatch({}, splits=4).loss_weight(False) == 1.0  # uncounted: each part's mean weighs the same
