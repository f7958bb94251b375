"""Seq2SeqTrainer: evaluation and prediction through ``model.generate``.

With ``predict_with_generate``, each evaluation batch is generated (``generation_max_length``,
``generation_num_beams``, ``generation_config`` and the ``**gen_kwargs`` of ``evaluate`` /
``predict``), so ``compute_metrics`` sees token ids it can score (BLEU, ROUGE, exact match)
instead of logits. Batches of different lengths are padded with -100 into one array, like labels.
Any model with a ``generate`` method works; a transformers model gets its ``GenerationConfig``
(loaded from a directory or built from a dict) without the core importing transformers unless
that is what the user handed over.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import torch
from torch import nn

from treadle.args import TrainingArguments
from treadle.data import LengthGroupedSampler, has_length, sample_lengths
from treadle.errors import UsageError
from treadle.model_io import unwrap_compiled
from treadle.trainer import Trainer

__all__ = ["Seq2SeqTrainer", "Seq2SeqTrainingArguments"]

GENERATED_PAD = -100
"""What generated sequences are padded with to one length (as the seeds' labels are)."""


@dataclasses.dataclass(repr=False)
class Seq2SeqTrainingArguments(TrainingArguments):
    """``TrainingArguments`` for ``Seq2SeqTrainer``.

    The generation fields (``predict_with_generate``, ``generation_max_length``,
    ``generation_num_beams``, ``generation_config``, ``sortish_sampler``) are part of treadle's
    one schema, so the command line and config files know them; this class exists so that code
    written for transformers imports and serialises the same way.
    """

    def to_dict(self) -> dict[str, Any]:
        """As ``TrainingArguments.to_dict``, with a ``GenerationConfig`` object written as a dict."""
        values = super().to_dict()
        config = values.get("generation_config")
        if config is not None and hasattr(config, "to_dict"):
            values["generation_config"] = config.to_dict()
        return values


class Seq2SeqTrainer(Trainer):
    """A Trainer whose evaluation can generate (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gen_kwargs: dict[str, Any] = {}
        self._generation_defaults = self._apply_generation_config(self.args.generation_config)

    # -- generation settings ----------------------------------------------------------------------

    def _apply_generation_config(self, value: Any) -> dict[str, Any]:
        """Give a transformers model its ``GenerationConfig``; return plain ``generate`` keyword
        arguments for any other model (from a dict, a JSON file, or a config object's fields)."""
        if value is None:
            return {}
        model = unwrap_compiled(self.model) if self.model is not None else None
        takes_config = model is not None and hasattr(model, "generation_config")
        if isinstance(value, (str, os.PathLike)):
            value = _read_generation_config(os.fspath(value), as_object=takes_config)
        elif isinstance(value, dict) and takes_config:
            value = _generation_config_class()(**value)
        elif not isinstance(value, dict) and not hasattr(value, "to_dict"):
            raise UsageError(f"generation_config must be a path, a dict or a GenerationConfig, got {type(value).__name__}")
        if isinstance(value, dict):
            return dict(value)
        if takes_config:
            model.generation_config = value
            return {}
        return dict(value.to_diff_dict() if hasattr(value, "to_diff_dict") else value.to_dict())

    def _generate_kwargs(self, given: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of ``generate``: those given, then the arguments' defaults."""
        kwargs = dict(given)
        if "max_new_tokens" not in kwargs and kwargs.get("max_length") is None and self.args.generation_max_length is not None:
            kwargs["max_length"] = self.args.generation_max_length
        if kwargs.get("num_beams") is None and self.args.generation_num_beams is not None:
            kwargs["num_beams"] = self.args.generation_num_beams
        kwargs = {**self._generation_defaults, **kwargs}  # a model without a GenerationConfig: keyword arguments
        return {k: v for k, v in kwargs.items() if v is not None}

    # -- evaluation and prediction ------------------------------------------------------------------

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: Optional[list[str]] = None, metric_key_prefix: str = "eval",
        **gen_kwargs: Any,
    ) -> dict[str, float]:
        """``Trainer.evaluate``; ``gen_kwargs`` (``max_length``, ``num_beams``, ...) go to ``generate``."""
        self._gen_kwargs = self._generate_kwargs(gen_kwargs)
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def predict(
        self, test_dataset: Any, ignore_keys: Optional[list[str]] = None, metric_key_prefix: str = "test", **gen_kwargs: Any
    ) -> Any:
        """``Trainer.predict``; with ``predict_with_generate`` the predictions are generated ids (-100 padded)."""
        self._gen_kwargs = self._generate_kwargs(gen_kwargs)
        return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def prediction_step(
        self, model: nn.Module, inputs: Any, prediction_loss_only: bool, ignore_keys: Optional[list[str]] = None,
        **gen_kwargs: Any,
    ) -> tuple[Optional[torch.Tensor], Any, Any]:
        """``(loss, generated ids, labels)`` with ``predict_with_generate``; otherwise as ``Trainer``."""
        if not self.args.predict_with_generate or prediction_loss_only:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        inputs = self._prepare_inputs(inputs)
        kwargs = {**self._gen_kwargs, **gen_kwargs} if gen_kwargs else self._gen_kwargs or self._generate_kwargs({})
        generator = unwrap_compiled(self.strategy.unwrap_model(model))
        generate = getattr(generator, "generate", None)
        if not callable(generate):
            raise UsageError(
                f"predict_with_generate: {type(generator).__name__} has no generate() method; give the model one "
                "(transformers' generation models have it) or evaluate without --predict_with_generate"
            )
        # what the model would be given as targets is not an input to generation
        source = {k: v for k, v in inputs.items() if k not in ("labels", "decoder_input_ids", "decoder_attention_mask")}
        with torch.no_grad(), (self.eval_precision or self.precision).eval_context():
            generated = generate(**source, **kwargs)
        if hasattr(generated, "sequences"):  # a ModelOutput of generate(return_dict_in_generate=True)
            generated = generated.sequences
        generated = _pad_to(generated, kwargs.get("max_length"), self._generation_pad_id(generator))
        loss, labels = None, inputs.get("labels")
        if labels is not None:
            with torch.no_grad(), (self.eval_precision or self.precision).eval_context():
                loss, _ = self._compute_eval_loss(model, inputs)
            loss = loss.detach().mean()
            labels = _pad_to(labels, kwargs.get("max_length"), GENERATED_PAD)
        return loss, generated, labels

    def _generation_pad_id(self, model: Any) -> int:
        """The model's pad token for padding one batch up to ``max_length`` (else -100)."""
        for holder in (getattr(model, "generation_config", None), getattr(model, "config", None)):
            pad = getattr(holder, "pad_token_id", None)
            if pad is not None:
                return int(pad)
        return GENERATED_PAD

    # -- sortish sampler ----------------------------------------------------------------------------

    def _get_train_sampler(self, dataset: Any) -> Any:
        """``sortish_sampler``: length-grouped batches (less padding), shuffled per epoch and resumable."""
        if not self.args.sortish_sampler or not has_length(dataset) or isinstance(dataset, torch.utils.data.IterableDataset):
            return super()._get_train_sampler(dataset)
        replicas, rank = self.strategy.shard_info()
        lengths = sample_lengths(dataset, self.args.length_column_name, getattr(self.model, "main_input_name", "input_ids"))
        batch = self._train_batch_size * self.args.gradient_accumulation_steps
        return LengthGroupedSampler(lengths, batch, seed=self._data_seed(), num_replicas=replicas, rank=rank)


def _generation_config_class() -> Any:
    try:
        from transformers import GenerationConfig
    except ImportError:
        raise UsageError("generation_config for a transformers model needs transformers installed") from None
    return GenerationConfig


def _read_generation_config(path: str, as_object: bool) -> Any:
    """A directory or file of a saved ``GenerationConfig``: the object (transformers) or its dict."""
    file = os.path.join(path, "generation_config.json") if os.path.isdir(path) else path
    if as_object:
        directory, name = os.path.split(file)
        try:
            return _generation_config_class().from_pretrained(directory or ".", config_file_name=name)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--generation_config {path}: {exc}") from None
    try:
        with open(file, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--generation_config {path}: cannot read a generation config there ({exc})") from None


def _pad_to(tensor: Any, length: Optional[int], pad: int) -> Any:
    """Pad the last dimension of a batch of sequences up to ``length`` (a no-op when longer or unset)."""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() < 2 or length is None or tensor.shape[-1] >= length:
        return tensor
    padded = tensor.new_full((*tensor.shape[:-1], length), pad)
    padded[..., : tensor.shape[-1]] = tensor
    return padded

