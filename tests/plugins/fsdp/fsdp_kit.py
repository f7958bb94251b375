"""Shared pieces of the treadle-fsdp tests: a tiny model and data, and real processes over gloo.

``run_ranks`` starts one process per rank from a forkserver that has imported torch and treadle
once, sets the launcher environment torchrun would (RANK, WORLD_SIZE, MASTER_ADDR, ...), and
lets the entry points of the named plugins load, so ``--strategy fsdp`` resolves through the
real plugin manager. Workers report through files in their output directories.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

FEATURES = 8
SAMPLES = 64


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(x))


class TinyNet(nn.Module):
    """Three blocks and a head; ``Block`` is the unit class the tests wrap."""

    _no_split_modules = ["Block"]

    def __init__(self, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(FEATURES, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        out = self.head(h).squeeze(-1)
        result = {"logits": out}
        if labels is not None:
            result["loss"] = nn.functional.mse_loss(out, labels)
        return result


def dataset() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, FEATURES, generator=g)
    y = x.sum(-1).sin() + 0.1 * torch.randn(SAMPLES, generator=g)
    return torch.utils.data.TensorDataset(x, y)


def training_args(output_dir: Any, **overrides: Any) -> Any:
    from treadle import TrainingArguments

    options = dict(
        output_dir=str(output_dir), use_cpu=True, per_device_train_batch_size=8, max_steps=4, learning_rate=0.05,
        optim="adamw_torch", lr_scheduler_type="linear", warmup_steps=1, max_grad_norm=1.0, logging_steps=1,
        save_strategy="no", report_to="none", seed=7, dataloader_drop_last=True, disable_tqdm=True,
    )
    options.update(overrides)
    return TrainingArguments(**options)


def train(output_dir: Any, resume: Any = None, model_init: Callable | None = None, **overrides: Any) -> Any:
    """One training run with the Trainer; saves the final model and the logged losses."""
    from treadle import Trainer

    args = training_args(output_dir, **overrides)
    # model_init: built after the Trainer seeded torch, inside the strategy's model_init_context
    trainer = Trainer(args=args, train_dataset=dataset(), model_init=model_init or TinyNet)
    with trainer:
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model()
        if trainer.is_world_process_zero():
            losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
            norms = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
            Path(output_dir, "losses.json").write_text(json.dumps({"loss": losses, "grad_norm": norms}))
    return trainer


def final_weights(output_dir: Any) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(output_dir) / "model.safetensors"))


def losses(output_dir: Any) -> dict[str, list[float]]:
    return json.loads(Path(output_dir, "losses.json").read_text())


# ------------------------------------------------------------------------------ processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, plugins: str, target: Callable, args: tuple, errors: Any) -> None:
    try:
        os.environ.update(
            RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TREADLE_PLUGINS=plugins, OMP_NUM_THREADS="1",
        )
        os.environ.pop("TREADLE_DISABLE_PLUGIN_AUTOLOAD", None)
        from treadle.plugins import reset_plugin_manager

        reset_plugin_manager()
        # the group a launcher's process would hold; each Trainer's strategy reuses it (joining a
        # fresh group per Trainer on one port could meet the previous group's store)
        torch.distributed.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
        try:
            target(rank, *args)
        finally:
            torch.distributed.destroy_process_group()
    except BaseException:
        errors.put(f"rank {rank}:\n{traceback.format_exc()}")
        raise


def run_ranks(world: int, target: Callable, *args: Any, plugins: str = "fsdp", timeout: float = 120) -> None:
    """Run ``target(rank, *args)`` in ``world`` processes joined over gloo; fail with the first rank's traceback."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed.fsdp", "treadle.trainer", "fsdp_kit"])
    errors = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(rank, world, port, plugins, target, args, errors)) for rank in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(timeout=max(deadline - time.monotonic(), 0.1))
    hung = [rank for rank, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert errors.empty(), errors.get()
    assert not hung, f"ranks {hung} still ran after {timeout}s"
    assert [p.exitcode for p in procs] == [0] * world


LAUNCHER_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID", "TREADLE_DISABLE_PLUGIN_AUTOLOAD")


def cli_env(plugins: str = "fsdp") -> dict[str, str]:
    """The environment of a ``treadle`` subprocess started from a plain shell.

    Drops every variable a launcher (or an earlier in-process test) could have left, so the
    command line never believes it already runs under torchrun; puts this folder on PYTHONPATH
    for ``--task fsdp_kit:cli_task``.
    """
    env = {name: value for name, value in os.environ.items() if name not in LAUNCHER_ENV}
    here = str(Path(__file__).resolve().parent)
    env.update(OMP_NUM_THREADS="1", TREADLE_PLUGINS=plugins,
               PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    return env


def cli_task(args: Any) -> Any:
    """``--task fsdp_kit:cli_task`` for the command-line tests (built inside the strategy's model_init_context)."""
    from treadle import TaskParts

    return TaskParts(model=TinyNet(), train_dataset=dataset(), eval_dataset=dataset())
