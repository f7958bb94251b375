"""treadle's Trainer against a plain PyTorch loop doing the same arithmetic, in one run.

Two workloads, from the issue that set the targets:

* ``mlp``: 64 -> 256 -> 10, batch 64. Tiny steps, so any per-step overhead of the framework
  shows (target ratio <= 1.03).
* ``gpt``: a 2-layer causal transformer, width 128, sequence 64, batch 16. Compute-bound
  (target ratio <= 1.01).

Both sides use the same model class, data, AdamW with the same decay groups, linear schedule,
gradient clipping at 1.0 and a shuffled DataLoader. Per-step time is measured as the
difference between a long and a short run divided by the step difference, so set-up costs
(building the optimizer, spawning nothing, first-call warm-up) cancel out. Runs alternate
between the two sides; the ratio of the medians and the ratio of the best (least disturbed)
repeats are both reported, with the range of the paired ratios to show the noise.

    python benchmarks/bench_overhead.py                 # both workloads
    python benchmarks/bench_overhead.py --workload mlp --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


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


def make_workload(name: str):
    g = torch.Generator().manual_seed(0)
    if name == "mlp":
        data = TensorDataset(torch.randn(20_000, 64, generator=g), torch.randint(0, 10, (20_000,), generator=g))
        return MLP, data, 64
    tokens = torch.randint(0, 256, (4_000, 65), generator=g)
    return TinyGPT, TensorDataset(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()), 16


class AsKwargs:
    """Collate a TensorDataset batch into the keyword arguments both sides pass to forward."""

    def __call__(self, rows):
        x, y = torch.utils.data.default_collate(rows)
        return {"x": x, "labels": y}


def decay_groups(model: nn.Module, weight_decay: float):
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def plain_loop(model_cls, data, batch_size: int, steps: int) -> float:
    torch.manual_seed(0)
    model = model_cls()
    model.train()
    optimizer = torch.optim.AdamW(decay_groups(model, 0.01), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, (steps - s) / steps))
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=AsKwargs(), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    done = 0
    while done < steps:
        for batch in loader:
            loss = model(**batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                break
    return time.perf_counter() - start


def treadle_loop(model_cls, data, batch_size: int, steps: int) -> float:
    from treadle import Trainer, TrainingArguments

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=1e-3,
            weight_decay=0.01,
            max_grad_norm=1.0,
            lr_scheduler_type="linear",
            logging_strategy="no",
            save_strategy="no",
            eval_strategy="no",
            disable_tqdm=True,
            report_to="none",
            dataloader_drop_last=False,
            seed=0,
        )
        trainer = Trainer(model=model_cls(), args=args, train_dataset=data, data_collator=AsKwargs())
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start


def per_step(run, model_cls, data, batch_size: int, short: int, long: int) -> float:
    return (run(model_cls, data, batch_size, long) - run(model_cls, data, batch_size, short)) / (long - short)


def measure(workload: str, repeats: int, short: int, long: int) -> dict:
    model_cls, data, batch_size = make_workload(workload)
    plain, ours = [], []
    for _ in range(repeats):
        plain.append(per_step(plain_loop, model_cls, data, batch_size, short, long))
        ours.append(per_step(treadle_loop, model_cls, data, batch_size, short, long))
    p, t = statistics.median(plain), statistics.median(ours)
    ratios = sorted(b / a for a, b in zip(plain, ours))
    return {
        "workload": workload,
        "plain_ms_per_step": round(p * 1e3, 4),
        "treadle_ms_per_step": round(t * 1e3, 4),
        "ratio": round(t / p, 4),
        "ratio_of_best": round(min(ours) / min(plain), 4),
        "ratio_range": [round(ratios[0], 4), round(ratios[-1], 4)],
        "repeats": repeats,
        "steps": [short, long],
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["mlp", "gpt", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object per workload")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is the least noisy on a shared machine)")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    plans = {"mlp": (200, 1200), "gpt": (20, 120)}
    for workload in (["mlp", "gpt"] if opts.workload == "all" else [opts.workload]):
        result = measure(workload, opts.repeats, *plans[workload])
        if opts.json:
            print(json.dumps(result))
        else:
            target = {"mlp": 1.03, "gpt": 1.01}[workload]
            verdict = "meets" if result["ratio"] <= target else "misses"
            print(
                f"{workload:4s} plain {result['plain_ms_per_step']:.3f} ms/step  treadle {result['treadle_ms_per_step']:.3f} ms/step  "
                f"ratio {result['ratio']:.3f} (best-of {result['ratio_of_best']:.3f}; range {result['ratio_range'][0]:.3f}-{result['ratio_range'][1]:.3f}; "
                f"target <= {target}: {verdict})"
            )


if __name__ == "__main__":
    main()
