"""``treadle verify-resume``: prove that stopping and resuming changes nothing.

Runs the same training twice in a temporary directory: once straight to ``max_steps``, once
stopped after ``stop_at`` optimizer steps (with a checkpoint) and resumed in a fresh Trainer
until ``max_steps``. A recorder registered with each Trainer writes down, after every optimizer
step, a fingerprint of the batches the step consumed, the loss, the learning rate, the RNG
states and the optimizer state, and the comparison names the first step and quantity that
differ, or says the runs are identical (the logged losses, ``train_loss`` and the final weights
are compared too, bit for bit).

Plugin authors can call ``verify_resume(args, stop_at)`` in their tests to check that their
backend, precision or strategy resumes exactly.

The three runs are quiet (no progress bars, only warnings and errors logged) unless
``verbose``: what matters is the verdict, and the progress lines say which run is going on.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from treadle.errors import UsageError
from treadle.markers import hookimpl

COMPARED = ("batch", "loss", "learning_rate", "rng", "optimizer", "weights")
"""What is compared after each step, in the order a difference is looked for (causes first)."""


@dataclass
class StepRecord:
    """What one optimizer step consumed and left behind (fingerprints are sha256 prefixes)."""

    step: int
    batch: str
    loss: float
    learning_rate: float
    rng: str
    optimizer: str
    weights: str


@dataclass
class ResumeReport:
    """The outcome of ``verify_resume``: ``identical``, or where the runs first differ."""

    max_steps: int
    stop_at: int
    straight: list[StepRecord] = field(default_factory=list)
    resumed: list[StepRecord] = field(default_factory=list)
    straight_logged: dict[int, float] = field(default_factory=dict)
    """The ``loss`` of every training log, by step."""
    resumed_logged: dict[int, float] = field(default_factory=dict)
    straight_train_loss: Optional[float] = None
    resumed_train_loss: Optional[float] = None
    first_difference: Optional[str] = None
    step: Optional[int] = None
    quantity: Optional[str] = None

    @property
    def identical(self) -> bool:
        return self.first_difference is None

    def __str__(self) -> str:
        if self.identical:
            return (
                f"identical: {self.max_steps} steps straight and {self.stop_at} + resume + "
                f"{self.max_steps - self.stop_at} agree on every batch, loss, learning rate, RNG state, "
                "optimizer state, logged loss, train_loss and the final weights"
            )
        return f"different: {self.first_difference}"


def fingerprint(tree: Any) -> str:
    """A short hash of a nested structure of tensors, arrays and plain values (bit-exact)."""
    from treadle.checkpoint.serialization import split_tensors

    encoded, tensors = split_tensors(tree, where="fingerprint")
    digest = hashlib.sha256(json.dumps(encoded, sort_keys=True).encode())
    for key in sorted(tensors):
        tensor = tensors[key].contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(_byte_view_dtype(tensor)).numpy().tobytes())
    return digest.hexdigest()[:16]


def _byte_view_dtype(tensor: Any) -> Any:
    import torch

    return torch.uint8 if tensor.dtype != torch.bool else torch.bool


class StepRecorder:
    """A hook object that records a ``StepRecord`` at the end of every optimizer step.

    The batches come from ``note_batch``, which the recording Trainer calls from
    ``training_step`` for every micro-batch.
    """

    def __init__(self) -> None:
        self.records: list[StepRecord] = []
        self.logged: dict[int, float] = {}
        self.train_loss: Optional[float] = None
        self._batches: list[str] = []
        self._losses: list[float] = []

    def note_batch(self, inputs: Any, loss: Any) -> None:
        self._batches.append(fingerprint(inputs))
        self._losses.append(float(loss))

    @hookimpl
    def treadle_on_step_end(self, trainer: Any, state: Any) -> None:
        from treadle.checkpoint.run_state import capture_rng_state

        optimizer = trainer.optimizer
        self.records.append(
            StepRecord(
                step=state.global_step,
                batch=fingerprint(self._batches),
                loss=sum(self._losses),
                learning_rate=float(optimizer.param_groups[0]["lr"]),
                rng=fingerprint(capture_rng_state(trainer)),
                optimizer=fingerprint(trainer.strategy.optimizer_state_dict(optimizer)),
                weights=fingerprint(trainer.strategy.model_state_dict(trainer.model)),
            )
        )
        self._batches, self._losses = [], []

    @hookimpl
    def treadle_on_log(self, state: Any, logs: dict[str, Any]) -> None:
        if "loss" in logs:
            self.logged[state.global_step] = float(logs["loss"])
        if "train_loss" in logs:
            self.train_loss = float(logs["train_loss"])


class StopAt:
    """A hook object that saves a checkpoint and stops training after step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl(trylast=True)
    def treadle_on_step_end(self, state: Any, control: Any) -> None:
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True


