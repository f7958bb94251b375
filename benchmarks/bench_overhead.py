"""treadle's Trainer against a plain PyTorch loop doing the same arithmetic, in one run.

Workloads and targets (from the issue that asked for this benchmark):

* ``mlp``: 64 -> 256 -> 10, batch 64. Small steps, so per-step framework overhead shows
  (target ratio <= 1.03).
* ``gpt``: a 2-layer causal transformer, width 128, sequence 64, batch 16. Compute-bound
  (target ratio <= 1.01).

Both loops get the same model (same initial weights), data, collate function, AdamW with the
same decay groups, linear schedule over the same horizon, clipping at 1.0 and a shuffled
single-process DataLoader; treadle logs, evaluates and saves nothing. The optimizer and
schedule of the two are compared after the run, and any difference is printed.

How it measures, and why: on a small shared machine, other processes (and other virtual
machines on the host) slow a run down by tens of percent, and not evenly over time, so
timing one run after the other compares two different machines. Here the two loops run in
two processes that take turns: every ``block`` batches the shared collate function passes
the turn to the other process, so the plain loop runs a block, then treadle, then the plain
loop, and so on; a waiting process is idle. Each block is timed by the process's CPU time
(``time.process_time``, with one torch thread and no dataloader workers: what the loop itself
computed) and by wall time. Adjacent blocks see nearly the same machine, so each treadle
block divided by the plain block before it is a paired ratio; the figure is the median of
these ratios, with a 95% confidence interval for that median (order statistics). The first
blocks (set-up, first-call warm-up) are dropped. ``--control`` also runs the plain loop
against itself the same way: its ratio should be 1, and how far it is from 1 shows the
resolution of the method at that moment.

    python benchmarks/bench_overhead.py                 # both workloads
    python benchmarks/bench_overhead.py --workload mlp --rounds 300 --control
    python benchmarks/bench_overhead.py --workload mlp --calls   # what treadle calls per step that the plain loop does not
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import math
import multiprocessing
import os
import pstats
import queue
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("TREADLE_DISABLE_PLUGIN_AUTOLOAD", "1")  # measure the core, whatever else is installed

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset, default_collate  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x, labels):
        return F.cross_entropy(self.net(x), labels)


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 256, width: int = 128, layers: int = 2, seq: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(seq, width))
        layer = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, x, labels):
        h = self.blocks(self.embed(x) + self.pos, mask=self.mask, is_causal=True)
        logits = self.head(self.norm(h))
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))


@dataclass
class Workload:
    name: str
    build_model: Callable[[], nn.Module]
    build_data: Callable[[torch.Generator], TensorDataset]
    batch_size: int
    block: int
    """Steps per turn: long enough that handing the turn over is negligible, short enough to pair well."""
    warmup: int
    """Turns per loop dropped before measuring."""
    rounds: int
    """Measured turns per loop (default)."""
    target: float | None


def _classification_data(g: torch.Generator) -> TensorDataset:
    return TensorDataset(torch.randn(20_000, 64, generator=g), torch.randint(0, 10, (20_000,), generator=g))


def _token_data(g: torch.Generator) -> TensorDataset:
    tokens = torch.randint(0, 256, (4_000, 65), generator=g)
    return TensorDataset(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())


WORKLOADS = {
    "mlp": Workload("mlp", MLP, _classification_data, 64, block=20, warmup=5, rounds=150, target=1.03),
    "gpt": Workload("gpt", TinyGPT, _token_data, 16, block=1, warmup=3, rounds=40, target=1.01),
}

# ---------------------------------------------------------------------------------------------
# Taking turns
# ---------------------------------------------------------------------------------------------


_TIMEOUT = 900.0
"""Seconds a loop waits for the other before giving up (the other one has failed)."""


class Baton:
    """Two loops, in two processes, take turns ``block`` batches at a time; each times its own turns.

    A loop calls ``batch_fetched()`` for every batch it fetches (from the collate function, so
    both loops call it at the same place). Every ``block`` batches it records its CPU and wall
    time, passes the turn to the other process and waits for it back. Its first call waits
    until both loops are set up; after ``turns`` timed turns it waits until the other loop is
    done too, so the two never run at the same time while anything is being timed.
    """

    def __init__(self, index: int, block: int, turns: int, go: tuple[Any, Any], start: Any, finish: Any) -> None:
        self.index, self.block, self.turns = index, block, turns
        self.go, self.start, self.finish = go, start, finish
        self.fetched = 0
        self.marks = 0
        self.resumed: tuple[float, float] | None = None
        self.cpu: list[float] = []
        self.wall: list[float] = []

    @property
    def batches(self) -> int:
        """Batches a loop fetches: one per step, and one more to end the last turn."""
        return self.turns * self.block + 1

    @property
    def done(self) -> bool:
        return self.marks > self.turns

    def batch_fetched(self) -> None:
        self.fetched += 1
        if (self.fetched - 1) % self.block == 0:
            self._pass_turn()

    def _pass_turn(self) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        if self.resumed is not None:
            self.cpu.append(cpu - self.resumed[0])
            self.wall.append(wall - self.resumed[1])
        self.marks += 1
        if self.marks == 1:
            self.start.wait(timeout=_TIMEOUT)
            if self.index == 1:
                self._acquire(self.go[1])  # loop 0 takes the first turn
        else:
            self.go[1 - self.index].release()
            if self.done:
                self.finish.wait(timeout=_TIMEOUT)
                return
            self._acquire(self.go[self.index])
        self.resumed = (time.process_time(), time.perf_counter())

    @staticmethod
    def _acquire(semaphore: Any) -> None:
        if not semaphore.acquire(timeout=_TIMEOUT):
            raise RuntimeError("the other loop did not pass the turn back")


class Collate:
    """Stack ``TensorDataset`` rows into forward's keyword arguments (both loops use this)."""

    def __init__(self, baton: Baton | None = None) -> None:
        self.baton = baton

    def __call__(self, rows):
        if self.baton is not None:
            self.baton.batch_fetched()
        x, y = default_collate(rows)
        return {"x": x, "labels": y}


