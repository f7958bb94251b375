"""Two real processes over gloo: tokens seen and the per-token loss normalisation span both processes.

With ``average_tokens_across_devices`` (the default) a loss normalised by ``num_items_in_batch`` is
divided by the items of *every* process, so the averaged gradient is that of one big batch: also
when a step has one micro-batch (before, only accumulation steps were counted across processes).
"""

from __future__ import annotations

import multiprocessing
import traceback

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from treadle import Trainer
from treadle.args import TrainingArguments
from treadle.components import Strategy

WORLD, LENGTH, VOCAB = 2, 128, 5
VALID = [1, 2, 4, 8, 16, 32, 64, 128]
"""Valid labels per sample: powers of two, so the two processes' halves never hold equally many."""


class GlooDDP(Strategy):
    """torch's DDP over the gloo process group the test started (what a ddp plugin would do)."""

    name = "gloo-ddp"

    @property
    def world_size(self) -> int:
        return dist.get_world_size()

    @property
    def global_rank(self) -> int:
        return dist.get_rank()

    @property
    def local_rank(self) -> int:
        return dist.get_rank()

    def setup_model(self, model: nn.Module) -> nn.Module:
        return DistributedDataParallel(model.to(self.root_device))

    def unwrap_model(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, DistributedDataParallel) else model

    def all_reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        total = tensor.detach().clone()
        dist.all_reduce(total)
        return total / self.world_size if op == "mean" else total

    def barrier(self, name: str = "") -> None:
        dist.barrier()


class TokenModel(nn.Module):
    """Per-token cross entropy, summed and divided by ``num_items_in_batch`` (the mean without it)."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.embed = nn.Embedding(VOCAB, 4)
            self.head = nn.Linear(4, VOCAB)

    def forward(self, input_ids, labels=None, num_items_in_batch=None):
        logits = self.head(self.embed(input_ids))
        losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else (labels != -100).sum()
        return {"loss": losses / count, "logits": logits}


def samples() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    rows = []
    for valid in VALID:
        ids = torch.randint(0, VOCAB, (LENGTH,), generator=g)
        labels = torch.randint(0, VOCAB, (LENGTH,), generator=g)
        labels[valid:] = -100
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def _args(output_dir: str) -> TrainingArguments:
    return TrainingArguments(
        output_dir, max_steps=1, per_device_train_batch_size=len(VALID) // WORLD, learning_rate=1.0, optim="sgd",
        lr_scheduler_type="constant", max_grad_norm=0, report_to="none", save_strategy="no", logging_strategy="no",
        include_num_input_tokens_seen="non_padding", strategy="test_ported_multiprocess_tokens:GlooDDP",
        disable_tqdm=True, seed=0,
    )


def _worker(rank: int, init_file: str, output_dir: str, results, errors) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
        trainer = Trainer(TokenModel(), _args(output_dir), train_dataset=samples())
        trainer.train()
        results.put((rank, {k: v.tolist() for k, v in trainer.model.state_dict().items()}, trainer.state.num_input_tokens_seen))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        errors.put(f"rank {rank}:\n{traceback.format_exc()}")
        raise


def test_one_step_over_two_processes_equals_one_big_batch(tmp_path):
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "treadle.trainer"])
    results, errors = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, str(tmp_path / "init"), str(tmp_path / "out"), results, errors)) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert errors.empty(), errors.get()
    assert [p.exitcode for p in procs] == [0] * WORLD
    got = dict((rank, (weights, tokens)) for rank, weights, tokens in (results.get() for _ in range(WORLD)))

    reference = TokenModel()  # the whole dataset as one batch: the mean over every valid token
    batch = {k: torch.stack([s[k] for s in samples()]) for k in ("input_ids", "labels")}
    reference(**batch)["loss"].backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 1.0 * p.grad
    for rank in range(WORLD):
        weights, tokens = got[rank]
        for name, value in reference.state_dict().items():
            assert torch.allclose(torch.tensor(weights[name]), value, atol=1e-6), f"rank {rank}: {name} differs from one big batch"
        assert tokens == len(VALID) * LENGTH  # non-padding input tokens of both processes (every input id counts)
