"""The seeds' smaller Trainer methods: context managers, counts, model card, hub repository.

They are part of the familiar API (scripts and subclasses call them) but not of the loop, so
they live here and ``Trainer`` inherits them; each only reads the run's components (strategy,
precision, hub) through their contracts.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from typing import Any, Optional

from treadle.errors import UsageError
from treadle.metrics import metrics_format


class SeedTrainerMethods:
    """Mixed into ``treadle.Trainer``; see each method."""

    # -- contexts -------------------------------------------------------------------------------

    def autocast_smart_context_manager(self, cache_enabled: Optional[bool] = True) -> contextlib.AbstractContextManager:
        """The run precision's autocast context for a forward pass (a null context in fp32)."""
        return self.precision.forward_context()

    def compute_loss_context_manager(self) -> contextlib.AbstractContextManager:
        """The context ``compute_loss`` runs in (override to add one, e.g. for sequence parallelism)."""
        return self.autocast_smart_context_manager()

    # -- batches, groups, counts -----------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any = None) -> tuple[list[Any], Any]:
        """The next ``num_batches`` batches and the number of items (label tokens) they hold together.

        The count is what a loss summed over items is divided by, so that accumulated
        micro-batches give the gradient of one large batch (None when nothing can be counted).
        """
        batches = list(itertools.islice(epoch_iterator, num_batches))
        if not batches:
            return batches, None
        prepared = [self._prepare_inputs(batch) for batch in batches]
        return batches, self._items_in_step(prepared)

    def get_optimizer_group(self, param: Any = None) -> Any:
        """The optimizer's parameter group holding ``param``; without one, every group's parameters."""
        if self.optimizer is None:
            raise UsageError("get_optimizer_group: there is no optimizer yet; call create_optimizer() or train() first")
        if param is not None:
            for group in self.optimizer.param_groups:
                if any(p is param for p in group["params"]):
                    return group
            raise UsageError("get_optimizer_group: that parameter is in none of the optimizer's groups")
        return [group["params"] for group in self.optimizer.param_groups]

    def metrics_format(self, metrics: dict[str, Any]) -> dict[str, str]:
        """Metrics for reading: runtimes as h:mm:ss, FLOs in GF, floats rounded."""
        return metrics_format(metrics)

    def set_initial_training_values(self, args: Any, dataloader: Any, total_train_batch_size: int) -> tuple:
        """``(num_train_epochs, num_update_steps_per_epoch, num_examples, num_train_samples,
        epoch_based, len_dataloader, max_steps)`` for ``dataloader``, as training will lay it out."""
        plan = self._plan_training(dataloader)
        epoch_based = args.max_steps <= 0
        len_dataloader = len(dataloader) if plan.steps_per_epoch is not None else None
        num_examples = self.num_examples(dataloader) if len_dataloader is not None else total_train_batch_size * plan.max_steps
        if epoch_based:
            num_train_samples = int(num_examples * args.num_train_epochs)
        else:
            num_train_samples = plan.max_steps * total_train_batch_size
        num_epochs = plan.num_epochs if plan.steps_per_epoch is not None else math.inf
        return num_epochs, plan.steps_per_epoch, num_examples, num_train_samples, epoch_based, len_dataloader, plan.max_steps

    def get_tp_size(self) -> int:
        """Tensor-parallel degree of the run (1 unless the strategy shards tensors)."""
        return int(getattr(self.strategy, "tp_size", 1) or 1)

    def get_cp_size(self) -> int:
        """Context-parallel degree of the run (1 unless the strategy splits sequences)."""
        return int(getattr(self.strategy, "cp_size", 1) or 1)

    def get_sp_size(self) -> int:
        """Sequence-parallel degree of the run (1 unless the strategy splits sequences)."""
        return int(getattr(self.strategy, "sp_size", 1) or 1)

    # -- strategy-specific ------------------------------------------------------------------------

    def propagate_args_to_deepspeed(self, auto_find_batch_size: bool = False) -> Any:
        """Write the current arguments (batch size after ``auto_find_batch_size``) into the strategy's
        engine config; only a strategy with such a config (``propagate_args``) can."""
        propagate = getattr(self.strategy, "propagate_args", None)
        if propagate is None:
            raise UsageError(
                f"propagate_args_to_deepspeed: the run's strategy {self.component_specs['strategy'].name!r} has no "
                "DeepSpeed config to update; select DeepSpeed with --deepspeed ds_config.json (plugin treadle-deepspeed)"
            )
        return propagate(self.args, auto_find_batch_size=auto_find_batch_size)

    # -- evaluation ------------------------------------------------------------------------------

    def prediction_loop(
        self, dataloader: Any, description: str, prediction_loss_only: Optional[bool] = None,
        ignore_keys: Optional[list[str]] = None, metric_key_prefix: str = "eval",
    ) -> Any:
        """The loop ``evaluate`` / ``predict`` use with ``use_legacy_prediction_loop``.

        The seeds' legacy loop differs only in how it preallocates its buffers; here both names
        run the same loop, so a subclass overriding either keeps its behaviour.
        """
        return self.evaluation_loop(
            dataloader, description, prediction_loss_only=prediction_loss_only, ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )

    def _inference_loop(self) -> Any:
        return self.prediction_loop if self.args.use_legacy_prediction_loop else self.evaluation_loop

    # -- model card and hub repository -----------------------------------------------------------

    def create_model_card(
        self, language: Optional[str] = None, license: Optional[str] = None, tags: Any = None,
        model_name: Optional[str] = None, finetuned_from: Optional[str] = None, tasks: Any = None,
        dataset_tags: Any = None, dataset: Any = None, dataset_args: Any = None,
    ) -> Optional[str]:
        """Write ``README.md`` (a model card) in ``output_dir`` on the main process; return its path.

        An installed plugin implementing ``treadle_render_model_card`` (treadle-hub) writes the
        card; without one a plain card lists the arguments, the final metrics and the versions.
        """
        if not self.is_world_process_zero():
            return None
        details = {
            "language": language, "license": license, "tags": tags, "model_name": model_name,
            "finetuned_from": finetuned_from, "tasks": tasks, "dataset_tags": dataset_tags, "dataset": dataset,
            "dataset_args": dataset_args,
        }
        details = {k: v for k, v in details.items() if v is not None}
        from treadle.plugins import get_plugin_manager

        text = get_plugin_manager().pm.hook.treadle_render_model_card(trainer=self, details=details)
        if text is None:
            from treadle.model_card import plain_model_card

            text = plain_model_card(self, details)
        os.makedirs(self.args.output_dir, exist_ok=True)
        path = os.path.join(self.args.output_dir, "README.md")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return path

    def init_hf_repo(self, token: Optional[str] = None) -> Any:
        """Create (or find) the hub repository of ``hub_model_id`` through the run's hub plugin."""
        if self.hub is None:
            raise UsageError(
                "init_hf_repo needs --push_to_hub with an installed hub plugin (treadle-hub): there is no hub for this run"
            )
        return self.hub.init_repo(token=token)

    def init_git_repo(self, at_init: bool = False) -> Any:
        """The seeds' older name of ``init_hf_repo`` (repositories are no longer git clones)."""
        return self.init_hf_repo()