# ---------------------------------------------------------------------------------------------
# The two loops
# ---------------------------------------------------------------------------------------------


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices, none on biases and norm weights (treadle's default split)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def plain_loop(model: nn.Module, data, batch_size: int, steps: int, collate: Collate) -> tuple[Any, Any]:
    """What a careful user writes by hand; returns the optimizer and scheduler (compared with treadle's)."""
    model.train()
    optimizer = torch.optim.AdamW(decay_groups(model, 0.01), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, (steps - s) / steps))
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=collate, generator=torch.Generator().manual_seed(0))
    baton = collate.baton
    done = 0
    while done < steps:
        for batch in loader:
            if baton is not None and baton.done:
                return optimizer, scheduler
            loss = model(**batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                break
    return optimizer, scheduler


def treadle_trainer(model: nn.Module, data, batch_size: int, steps: int, collate: Collate, output_dir: str):
    """A Trainer set up to do exactly the plain loop's work: nothing logged, evaluated or saved."""
    from treadle import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=1e-3,
        weight_decay=0.01,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        warmup_steps=0,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        report_to="none",
        log_level="warning",  # no final metrics line on the console
        dataloader_drop_last=False,
        dataloader_num_workers=0,
        seed=0,
    )
    return Trainer(model=model, args=args, train_dataset=data, data_collator=collate)