def recording_trainer_class(base: type, recorder: StepRecorder) -> type:
    """A subclass of ``base`` whose ``training_step`` reports each micro-batch to ``recorder``."""

    class RecordingTrainer(base):  # type: ignore[misc, valid-type]
        def training_step(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            loss = super().training_step(model, inputs, *args, **kwargs)
            recorder.note_batch(inputs, loss)
            return loss

    return RecordingTrainer


def verify_resume(
    args: Any,
    stop_at: int,
    task: Union[str, Callable[[Any], Any], None] = None,
    *,
    trainer_cls: Optional[type] = None,
    workdir: Union[str, Path, None] = None,
    progress: Optional[Callable[[str], None]] = None,
    verbose: bool = False,
) -> ResumeReport:
    """Train ``args.max_steps`` steps straight, and ``stop_at`` + resume + the rest; compare.

    ``task`` is a task name, a ``module:function`` string or a function ``(args) -> TaskParts``
    (default: ``args.task``). ``args.output_dir`` is not touched: both runs write under
    ``workdir`` (a temporary directory by default, removed afterwards). ``trainer_cls`` lets a
    Trainer subclass be checked; ``progress`` receives a line as each of the three runs starts.
    ``verbose`` lets the runs show their progress bars and log lines.
    """
    max_steps = int(getattr(args, "max_steps", -1) or -1)
    if max_steps <= 0:
        raise UsageError("verify-resume needs --max_steps N (the length of the straight run)")
    if not 0 < stop_at < max_steps:
        raise UsageError(f"--stop_at must be between 1 and max_steps - 1 = {max_steps - 1}, got {stop_at}")
    build = _task_builder(task if task is not None else getattr(args, "task", "demo"), args)
    say = progress or (lambda line: None)
    if not verbose:
        args = _quiet(args)
    with _treadle_log_level_kept():
        if workdir is not None:
            return _compare_runs(args, stop_at, build, Path(workdir), trainer_cls, say)
        shared = _shared_workdir()
        if shared is not None:
            try:
                return _compare_runs(args, stop_at, build, shared, trainer_cls, say)
            finally:
                if os.environ.get("RANK", "0") == "0":  # the others are done with it: the last save was collective
                    shutil.rmtree(shared, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix="treadle-verify-resume-") as tmp:
            return _compare_runs(args, stop_at, build, Path(tmp), trainer_cls, say)


def _shared_workdir() -> Optional[Path]:
    """Under a launcher, one directory for all processes (rank 0 writes the checkpoint the others
    resume from), named after the launcher's run; None for a single process (a private temp dir)."""
    world = os.environ.get("WORLD_SIZE", "1")
    if not world.isdigit() or int(world) <= 1:
        return None
    run = os.environ.get("TORCHELASTIC_RUN_ID") or f"{os.environ.get('MASTER_ADDR', '')}-{os.environ.get('MASTER_PORT', '')}"
    return Path(tempfile.gettempdir()) / f"treadle-verify-resume-{run}"


def _quiet(args: Any) -> Any:
    """A copy of ``args`` whose runs show no progress bar and log only warnings and errors."""
    quiet = copy.deepcopy(args)
    quiet.disable_tqdm = True
    quiet.log_level = quiet.log_level_replica = "warning"
    return quiet


@contextlib.contextmanager
def _treadle_log_level_kept():
    """Give the ``treadle`` logger its level back: each run sets it from its ``log_level``."""
    treadle_logger = logging.getLogger("treadle")
    level = treadle_logger.level
    try:
        yield
    finally:
        treadle_logger.setLevel(level)


def _compare_runs(
    args: Any, stop_at: int, build: Callable, root: Path, trainer_cls: Optional[type], say: Callable[[str], None]
) -> ResumeReport:
    max_steps = args.max_steps
    say(f"verify-resume 1/3: {max_steps} steps straight")
    straight_args = _args_for(args, root / "straight")
    straight, straight_weights = _train(straight_args, build, trainer_cls, resume=None, stop_at=None)

    say(f"verify-resume 2/3: {stop_at} steps, then save and stop")
    resumed_args = _args_for(args, root / "resumed")
    first_leg, _ = _train(resumed_args, build, trainer_cls, resume=None, stop_at=stop_at)
    checkpoint = Path(resumed_args.output_dir) / f"checkpoint-{stop_at}"
    say(f"verify-resume 3/3: resume from checkpoint-{stop_at} in a new Trainer, steps {stop_at + 1} to {max_steps}")
    second_leg, resumed_weights = _train(resumed_args, build, trainer_cls, resume=str(checkpoint), stop_at=None)

    report = ResumeReport(
        max_steps=args.max_steps, stop_at=stop_at, straight=straight.records, resumed=first_leg.records + second_leg.records,
        straight_logged=straight.logged, resumed_logged={**first_leg.logged, **second_leg.logged},
        straight_train_loss=straight.train_loss, resumed_train_loss=second_leg.train_loss,
    )
    _find_first_difference(report, straight_weights, resumed_weights)
    return report


def _args_for(args: Any, output_dir: Path) -> Any:
    clone = copy.deepcopy(args)
    clone.output_dir = str(output_dir)
    clone.resume_from_checkpoint = None
    clone.overwrite_output_dir = True
    return clone


def _train(args: Any, build: Callable, trainer_cls: Optional[type], *, resume: Optional[str], stop_at: Optional[int]):
    from treadle.randomness import seed_from_args
    from treadle.run import make_trainer
    from treadle.trainer import Trainer

    seed_from_args(args)  # the model is built before the Trainer exists: seed it as a run would
    parts = build(args)
    recorder = StepRecorder()
    callbacks = list(parts.callbacks or []) + [recorder] + ([StopAt(stop_at)] if stop_at else [])
    base = trainer_cls or parts.trainer_class or Trainer
    parts = dataclasses.replace(parts, callbacks=callbacks, trainer_class=recording_trainer_class(base, recorder))
    trainer = make_trainer(args, parts)  # built as `treadle train` builds it
    trainer.train(resume_from_checkpoint=resume)
    weights = {k: v.detach().cpu().clone() for k, v in trainer.strategy.model_state_dict(trainer.model).items()}
    return recorder, weights


def _task_builder(task: Union[str, Callable[[Any], Any]], args: Any) -> Callable[[Any], Any]:
    """A function ``(args) -> TaskParts``; a task name goes through the registry and its checks."""
    if callable(task):
        return task
    from treadle.run import build_task

    def build(run_args: Any) -> Any:
        run_args.task = task
        return build_task(run_args)

    return build


def _find_first_difference(report: ResumeReport, straight_weights: dict, resumed_weights: dict) -> None:
    by_step = {r.step: r for r in report.resumed}
    for expected in report.straight:
        got = by_step.get(expected.step)
        where = "before the stop" if expected.step <= report.stop_at else "after the resume"
        if got is None:
            report.step, report.quantity = expected.step, "step"
            report.first_difference = f"step {expected.step} ({where}) was never run by the stopped-and-resumed run"
            return
        for quantity in COMPARED:
            a, b = getattr(expected, quantity), getattr(got, quantity)
            if a != b and not (isinstance(a, float) and _same_number(a, b)):  # a NaN loss equals a NaN loss here
                report.step, report.quantity = expected.step, quantity
                hint = " (training is not deterministic even without a resume)" if expected.step <= report.stop_at else ""
                report.first_difference = f"step {expected.step} ({where}): {quantity} differs: straight {a}, resumed {b}{hint}"
                return
    extra = sorted(set(by_step) - {r.step for r in report.straight})
    if extra:
        report.step, report.quantity = extra[0], "step"
        report.first_difference = f"the resumed run ran step {extra[0]}, which the straight run never reached"
        return
    if not _compare_logged_losses(report):
        _compare_weights(report, straight_weights, resumed_weights)


def _compare_logged_losses(report: ResumeReport) -> bool:
    """Name the first logged ``loss``, else the ``train_loss``, that differs; True if one does.

    Every step agreed by now, so a difference here means the resume lost the losses logged (or
    summed into ``train_loss``) before the stop.
    """
    straight, resumed = report.straight_logged, report.resumed_logged
    differences = [
        (step, "logged loss", straight.get(step), resumed.get(step))
        for step in sorted(set(straight) | set(resumed))
        if not _same_number(straight.get(step), resumed.get(step))
    ]
    if not _same_number(report.straight_train_loss, report.resumed_train_loss):
        differences.append((report.max_steps, "train_loss", report.straight_train_loss, report.resumed_train_loss))
    if not differences:
        return False
    step, quantity, a, b = differences[0]
    report.step, report.quantity = step, quantity
    report.first_difference = f"step {step}: {quantity} differs: straight {a}, resumed {b}"
    return True


def _same_number(a: Optional[float], b: Optional[float]) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def _compare_weights(report: ResumeReport, straight: dict, resumed: dict) -> None:
    import torch

    for name in sorted(set(straight) | set(resumed)):
        a, b = straight.get(name), resumed.get(name)
        if a is None or b is None or a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            detail = ""
            if a is not None and b is not None and a.shape == b.shape and a.is_floating_point():
                detail = f" (max abs difference {float((a.double() - b.double()).abs().max()):.3g})"
            report.quantity = "weights"
            report.first_difference = f"final weights differ in {name!r}{detail}"
            return


def run_cli(args: Any, stop_at: int, verbose: bool = False) -> int:
    """``treadle verify-resume``: print the report; exit 0 when identical, 1 otherwise."""
    import sys

    report = verify_resume(args, stop_at, progress=lambda line: print(line, file=sys.stderr, flush=True), verbose=verbose)
    print(report)
    return 0 if report.identical else 1
