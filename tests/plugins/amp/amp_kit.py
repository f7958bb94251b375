"""The demo task, quick arguments, and a callback that disturbs one chosen step (for overflow tests)."""

from __future__ import annotations

from typing import Any

import torch

from treadle.args import TrainingArguments
from treadle.builtin import demo_task
from treadle.components import TaskParts
from treadle.markers import hookimpl
from treadle.trainer import Trainer


def make_args(tmp_path: Any, **overrides: Any) -> TrainingArguments:
    values: dict[str, Any] = dict(
        output_dir=str(tmp_path / "out"), max_steps=40, per_device_train_batch_size=32, per_device_eval_batch_size=256,
        learning_rate=3e-3, seed=7, report_to=["none"], disable_tqdm=True, save_strategy="no",
        logging_strategy="steps", logging_steps=10,
    )
    values.update(overrides)
    return TrainingArguments(**values)


class DisturbStep:
    """At optimizer step ``at`` (1-based), multiply the training loss by ``factor`` inside the forward.

    ``factor=1e6`` leaves the float32 loss finite but makes float16 gradients overflow once scaled;
    ``factor=nan`` makes the loss itself non-finite (what the NaN/Inf policy sees).
    """

    def __init__(self, at: int, factor: float) -> None:
        self.at, self.factor = at, factor
        self.active = False
        self.handle = None

    @hookimpl
    def treadle_on_step_begin(self, trainer: Any, state: Any) -> None:
        self.active = state.global_step + 1 == self.at
        if self.handle is None:
            self.handle = trainer.model.register_forward_hook(self._hook)

    def _hook(self, module: Any, inputs: Any, output: Any) -> Any:
        if self.active and module.training and "loss" in output:
            return {**output, "loss": output["loss"] * self.factor}
        return output


def disturbed_demo(at: int, factor: float):
    """A task function (for ``verify_resume``): the demo task with ``DisturbStep`` among its callbacks."""

    def build(args: Any) -> TaskParts:
        parts = demo_task.build(args)
        parts.callbacks = [DisturbStep(at, factor)]
        return parts

    return build


def demo_trainer(args: TrainingArguments, callbacks: Any = None) -> Trainer:
    parts = demo_task.build(args)
    return Trainer(parts.model, args, train_dataset=parts.train_dataset, eval_dataset=parts.eval_dataset,
                   compute_metrics=parts.compute_metrics, callbacks=callbacks)


def losses(trainer: Trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class WeightsFingerprint:
    """Writes this rank's weight checksum to ``output_dir/weights-rank<r>.txt`` when training ends."""

    @hookimpl
    def treadle_on_train_end(self, trainer: Any, args: Any) -> None:
        import hashlib
        import os

        digest = hashlib.sha256()
        for name, value in sorted(trainer.model.state_dict().items()):
            digest.update(name.encode() + value.detach().cpu().numpy().tobytes())
        with open(os.path.join(args.output_dir, f"weights-rank{trainer.strategy.global_rank}.txt"), "w") as handle:
            handle.write(digest.hexdigest())


def overflow_on_rank0(args: Any) -> TaskParts:
    """``--task amp_kit:overflow_on_rank0``: the demo task; rank 0 alone overflows at step 3."""
    import os

    parts = demo_task.build(args)
    factor = 1e6 if os.environ.get("RANK", "0") == "0" else 1.0
    parts.callbacks = [DisturbStep(3, factor), WeightsFingerprint()]
    return parts