def describe_setup(optimizer: torch.optim.Optimizer, scheduler: Any, max_grad_norm: float, horizon: int) -> dict[str, Any]:
    """What decides a step's arithmetic besides the model: compared between the two loops."""
    keys = ("weight_decay", "betas", "eps", "initial_lr", "foreach", "fused", "amsgrad", "maximize", "capturable", "differentiable")
    lambdas = getattr(scheduler, "lr_lambdas", None)
    return {
        "optimizer": type(optimizer).__name__,
        "param_groups": [[len(g["params"]), *(g.get(k) for k in keys)] for g in optimizer.param_groups],
        "scheduler": type(scheduler).__name__,
        "lr_multipliers": None if lambdas is None else [round(lambdas[0](s), 9) for s in (0, 1, horizon // 2, horizon - 1)],
        "max_grad_norm": max_grad_norm,
    }


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def run_side(role: str, index: int, workload_name: str, warmup: int, rounds: int, threads: int, go, start, finish, results) -> None:
    """One process of a measurement: build the workload, run one loop, send back its turn times."""
    _share_one_cpu()
    torch.set_num_threads(threads)
    workload = WORKLOADS[workload_name]
    baton = Baton(index, workload.block, warmup + rounds, go, start, finish)
    data = workload.build_data(torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = workload.build_model()
    steps = baton.batches
    if role == "treadle":
        with tempfile.TemporaryDirectory() as out:
            trainer = treadle_trainer(model, data, workload.batch_size, steps, Collate(baton), out)
            trainer.train()
        setup = describe_setup(trainer.optimizer, trainer.lr_scheduler, trainer.args.max_grad_norm, steps)
    else:
        optimizer, scheduler = plain_loop(model, data, workload.batch_size, steps, Collate(baton))
        setup = describe_setup(optimizer, scheduler, 1.0, steps)
    results.put({"index": index, "cpu": baton.cpu[warmup:], "wall": baton.wall[warmup:], "setup": setup})


def _share_one_cpu() -> None:
    """Run on the same CPU as the other loop: only one of them runs at a time, and on different
    CPUs they would see different neighbours (on a virtual machine, different host cores)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def run_turns(workload: Workload, rounds: int, roles: tuple[str, str], threads: int) -> dict[str, Any]:
    """Run two loops in two processes taking turns; returns each one's turn times and set-up."""
    context = multiprocessing.get_context()
    go = (context.Semaphore(0), context.Semaphore(0))
    start, finish, results = context.Barrier(2), context.Barrier(2), context.Queue()
    processes = [
        context.Process(target=run_side, args=(role, i, workload.name, workload.warmup, rounds, threads, go, start, finish, results), name=role)
        for i, role in enumerate(roles)
    ]
    for process in processes:
        process.start()
    received: dict[int, dict[str, Any]] = {}
    try:
        while len(received) < 2:
            try:
                message = results.get(timeout=1.0)
                received[message["index"]] = message
            except queue.Empty:
                failed = [p for p in processes if p.exitcode not in (None, 0)]
                if failed:
                    raise RuntimeError(f"the {failed[0].name} loop failed (exit code {failed[0].exitcode}); see its traceback above") from None
    finally:
        for process in processes:
            if process.is_alive() and len(received) < 2:
                process.terminate()
            process.join()
    return {"roles": roles, "runs": [received[0], received[1]]}


def median_with_interval(values: list[float]) -> tuple[float, float, float]:
    """The median and a ~95% confidence interval for it (order statistics, no distribution assumed)."""
    ordered = sorted(values)
    n = len(ordered)
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half) - 1)
    return statistics.median(ordered), ordered[lo], ordered[hi]


def summarise(workload: Workload, run: dict[str, Any]) -> dict[str, Any]:
    base, other = run["roles"]
    if base == other:
        other += "_again"
    first, second = run["runs"]
    result: dict[str, Any] = {"workload": workload.name, "compared": f"{other} / {base}", "target": workload.target}
    for clock in ("cpu", "wall"):
        pairs = list(zip(first[clock], second[clock], strict=True))
        ratios = sorted(b / a for a, b in pairs)
        ratio, lo, hi = median_with_interval(ratios)
        result[clock] = {
            f"{base}_ms_per_step": round(statistics.median(a for a, _ in pairs) / workload.block * 1e3, 4),
            f"{other}_ms_per_step": round(statistics.median(b for _, b in pairs) / workload.block * 1e3, 4),
            "ratio": round(ratio, 4),
            "ratio_ci95": [round(lo, 4), round(hi, 4)],
            "pair_ratio_range": [round(ratios[0], 4), round(ratios[-1], 4)],
            "difference_us_per_step": round(statistics.median(b - a for a, b in pairs) / workload.block * 1e6, 1),
        }
    result.update(pairs=len(pairs), steps_per_turn=workload.block, torch_threads=torch.get_num_threads())
    if first["setup"] != second["setup"]:
        result["setup_differences"] = {base: first["setup"], other: second["setup"]}
    return result


def print_result(result: dict[str, Any]) -> None:
    other, base = result["compared"].split(" / ")
    threads = result["torch_threads"]
    print(f"{result['workload']}: {other} / {base}, {result['pairs']} pairs of turns of {result['steps_per_turn']} step(s), {threads} torch thread(s)")
    for clock in ("cpu", "wall"):
        r = result[clock]
        line = (
            f"  {clock:4s}  {base} {r[base + '_ms_per_step']:8.3f} ms/step  {other} {r[other + '_ms_per_step']:8.3f} ms/step  "
            f"ratio {r['ratio']:.3f} (95% CI {r['ratio_ci95'][0]:.3f}-{r['ratio_ci95'][1]:.3f}; "
            f"pairs {r['pair_ratio_range'][0]:.2f}-{r['pair_ratio_range'][1]:.2f})  {r['difference_us_per_step']:+.0f} us/step"
        )
        if clock == "cpu" and result["target"] is not None and base != other.removesuffix("_again"):
            line += f"  target <= {result['target']}: {'meets' if r['ratio'] <= result['target'] else 'misses'}"
        print(line)
    for role, setup in result.get("setup_differences", {}).items():
        print(f"  SET-UP DIFFERS: {role}: {json.dumps(setup)}")


# ---------------------------------------------------------------------------------------------
# What treadle calls per step that the plain loop does not
# ---------------------------------------------------------------------------------------------


def calls_per_step(workload: Workload, steps: int) -> dict[str, dict[str, float]]:
    """Profile ``steps`` steps of each loop (after a warm-up) and count the calls per step."""
    data = workload.build_data(torch.Generator().manual_seed(0))
    counts = {}
    for side in ("plain", "treadle"):
        torch.manual_seed(0)
        model = workload.build_model()
        profiler = cProfile.Profile()
        warm, total = 20, 20 + steps
        collate = _ProfilingCollate(profiler, start_at=warm + 1, stop_after=total)
        if side == "plain":
            plain_loop(model, data, workload.batch_size, total + 1, collate)
        else:
            with tempfile.TemporaryDirectory() as out:
                treadle_trainer(model, data, workload.batch_size, total + 1, collate, out).train()
        stats = pstats.Stats(profiler).stats
        counts[side] = {_function_name(key): value[1] / steps for key, value in stats.items()}
    return counts


class _ProfilingCollate(Collate):
    """Switch the profiler on at one batch and off at another: whole steps, no set-up."""

    def __init__(self, profiler: cProfile.Profile, start_at: int, stop_after: int) -> None:
        super().__init__()
        self.profiler, self.start_at, self.stop_after, self.fetched = profiler, start_at, stop_after, 0

    def __call__(self, rows):
        self.fetched += 1
        if self.fetched == self.start_at:
            self.profiler.enable()
        elif self.fetched == self.stop_after + 1:
            self.profiler.disable()
        return super().__call__(rows)


def _function_name(key: tuple[str, int, str]) -> str:
    filename, line, name = key
    filename = re.sub(r"^.*/(site-packages|src)/", "", filename)
    filename = re.sub(r"^.*/lib/python3\.\d+/", "", filename)
    return f"{filename}:{line}({name})" if line else name


def print_call_difference(counts: dict[str, dict[str, float]]) -> None:
    plain, ours = counts["plain"], counts["treadle"]
    rows = sorted(((ours.get(k, 0.0) - plain.get(k, 0.0), k) for k in set(plain) | set(ours)), key=lambda r: (-r[0], r[1]))
    rows = [r for r in rows if abs(r[0]) >= 0.5]
    print(f"calls per step: plain {sum(plain.values()):.1f}, treadle {sum(ours.values()):.1f}")
    print("functions called more (+) or less (-) often per step by treadle than by the plain loop:")
    for difference, name in rows:
        print(f"  {difference:+7.2f}  {name}")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--rounds", type=int, default=None, help="measured turns per loop (default: per workload)")
    parser.add_argument("--warmup", type=int, default=None, help="turns per loop dropped before measuring (default: per workload)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (with 1, CPU time is the loop's own work)")
    parser.add_argument("--control", action="store_true", help="also run the plain loop against itself (the method's noise floor)")
    parser.add_argument("--calls", action="store_true", help="instead of timing, list what treadle calls per step that the plain loop does not")
    parser.add_argument("--json", action="store_true", help="print one JSON object per measurement")
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    for name in WORKLOADS if opts.workload == "all" else [opts.workload]:
        workload = WORKLOADS[name]
        if opts.calls:
            print(f"== {name}")
            print_call_difference(calls_per_step(workload, steps=200))
            continue
        rounds = opts.rounds or workload.rounds
        if opts.warmup is not None:
            workload = dataclasses.replace(workload, warmup=opts.warmup)
        for roles in [("plain", "treadle")] + ([("plain", "plain")] if opts.control else []):
            result = summarise(workload, run_turns(workload, rounds, roles, opts.threads))
            if opts.json:
                print(json.dumps(result))
            else:
                print_result(result)


if __name__ == "__main__":
    main()
