"""Two processes (gloo): one writer, one RNG state per process, each process gets its own back.

The tokenizer / processor (``processing_class``) is saved by the writer only, in the checkpoint
and by ``save_model``.
"""

from __future__ import annotations

import json
import multiprocessing
import traceback

import torch
from checkpoint_standin import OneDevice, StandinTrainer

from treadle.checkpoint import load_checkpoint, save_checkpoint, save_model_files

WORLD = 2


class GlooStrategy(OneDevice):
    """The stand-in strategy spread over a gloo process group (no model wrapping needed here)."""

    @property
    def world_size(self) -> int:
        return torch.distributed.get_world_size()

    @property
    def global_rank(self) -> int:
        return torch.distributed.get_rank()

    @property
    def local_rank(self) -> int:
        return self.global_rank

    def barrier(self, name: str = "") -> None:
        torch.distributed.barrier()


class RankProcessor:
    """A processing_class whose files say which process wrote them."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def save_pretrained(self, directory):
        with open(f"{directory}/written_by_rank_{self.rank}.json", "w") as fh:
            json.dump({"rank": self.rank}, fh)


def _trainer(output_dir, rank):
    trainer = StandinTrainer(output_dir)
    trainer.strategy = GlooStrategy(trainer.args, trainer.backend, trainer.precision)
    trainer.processing_class = RankProcessor(rank)
    return trainer


def _worker(rank: int, init_file: str, output_dir: str, errors) -> None:
    try:
        torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
        trainer = _trainer(output_dir, rank)
        torch.manual_seed(100 + rank)  # each process has its own random stream
        trainer.train_steps(2)
        path = save_checkpoint(trainer, None)
        expected = torch.rand(4)

        torch.manual_seed(12345)
        fresh = _trainer(output_dir, rank)
        load_checkpoint(fresh, path)
        assert torch.equal(torch.rand(4), expected), f"rank {rank} did not get its own RNG state back"
        save_model_files(fresh, f"{output_dir}/final")
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    except BaseException:
        errors.put(f"rank {rank}:\n{traceback.format_exc()}")
        raise


def test_each_process_keeps_its_own_rng_state(tmp_path):
    ctx = multiprocessing.get_context("forkserver")  # imports torch once for both processes
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "checkpoint_standin", "treadle.checkpoint"])
    errors = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(rank, str(tmp_path / "init"), str(tmp_path / "out"), errors))
        for rank in range(WORLD)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert errors.empty(), errors.get()
    assert [p.exitcode for p in procs] == [0] * WORLD

    checkpoint = tmp_path / "out" / "checkpoint-2"
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert manifest["world_size"] == WORLD
    assert {"rng_state_0.json", "rng_state_1.json", "rng_state_0.safetensors", "rng_state_1.safetensors"} <= set(manifest["files"])
    assert "rng_state.json" not in manifest["files"]
    assert manifest["processing_files"] == ["written_by_rank_0.json"]  # the writer's only
    assert "written_by_rank_0.json" in manifest["files"] and not (checkpoint / "written_by_rank_1.json").exists()
    assert sorted(p.name for p in (tmp_path / "out" / "final").glob("written_by_*")) == ["written_by_rank_0.json"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checkpoint-2", "final"]
