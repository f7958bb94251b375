"""2-rank FSDP2 against DDP on the small GPT workload: step time and memory per rank.

    pip install -e plugins/treadle-ddp -e plugins/treadle-fsdp
    python benchmarks/bench_fsdp.py [--steps 20] [--width 384] [--layers 4] [--json]

treadle's Trainer trains ``bench_overhead``'s TinyGPT (wider than there, so that the weights
matter) in two processes over gloo, once per strategy: ``ddp``, ``fsdp full_shard`` and
``fsdp shard_grad_op`` (each TransformerEncoderLayer its own FSDP unit), each in a fresh pair of
processes. Per strategy and rank it reports the median wall time per step (first steps
dropped), the bytes of parameters and AdamW state the rank holds after the last step (what
sharding divides; gradients are freed by then), and the peak resident memory the run added
(VmHWM, reset before the run, after a small warm-up run of the same strategy; Linux only; freed
buffers of 1 MiB and more are returned to the system so the peak is not the allocator's cache).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import WORKLOADS, TinyGPT  # noqa: E402
from two_ranks import run_on_two_ranks  # noqa: E402

STRATEGIES = {
    "ddp": {"strategy": "ddp"},
    "fsdp full_shard": {"fsdp": "full_shard", "fsdp_config": {"transformer_layer_cls_to_wrap": ["TransformerEncoderLayer"]}},
    "fsdp shard_grad_op": {"fsdp": "shard_grad_op", "fsdp_config": {"transformer_layer_cls_to_wrap": ["TransformerEncoderLayer"]}},
}


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


class StepClock:
    """A callback noting the wall time of each optimizer step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def _state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    total = 0
    for p in model.parameters():
        total += local(p).numel() * p.element_size()
        if p.grad is not None:
            total += local(p.grad).numel() * p.grad.element_size()
    for state in optimizer.state.values():
        total += sum(local(v).numel() * v.element_size() for v in state.values() if torch.is_tensor(v) and v.dim() > 0)
    return total


def _run(name: str, options: dict, steps: int, width: int, layers: int, output_dir: str) -> dict:
    from treadle import Trainer, TrainingArguments

    torch.manual_seed(0)
    data = WORKLOADS["gpt"].build_data(torch.Generator().manual_seed(0))
    args = TrainingArguments(
        output_dir=output_dir, use_cpu=True, max_steps=steps, per_device_train_batch_size=8, learning_rate=1e-3,
        max_grad_norm=1.0, logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
        log_level="warning", seed=0, **options,
    )
    clock = StepClock()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    trainer = Trainer(model_init=lambda: TinyGPT(width=width, layers=layers), args=args, train_dataset=data, callbacks=[clock])
    with trainer:
        trainer.train()
        held = _state_bytes(trainer.model_wrapped, trainer.optimizer)
    peak = _status("VmHWM") - before
    measured = clock.times[2:] or clock.times
    return {"strategy": name, "rank": dist.get_rank(), "ms_per_step": 1000 * statistics.median(measured),
            "state_mb": held / 2**20, "peak_mb": peak / 2**20}


def worker(strategy: str, steps: int, width: int, layers: int, as_json: bool) -> None:
    ctypes.CDLL(ctypes.util.find_library("c")).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: free big buffers at once
    dist.init_process_group("gloo")  # one group; the strategy adopts it
    with tempfile.TemporaryDirectory() as tmp:
        _run(strategy, STRATEGIES[strategy], 3, 64, 1, tmp)  # warm-up: the libraries' one-time state
        result = _run(strategy, STRATEGIES[strategy], steps, width, layers, tmp)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, result)
    if dist.get_rank() == 0:
        for row in gathered:
            print(json.dumps(row) if as_json else (
                f"  {row['strategy']:<20} rank {row['rank']}  {row['ms_per_step']:8.1f} ms/step  "
                f"params+AdamW {row['state_mb']:7.1f} MB  peak added {row['peak_mb']:7.1f} MB"), flush=True)
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    sizes = ["--steps", str(options.steps), "--width", str(options.width), "--layers", str(options.layers)]
    if options.worker:
        worker(options.worker, options.steps, options.width, options.layers, options.json)
        return
    if not options.json:
        params = sum(p.numel() for p in TinyGPT(width=options.width, layers=options.layers).parameters())
        print(f"TinyGPT width {options.width}, {options.layers} layers: {params / 1e6:.2f}M parameters; 2 ranks, "
              f"batch 8 each, {options.steps} steps", flush=True)
    for name in STRATEGIES:  # a fresh pair of processes each: no strategy inherits another's freed memory
        status = run_on_two_ranks(__file__, [name, *sizes, *(["--json"] if options.json else [])], "ddp,fsdp")
        if status:
            sys.exit(f"{name}: the 2-rank run failed (exit {status})")


if __name__ == "__main__":
    main()
