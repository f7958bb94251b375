"""2-rank DDP step time: treadle's ``ddp`` strategy against a hand-written DDP loop (target <= 1.05).

    pip install -e plugins/treadle-ddp
    python benchmarks/bench_ddp.py [--rounds 30] [--block 10] [--json]

Both loops run in the same two processes (gloo on the CPU, one torch thread each), on the
overhead benchmark's MLP workload (``bench_overhead.py``: model, data, AdamW with its decay
groups, linear schedule, clipping at 1.0). The hand-written loop is what a careful user writes:
``DistributedDataParallel(model)``, a ``DistributedSampler`` that shuffles per epoch, backward,
clip, step. treadle trains with ``--strategy ddp`` (implied by the launcher) and
``--ddp_find_unused_parameters false`` (the hand-written loop does not search for unused
parameters either), logging, evaluating and saving nothing.

They take turns inside one training run: before every ``block``-th batch treadle fetches, its
collate function runs the next ``block`` steps of the hand-written loop, so each treadle block
is paired with the hand-written block just before it. Each block is timed by wall time (communication is part of
a DDP step) and by the process's CPU time; the figures are the medians of the paired ratios
(treadle / hand-written) with a ~95% confidence interval, measured on rank 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import WORKLOADS, Collate, decay_groups, median_with_interval, treadle_trainer  # noqa: E402
from two_ranks import run_on_two_ranks  # noqa: E402


TARGET = 1.05


class HandWrittenDDP:
    """The plain DDP loop, run ``block`` steps at a time."""

    def __init__(self, model: torch.nn.Module, data: Any, batch_size: int, steps: int) -> None:
        self.model = DistributedDataParallel(model, find_unused_parameters=False)
        self.model.train()
        self.optimizer = torch.optim.AdamW(decay_groups(model, 0.01), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: max(0.0, (steps - s) / steps))
        self.sampler = DistributedSampler(data, shuffle=True, seed=0)
        self.loader = DataLoader(data, batch_size=batch_size, sampler=self.sampler, collate_fn=Collate())
        self.epoch = 0
        self.batches = self._epoch()

    def _epoch(self):
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            batch = next(self.batches, None)
            if batch is None:
                self.batches = self._epoch()
                batch = next(self.batches)
            loss = self.model(**batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)


class TakeTurns(Collate):
    """treadle's collate function: before the first batch of each treadle block, close that block's
    clock, run a hand-written block, and reopen it (as ``bench_overhead``'s baton, no hook involved:
    a callback with step hooks would make the ranks agree on stopping after every step)."""

    def __init__(self, plain: HandWrittenDDP, block: int, warmup: int) -> None:
        super().__init__()
        self.plain, self.block, self.warmup = plain, block, warmup
        self.pairs: list[dict[str, float]] = []
        self._plain: dict[str, float] = {}
        self._start = (0.0, 0.0)
        self._batches = 0

    def __call__(self, rows):
        if self._batches % self.block == 0:
            if self._batches // self.block > self.warmup:
                wall, cpu = time.perf_counter() - self._start[0], time.process_time() - self._start[1]
                self.pairs.append({"treadle_wall": wall, "treadle_cpu": cpu, **self._plain})
            self._run_plain()
        self._batches += 1
        return super().__call__(rows)

    def _run_plain(self) -> None:
        dist.barrier()  # both ranks start the block together
        wall, cpu = time.perf_counter(), time.process_time()
        self.plain.run(self.block)
        self._plain = {"plain_wall": time.perf_counter() - wall, "plain_cpu": time.process_time() - cpu}
        dist.barrier()
        self._start = (time.perf_counter(), time.process_time())


def worker(rounds: int, block: int, warmup: int, as_json: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # the hand-written loop needs it first; treadle's strategy adopts it
    workload = WORKLOADS["mlp"]
    data = workload.build_data(torch.Generator().manual_seed(0))
    steps = (rounds + warmup + 1) * block  # the last block's clock closes at the batch after it
    torch.manual_seed(0)
    plain_model = workload.build_model()
    torch.manual_seed(0)
    treadle_model = workload.build_model()
    with tempfile.TemporaryDirectory() as output_dir:
        plain = HandWrittenDDP(plain_model, data, workload.batch_size, steps + block)
        turns = TakeTurns(plain, block, warmup)
        trainer = treadle_trainer(treadle_model, data, workload.batch_size, steps, turns, output_dir)
        assert trainer.strategy.name == "ddp", trainer.strategy.name
        trainer.args.ddp_find_unused_parameters = False
        trainer.train()
    if dist.get_rank() != 0:
        return
    result: dict[str, Any] = {"workload": "mlp", "world_size": dist.get_world_size(), "block": block, "pairs": len(turns.pairs)}
    for clock in ("wall", "cpu"):
        ratios = [p[f"treadle_{clock}"] / p[f"plain_{clock}"] for p in turns.pairs]
        median, lo, hi = median_with_interval(ratios)
        per_step = {side: 1000 * median_with_interval([p[f"{side}_{clock}"] / block for p in turns.pairs])[0] for side in ("plain", "treadle")}
        result[clock] = {"ratio": median, "interval": [lo, hi], "plain_ms": per_step["plain"], "treadle_ms": per_step["treadle"]}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(f"mlp, {result['world_size']} ranks (gloo, CPU): treadle ddp / hand-written DDP, {len(turns.pairs)} paired blocks of {block} steps")
    for clock in ("wall", "cpu"):
        r = result[clock]
        print(
            f"  {clock:<5} hand-written {r['plain_ms']:.3f} ms/step  treadle {r['treadle_ms']:.3f} ms/step  "
            f"ratio {r['ratio']:.3f} (95% CI {r['interval'][0]:.3f}-{r['interval'][1]:.3f})"
            + (f"  target <= {TARGET}" if clock == "wall" else "")
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="measured block pairs")
    parser.add_argument("--block", type=int, default=10, help="steps per turn")
    parser.add_argument("--warmup", type=int, default=3, help="block pairs dropped before measuring")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.worker:
        worker(options.rounds, options.block, options.warmup, options.json)
        return
    worker_argv = ["--rounds", str(options.rounds), "--block", str(options.block), "--warmup", str(options.warmup)]
    sys.exit(run_on_two_ranks(__file__, worker_argv + (["--json"] if options.json else []), plugins="ddp"))

if __name__ == "__main__":
    main()
