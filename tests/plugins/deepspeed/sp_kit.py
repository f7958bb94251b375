"""A tiny causal transformer and the runs of the sequence-parallel tests (see test_ds_sequence_parallel.py).

``TinyCausalLM`` is plain torch: learned positions read from ``position_ids``, attention through
``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``, and a next-token loss that
takes pre-shifted ``shift_labels`` (the strategy makes them before splitting the sequence). The
first tokens of each sample carry no label (a prompt), so the two halves of a sequence hold
different numbers of label tokens and the halves' losses must be weighted to match one process.

Run as a script under torchrun, it holds one process group and trains several times in it,
writing what each run saw to ``facts-<rank>.json`` in the run's output directory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

VOCAB, SEQ, WIDTH, HEADS, PROMPT = 32, 16, 16, 4, 3
SP = {"sp_size": 2}
ZERO2 = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto", "gradient_clipping": "auto"}
ZERO3 = {"zero_optimization": {"stage": 3}}


class Attention(nn.Module):
    def __init__(self, heads: int, by_hand: bool = False) -> None:
        super().__init__()
        self.num_heads, self.by_hand = heads, by_hand
        # no bias on q/k/v: softmax ignores a key bias, so its gradient is rounding noise that Adam
        # would turn into lr-sized steps, different in every summation order
        self.qkv, self.out = nn.Linear(WIDTH, 3 * WIDTH, bias=False), nn.Linear(WIDTH, WIDTH)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, _ = h.shape
        q, k, v = (x.view(b, t, self.num_heads, -1).transpose(1, 2) for x in self.qkv(h).chunk(3, dim=-1))
        if self.by_hand:  # attention that never calls SDPA: sequence parallelism cannot route it
            mask = torch.ones(t, t, dtype=torch.bool, device=h.device).tril()
            scores = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).masked_fill(~mask, float("-inf"))
            att = scores.softmax(-1) @ v
        else:
            att = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(att.transpose(1, 2).reshape(b, t, WIDTH))


class Layer(nn.Module):
    def __init__(self, heads: int, by_hand: bool = False) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.attn = Attention(heads, by_hand)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 2 * WIDTH), nn.GELU(), nn.Linear(2 * WIDTH, WIDTH))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h))
        return h + self.mlp(self.norm2(h))


class TinyCausalLM(nn.Module):
    def __init__(self, heads: int = HEADS, by_hand: bool = False) -> None:
        super().__init__()
        self.embed, self.positions = nn.Embedding(VOCAB, WIDTH), nn.Embedding(SEQ, WIDTH)
        self.layers = nn.ModuleList(Layer(heads, by_hand) for _ in range(2))
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, shift_labels: torch.Tensor | None = None) -> dict[str, Any]:
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        h = self.embed(input_ids) + self.positions(position_ids)
        for layer in self.layers:
            h = layer(h)
        logits = self.head(h)
        result: dict[str, Any] = {"logits": logits}
        if labels is not None:
            targets = shift_labels if shift_labels is not None else nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
            result["loss"] = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-100)
        return result


def tiny_causal_lm() -> TinyCausalLM:
    return TinyCausalLM()  # model_init takes no argument (one argument would be the search trial)


def one_headed_lm() -> TinyCausalLM:
    return TinyCausalLM(heads=1)


def hand_attention_lm() -> TinyCausalLM:
    return TinyCausalLM(by_hand=True)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, samples: int = 64, seed: int = 0) -> None:
        self.ids = torch.randint(0, VOCAB, (samples, SEQ), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        labels = self.ids[i].clone()
        labels[:PROMPT] = -100
        return {"input_ids": self.ids[i], "labels": labels}


def tiny_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2,
                         num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=SEQ,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config)


def train(output_dir: Any, resume: Any = None, model_init: Any = tiny_causal_lm, **overrides: Any) -> None:
    from treadle import Trainer, TrainingArguments

    options = dict(
        output_dir=str(output_dir), use_cpu=True, per_device_train_batch_size=8, max_steps=6, learning_rate=0.01,
        optim="adamw_torch", lr_scheduler_type="linear", warmup_steps=1, max_grad_norm=1.0, logging_steps=1,
        save_strategy="no", report_to="none", seed=7, dataloader_drop_last=True, disable_tqdm=True,
        per_device_eval_batch_size=8, include_num_input_tokens_seen=True, label_names=["labels"],  # shift_labels is made by the strategy, not the data
    )
    options.update(overrides)
    trainer = Trainer(args=TrainingArguments(**options), train_dataset=Tokens(), eval_dataset=Tokens(24, seed=1),
                      model_init=model_init)
    with trainer:
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model()
        evaluated = trainer.evaluate()
        facts = {
            "sizes": [trainer.get_tp_size(), trainer.get_cp_size(), trainer.get_sp_size()],
            "total_batch": trainer.get_total_train_batch_size(),
            "shard_info": list(trainer.strategy.shard_info()),
            "strategy": trainer.strategy.name,
            "loss": [e["loss"] for e in trainer.state.log_history if "loss" in e],
            "grad_norm": [e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e],
            "eval_loss": evaluated["eval_loss"],
            "tokens_seen": trainer.state.num_input_tokens_seen,
        }
        Path(output_dir, f"facts-{trainer.args.process_index}.json").write_text(json.dumps(facts))


def refused(output_dir: Any, **overrides: Any) -> str:
    """The message of a run the strategy refuses (written next to the runs by rank 0)."""
    from treadle.errors import UsageError

    try:
        train(output_dir, **overrides)
    except UsageError as exc:
        return str(exc)
    return "(not refused)"


def main(root: str, with_transformers: bool) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")  # the launcher's group: every run below adopts it
    try:
        # 2 accumulation micro-batches of 4: the loop's accumulation weights and the slices' weights compose
        sp = dict(deepspeed=ZERO2, parallelism_config=SP, per_device_train_batch_size=4, gradient_accumulation_steps=2)
        train(f"{root}/sp", save_strategy="steps", save_steps=3, **sp)
        train(f"{root}/sp_resumed", resume=f"{root}/sp/checkpoint-3", **sp)
        train(f"{root}/sp_zero3", deepspeed=ZERO3, parallelism_config=SP)  # parameters partitioned over both ranks
        messages = {
            "heads": refused(f"{root}/odd_heads", model_init=one_headed_lm, **sp),
            "unrouted": refused(f"{root}/unrouted", model_init=hand_attention_lm, **sp),
            "zero3_all_reduce": refused(f"{root}/zero3_all_reduce", parallelism_config=SP,
                                        deepspeed={"zero_optimization": {"stage": 3, "reduce_scatter": False}}),
        }
        if with_transformers:  # ZeRO-0: the engine's plain all-reduce over the sequence-data-parallel group
            train(f"{root}/llama_sp", model_init=tiny_llama, deepspeed={}, parallelism_config=SP)
        if dist.get_rank() == 0:
            Path(root, "refused.json").write_text(json.dumps(messages))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "1")
