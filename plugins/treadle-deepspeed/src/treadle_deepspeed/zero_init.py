"""ZeRO-3 model construction: each process holds only its partition of the weights from the start.

The ZeRO-3 engine partitions the parameters anyway, but a model first built whole on every
process needs the whole model's memory on each of them, which is what ZeRO-3 is chosen to
avoid. ``deepspeed.zero.Init`` partitions every module's parameters as its constructor returns,
so the task's model (or ``model_init``'s) is never whole on a process. The strategy enters it in
``model_init_context`` (after joining the process group it partitions over); ``deepspeed.initialize``
then adopts the partitioned parameters as they are. accelerate's ``zero3_init_flag`` and
transformers' ``HfDeepSpeedConfig`` do the same; ``--deepspeed_zero3_init false`` turns it off
for a task that edits its weights right after building them (such code sees empty partitions).

transformers' ``from_pretrained`` can load a checkpoint into partitions only when it is told the
run is ZeRO-3 (it then gathers each layer while loading it): ``TransformersZero3`` keeps
transformers' global ``HfDeepSpeedConfig`` alive for the strategy's lifetime. The same flag makes
``generate`` keep the processes in step (``synced_gpus``) when they finish at different lengths.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
from collections.abc import Iterator
from typing import Any

from treadle.errors import TreadleError, UsageError

# what a model's construction raises when it cannot run on partitioned parameters
_BUILD_ERRORS = (RuntimeError, ValueError, TypeError, AssertionError, IndexError)


def without_optimizer(config: dict[str, Any]) -> dict[str, Any]:
    """The user's config less its optimizer and scheduler sections, for ``zero.Init``.

    ``zero.Init`` reads ZeRO's settings, the precision and the batch layout; the optimizer and
    scheduler are built later, with the model, and their ``"auto"`` lengths are not known yet.
    """
    return {key: copy.deepcopy(value) for key, value in config.items() if key not in ("optimizer", "scheduler")}


class TransformersZero3:
    """transformers' global ZeRO-3 flag (``HfDeepSpeedConfig``), held while the strategy runs.

    Nothing happens when transformers is not installed. When it is but cannot take the flag
    (its DeepSpeed integration needs accelerate), ``problem`` says why, for the error a failing
    ``from_pretrained`` then gets.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config: Any = None
        self.problem: str | None = None
        if importlib.util.find_spec("transformers") is None:
            return
        try:
            from transformers.integrations import HfDeepSpeedConfig

            self.config = HfDeepSpeedConfig(copy.deepcopy(config))
        except (ImportError, RuntimeError, ValueError) as exc:  # accelerate missing or too old
            self.problem = f"transformers could not be told the run is ZeRO-3 ({exc})"

    def release(self) -> None:
        """Forget the flag (a later run in this process may not be ZeRO-3)."""
        if self.config is None:
            return
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        self.config = None


@contextlib.contextmanager
def partitioned_construction(
    config: dict[str, Any], transformers_flag: TransformersZero3, sequence_parallel: Any = None
) -> Iterator[None]:
    """Build modules inside ``deepspeed.zero.Init``; a construction that fails there says how to opt out.

    ``sequence_parallel``: DeepSpeed's sequence-parallel ``mpu`` (``parallel_state_sp``), whose
    data-parallel size the batch layout counts and whose sequence-data-parallel group (every
    rank) the engine partitions over.
    """
    # zero.Init patches torch.Tensor.new; torch._dynamo, imported for the first time under the
    # patch (transformers does, through torch.compiler), then rejects the patched signature
    import torch._dynamo  # noqa: F401
    import deepspeed

    placement: dict[str, Any] = {}
    if sequence_parallel is not None:
        placement = {"mpu": sequence_parallel, "data_parallel_group": sequence_parallel.get_sequence_data_parallel_group()}
    with deepspeed.zero.Init(config_dict_or_path=config, **placement):
        try:
            yield
        except UsageError:
            raise
        except Exception as exc:
            # the task's own error arrives wrapped by the core (TreadleError from ``build_task``)
            cause = exc.__cause__ if isinstance(exc, TreadleError) else exc
            if not isinstance(cause, _BUILD_ERRORS):
                raise
            what = str(exc).strip() if isinstance(exc, TreadleError) else f"{type(exc).__name__}: {exc}"
            hint = f"\n{transformers_flag.problem}: pip install accelerate" if transformers_flag.problem else ""
            raise UsageError(
                f"strategy deepspeed: building the model under ZeRO-3's deepspeed.zero.Init failed: {what}{hint}\n"
                "Code that reads or edits weights right after building them sees empty partitions there; pass "
                "--deepspeed_zero3_init false to build the whole model on every process first"
            ) from exc


__all__ = ["TransformersZero3", "partitioned_construction", "without_optimizer"]
