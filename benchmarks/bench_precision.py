"""Step time of treadle-amp's precisions against fp32, on the small GPT workload of bench_overhead.

    python benchmarks/bench_precision.py [--precisions fp32,bf16,fp16] [--rounds 6] [--block 8] [--backend cpu|cuda] [--json]

Each round trains every precision for ``block + 1`` steps, one after the other, in a fresh
Trainer with the same initial weights and data; the first step of each (set-up, first calls) is
dropped, and each remaining step is timed from one ``step_end`` to the next, by the process's CPU
time (one torch thread on CPU; on CUDA, wall time after a synchronize). Rounds interleave the
precisions so that a machine that slows down over time slows all of them alike. The figure is
the median step time of each precision and its ratio to fp32's median.

Needs treadle-amp installed (``pip install -e plugins/treadle-amp``); on CUDA also treadle-cuda.
On CPU, expect bfloat16 to be *slower* than fp32 unless the processor has native bfloat16
matmuls (AVX512-BF16 / AMX): autocast adds casts, and the matmuls are emulated.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["TREADLE_DISABLE_PLUGIN_AUTOLOAD"] = "0"  # this benchmark needs the precision plugin
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_overhead import WORKLOADS  # noqa: E402

from treadle import Trainer, TrainingArguments  # noqa: E402
from treadle.markers import hookimpl  # noqa: E402


class StepClock:
    """Times each optimizer step from the previous step's end (the first step is only a start mark)."""

    def __init__(self, synchronize) -> None:
        self.synchronize = synchronize
        self.times: list[float] = []
        self._last: float | None = None

    def _now(self) -> float:
        self.synchronize()
        return time.process_time() if self.synchronize is _nothing else time.perf_counter()

    @hookimpl
    def treadle_on_step_end(self) -> None:
        now = self._now()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now


def _nothing() -> None:
    pass


def time_precision(precision: str, backend: str, block: int, output_dir: str) -> list[float]:
    workload = WORKLOADS["gpt"]
    torch.manual_seed(0)
    model = workload.build_model()
    data = workload.build_data(torch.Generator().manual_seed(0))
    args = TrainingArguments(
        output_dir=output_dir, precision=precision, backend=backend, max_steps=block + 1,
        per_device_train_batch_size=workload.batch_size, learning_rate=1e-3, max_grad_norm=1.0,
        logging_strategy="no", save_strategy="no", eval_strategy="no", disable_tqdm=True, report_to="none",
        log_level="warning", seed=0,
    )
    clock = StepClock(torch.cuda.synchronize if backend == "cuda" else _nothing)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[clock]).train()
    return clock.times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--backend", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    options = parser.parse_args(argv)
    os.environ.setdefault("TREADLE_PLUGINS", "amp" if options.backend == "cpu" else "amp,cuda")  # only what is measured
    if options.backend == "cpu":
        torch.set_num_threads(1)
    precisions = options.precisions.split(",")
    times: dict[str, list[float]] = {p: [] for p in precisions}
    with tempfile.TemporaryDirectory(prefix="treadle-bench-precision-") as tmp:
        for _ in range(options.rounds):
            for precision in precisions:
                times[precision] += time_precision(precision, options.backend, options.block, tmp)
    medians = {p: statistics.median(t) for p, t in times.items()}
    base = medians.get("fp32")
    result = {
        "workload": "gpt", "backend": options.backend, "torch": torch.__version__, "steps_per_precision": len(times[precisions[0]]),
        "ms_per_step": {p: round(m * 1e3, 3) for p, m in medians.items()},
        "ratio_to_fp32": {p: round(m / base, 3) for p, m in medians.items()} if base else {},
    }
    if options.json:
        print(json.dumps(result))
        return
    print(f"gpt on {options.backend}: median step time over {result['steps_per_precision']} steps each")
    for precision in precisions:
        ratio = f"  {result['ratio_to_fp32'][precision]:.3f} x fp32" if base else ""
        print(f"  {precision:<10} {result['ms_per_step'][precision]:8.2f} ms/step{ratio}")


if __name__ == "__main__":
    main()
