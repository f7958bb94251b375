"""Crash injection: SIGKILL a training process at random moments, resume each time, end up exact.

A reference run trains ``MAX_STEPS`` steps uninterrupted. The crash run is the same
``treadle train`` command, killed with SIGKILL at least ``KILLS`` times (during optimizer steps,
during checkpoint saves and rotation, during start-up and resume) and restarted with
``--resume_from_checkpoint true`` after each kill. After every kill, each ``checkpoint-*``
directory must verify against its manifest and the newest one must be at most one step behind
the last step announced; at the end the final weights must equal the reference bit for bit.

Kill moments come from a seeded RNG, measured in training progress (kill after step ``n``
plus a random fraction of a step), so the test does the same thing on slow and fast machines.
The runs are ``treadle.cli.main`` in processes forked from a forkserver that has already
imported torch: a fresh interpreter would spend about five seconds importing per restart.
"""

from __future__ import annotations

import multiprocessing
import random
import sys
import time
from pathlib import Path

import pytest
import torch
from treadle.checkpoint import DOOMED_PREFIX, INCOMPLETE_PREFIX, list_checkpoints, resolve_resume_checkpoint, verify_checkpoint
from treadle.checkpoint.model_files import read_weights

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import crash_task  # noqa: E402  (the module the child processes run)

KILLS = 22
MAX_STEPS = 150
SEED = 20240611

TRAIN_ARGS = [
    "train", "--task", "crash_task:build", "--max_steps", str(MAX_STEPS), "--per_device_train_batch_size", "8",
    "--gradient_accumulation_steps", "2", "--save_steps", "1", "--save_total_limit", "3", "--seed", "7",
    "--report_to", "none", "--disable_tqdm", "--logging_steps", "10", "--eval_strategy", "steps",
    "--eval_steps", "10", "--metric_for_best_model", "loss", "--learning_rate", "0.01",
]  # fmt: skip


@pytest.fixture(scope="module")
def context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "treadle.trainer", "treadle.cli", "treadle.run", "crash_task"])
    return ctx


class Child:
    """One ``treadle train`` process and the progress it announces."""

    def __init__(self, ctx, output_dir: Path, resume: bool) -> None:
        argv = [*TRAIN_ARGS, "--output_dir", str(output_dir)] + (["--resume_from_checkpoint", "true"] if resume else [])
        self.reader, writer = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=crash_task.run_cli, args=(argv, writer))
        self.process.start()
        writer.close()
        self.began_at: int | None = None
        self.last_step: int | None = None
        self.step_times: list[float] = []
        self.finished = False

    def wait_for(self, predicate, timeout: float = 120.0) -> bool:
        """Read announcements until ``predicate()`` holds; False if the process ended first."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if not self.reader.poll(max(0.0, deadline - time.monotonic())):
                raise AssertionError("the training process went silent")
            try:
                word, number = self.reader.recv_bytes().decode().split()
            except EOFError:
                self.process.join()
                self.finished = True
                return False
            if word == "BEGIN":
                self.began_at = int(number)
            else:
                self.last_step = int(number)
                self.step_times.append(time.monotonic())
        return True

    def kill(self) -> None:
        self.process.kill()
        self.process.join()

    def finish(self) -> int:
        self.wait_for(lambda: False, timeout=300)
        return self.process.exitcode


def _run_to_completion(ctx, output_dir: Path, resume: bool) -> float:
    """Run without interruption; returns the mean time of an optimizer step (with its save)."""
    child = Child(ctx, output_dir, resume)
    assert child.finish() == 0
    times = child.step_times
    return (times[-1] - times[0]) / max(1, len(times) - 1)


def _check_after_kill(output_dir: Path, last_step: int | None) -> None:
    checkpoints = list_checkpoints(output_dir)
    for path in checkpoints:
        verify_checkpoint(path)  # a checkpoint under its real name is always complete
    newest = resolve_resume_checkpoint(True, output_dir) if checkpoints else None
    if last_step is not None:
        assert newest is not None, f"no checkpoint although step {last_step} ended"
        assert int(newest.name.split("-")[1]) >= last_step - 1


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path, context):
    reference = tmp_path / "reference"
    step_time = _run_to_completion(context, reference, resume=False)

    rng = random.Random(SEED)
    crashed = tmp_path / "crashed"
    kills = during_save = during_startup = 0
    while kills < KILLS:
        child = Child(context, crashed, resume=bool(list_checkpoints(crashed)))
        if rng.random() < 0.15:  # during start-up or while loading the checkpoint
            time.sleep(rng.uniform(0.0, 0.4))
            during_startup += child.began_at is None
        else:
            assert child.wait_for(lambda: child.began_at is not None)
            target = child.began_at + rng.randint(1, 4)
            if not child.wait_for(lambda: child.last_step is not None and child.last_step >= target):
                break  # training finished before this kill
            time.sleep(rng.uniform(0.0, 1.5 * step_time))
        child.kill()
        kills += 1
        child.wait_for(lambda: False, timeout=5)  # drain what it announced before dying
        during_save += any(p.name.startswith((INCOMPLETE_PREFIX, DOOMED_PREFIX)) for p in crashed.iterdir()) if crashed.exists() else 0
        _check_after_kill(crashed, child.last_step)

    assert kills >= 20, f"training finished after only {kills} kills; raise MAX_STEPS"
    _run_to_completion(context, crashed, resume=True)

    expected = read_weights(reference / "model.safetensors")
    got = read_weights(crashed / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{name} differs after {kills} crashes"
    assert during_save >= 1, "no kill landed inside a checkpoint save; the test lost its point"
    print(f"{kills} kills: {during_save} during a save, {during_startup} during start-up; step {step_time * 1e3:.1f} ms")
