"""parallelism_config on 4 gloo processes: FSDP2 over dp=2 composed with tensor parallel over tp=2.

A tiny causal transformer whose attention and MLP projections carry a transformers-style
``_tp_plan`` trains for 4 steps (global batch 16) three ways in the same four processes:
dp=2 x tp=2, plain FSDP on 4 ranks, dp=2 x tp=2 resumed from its step-2 DCP checkpoint, and
replicate=2 x tp=2 (HSDP). All but the resumed one must agree with a one-process run of batch 16
within float tolerance; the resumed
run must end where the uninterrupted one did; the step-2 checkpoint must also resume in one
process. Sequence parallel is refused with a message (DeepSpeed's engine); context parallel has
its own tests (test_context_parallel.py).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from fsdp_kit import run_ranks
from torch import nn
from treadle.errors import UsageError

VOCAB, SEQ, WIDTH, HEADS = 32, 8, 16, 2


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # no key bias: softmax ignores it, so its gradient is rounding noise that Adam would blow up to lr-sized steps
        self.q, self.k, self.v, self.o = (nn.Linear(WIDTH, WIDTH, bias=name != "k") for name in "qkvo")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, _ = h.shape
        # -1 heads: on a tp rank q/k/v hold only that rank's heads
        q, k, v = (proj(h).view(b, t, -1, WIDTH // HEADS).transpose(1, 2) for proj in (self.q, self.k, self.v))
        out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(out.transpose(1, 2).reshape(b, t, -1))


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.attn = Attention()
        self.up, self.down = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h))
        return h + self.down(torch.relu(self.up(self.norm2(h))))


class TinyLM(nn.Module):
    _no_split_modules = ["Layer"]
    _tp_plan = {
        "layers.*.attn.q": "colwise", "layers.*.attn.k": "colwise", "layers.*.attn.v": "colwise",
        "layers.*.attn.o": "rowwise", "layers.*.up": "colwise", "layers.*.down": "rowwise",
    }

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.layers = nn.ModuleList(Layer() for _ in range(2))
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.embed(input_ids)
        for layer in self.layers:
            h = layer(h)
        logits = self.head(h)
        result = {"logits": logits}
        if labels is not None:
            result["loss"] = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1))
        return result


def dataset() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (64, SEQ + 1), generator=g)
    return torch.utils.data.TensorDataset(ids[:, :-1], ids[:, 1:])


ND = {"dp_shard_size": 2, "tp_size": 2}


class _Lines(logging.Handler):
    """The run's own log lines (the training plan names the total batch size)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _accuracy(prediction) -> dict[str, float]:
    """Next-token accuracy over every gathered sample (a sample gathered twice would shift it)."""
    logits, labels = prediction.predictions, prediction.label_ids
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


def train(output_dir, resume=None, model_init=TinyLM, data=dataset, **overrides):
    from treadle import Trainer, TrainingArguments

    options = dict(
        output_dir=str(output_dir), use_cpu=True, per_device_train_batch_size=8, max_steps=4, learning_rate=0.01,
        optim="adamw_torch", lr_scheduler_type="linear", warmup_steps=1, max_grad_norm=0.5, logging_steps=1,
        save_strategy="no", report_to="none", seed=7, dataloader_drop_last=True, disable_tqdm=True, log_level="info",
    )
    options.update(overrides)
    trainer = Trainer(args=TrainingArguments(**options), train_dataset=data(), eval_dataset=data(),
                      model_init=model_init, compute_metrics=_accuracy)
    logged = _Lines()
    logging.getLogger("treadle").addHandler(logged)
    with trainer:
        try:
            trainer.train(resume_from_checkpoint=resume)
        finally:
            logging.getLogger("treadle").removeHandler(logged)
        trainer.save_model()
        evaluated = trainer.evaluate()
        facts = {
            "eval": [evaluated["eval_loss"], evaluated["eval_accuracy"]],
            "sizes": [trainer.get_tp_size(), trainer.get_cp_size(), trainer.get_sp_size()],
            "total_batch": trainer.get_total_train_batch_size(),
            "plan": [line for line in logged.lines if line.startswith("training:")],
            "shard_info": list(trainer.strategy.shard_info()),
            "loss": [e["loss"] for e in trainer.state.log_history if "loss" in e],
            "grad_norm": [e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e],
        }
        Path(output_dir, f"facts-{trainer.args.process_index}.json").write_text(json.dumps(facts))
    return trainer


def _four_ranks(rank: int, root: str) -> None:
    nd = dict(strategy="fsdp", parallelism_config=ND, fsdp_config={"state_dict_type": "FULL_STATE_DICT"})
    train(f"{root}/nd", save_strategy="steps", save_steps=2, **nd)
    train(f"{root}/fsdp4", strategy="fsdp", per_device_train_batch_size=4)
    train(f"{root}/nd_resumed", resume=f"{root}/nd/checkpoint-2", **nd)
    # HSDP x tp: two replicas of a model split over tp (nothing left to shard over data)
    train(f"{root}/hsdp_tp", strategy="fsdp", parallelism_config={"dp_replicate_size": 2, "tp_size": 2})


def _one_rank_resume(rank: int, root: str) -> None:
    train(f"{root}/one_resumed", resume=f"{root}/nd/checkpoint-2", strategy="fsdp", per_device_train_batch_size=16)


def _weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def _facts(path, rank=0) -> dict:
    return json.loads(Path(path, f"facts-{rank}.json").read_text())


def _assert_close(output, reference, atol=1e-5):
    got, want = _weights(output), _weights(reference)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=atol, rtol=1e-4, msg=f"{output}: {key}")
    for series in ("loss", "grad_norm", "eval"):
        torch.testing.assert_close(_facts(output)[series], _facts(reference)[series], atol=1e-5, rtol=1e-4)


def test_dp2_tp2_trains_like_fsdp_and_one_process_and_resumes(tmp_path):
    train(tmp_path / "single", per_device_train_batch_size=16)
    run_ranks(4, _four_ranks, str(tmp_path), timeout=300)
    nd, single = tmp_path / "nd", tmp_path / "single"

    # the tp-split model gathers into the plain module's state dict, and trains like the others
    TinyLM().load_state_dict(_weights(nd), strict=True)
    _assert_close(nd, single)
    _assert_close(tmp_path / "fsdp4", single)
    _assert_close(tmp_path / "hsdp_tp", single)
    assert len(_facts(single)["loss"]) == 4 and all(math.isfinite(x) for x in _facts(nd)["loss"])

    # sizes and data-parallel accounting: ranks (0,1) and (2,3) are tp pairs sharing batches
    shard_infos = [_facts(nd, rank)["shard_info"] for rank in range(4)]
    assert shard_infos == [[2, 0], [2, 0], [2, 1], [2, 1]]
    assert _facts(nd)["sizes"] == [2, 1, 1] and _facts(tmp_path / "fsdp4")["sizes"] == [1, 1, 1]
    assert _facts(nd)["total_batch"] == 16 == _facts(tmp_path / "fsdp4")["total_batch"]
    assert "(batch 8 per device, 16 per step)" in _facts(nd)["plan"][0]

    # a DCP checkpoint of the 2 x 2 mesh: every rank's shard, plus a consolidated model.safetensors
    files = {p.name for p in (nd / "checkpoint-2" / "fsdp").iterdir()}
    assert {".metadata", *(f"__{r}_0.distcp" for r in range(4))} <= files
    TinyLM().load_state_dict(_weights(nd / "checkpoint-2"), strict=True)

    # resumed on the same mesh: the same run, bitwise
    for key, value in _weights(nd).items():
        assert torch.equal(_weights(tmp_path / "nd_resumed")[key], value), key
    assert _facts(tmp_path / "nd_resumed")["loss"] == _facts(nd)["loss"]  # steps 1-2 come from the checkpoint

    # and resharded onto one process
    run_ranks(1, _one_rank_resume, str(tmp_path))
    got = _weights(tmp_path / "one_resumed")
    for key, value in _weights(nd).items():
        torch.testing.assert_close(got[key], value, atol=1e-5, rtol=1e-4, msg=key)


# ------------------------------------------------------------------------- a transformers model


class TokenRows(torch.utils.data.Dataset):
    """Causal-LM samples as transformers models take them (the model shifts the labels itself)."""

    def __init__(self) -> None:
        self.ids = torch.randint(0, VOCAB, (64, SEQ), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2,
                         num_attention_heads=HEADS, num_key_value_heads=HEADS, attn_implementation="sdpa")
    return LlamaForCausalLM(config)


def _llama_ranks(rank: int, root: str) -> None:
    train(f"{root}/nd", model_init=tiny_llama, data=TokenRows, strategy="fsdp", parallelism_config=ND)


def test_a_transformers_model_splits_by_its_own_tp_plan(tmp_path):
    """LlamaForCausalLM's _tp_plan (colwise/rowwise projections, embedding_rowwise, colwise_gather_output head)."""
    pytest.importorskip("transformers")
    from treadle_fsdp import tensor_parallel

    assert {"model.embed_tokens", "lm_head", "model.layers.1.mlp.down_proj"} <= set(tensor_parallel.plan_for(tiny_llama(), None, 2))
    train(tmp_path / "single", model_init=tiny_llama, data=TokenRows, per_device_train_batch_size=16)
    run_ranks(4, _llama_ranks, str(tmp_path), timeout=300)
    _assert_close(tmp_path / "nd", tmp_path / "single")


# ------------------------------------------------------------------------- impossible meshes


@pytest.fixture
def fsdp_plugin(monkeypatch):
    """The real entry point of treadle-fsdp loads (its catalog row and argument checks)."""
    from treadle.plugins import reset_plugin_manager

    monkeypatch.delenv("TREADLE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("TREADLE_PLUGINS", "fsdp")
    reset_plugin_manager()
    yield
    monkeypatch.undo()
    reset_plugin_manager()


def test_sizes_that_do_not_multiply_to_the_world_size_are_named(fsdp_plugin, monkeypatch, tmp_path):
    from treadle import TrainingArguments
    from treadle.config import check_arguments

    def check(config):
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", parallelism_config=config)
        assert args.strategy == "fsdp"  # parallelism_config selects the strategy
        with pytest.raises(UsageError) as info:
            check_arguments(args)
        return str(info.value)

    monkeypatch.setenv("WORLD_SIZE", "4")
    message = check({"dp_shard_size": 3, "tp_size": 2})
    assert "dp_shard_size=3 x tp_size=2" in message and "4 processes" in message
    message = check(json.dumps({"tp_size": 3}))
    assert "4 processes cannot be split" in message and "tp_size=3" in message



def test_the_command_line_refuses_an_impossible_mesh_before_starting_processes(tmp_path):
    import subprocess
    import sys

    from fsdp_kit import cli_env

    result = subprocess.run(
        [sys.executable, "-m", "treadle", "train", "--nproc_per_node", "2", "--task", "fsdp_kit:cli_task", "--use_cpu",
         "--output_dir", str(tmp_path / "out"), "--parallelism_config", '{"tp_size": 3}'],
        capture_output=True, text=True, env=cli_env(), timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "2 processes cannot be split into dp_replicate_size=1 x tp_size=3" in result.stderr
    assert not (tmp_path / "out").exists()

def test_accelerates_parallelism_config_is_read_with_its_handlers(fsdp_plugin, tmp_path):
    """accelerate's own ParallelismConfig (the plugins environment installs accelerate)."""
    accelerate = pytest.importorskip("accelerate")
    from accelerate.utils import TorchContextParallelConfig, TorchTensorParallelConfig
    from treadle import TrainingArguments, parallelism
    from treadle.config import check_arguments
    from treadle_fsdp import context_parallel

    def arguments(**sizes):
        return TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                                 parallelism_config=accelerate.ParallelismConfig(**sizes))

    args = arguments(dp_shard_size=2, tp_size=2)
    assert args.strategy == "fsdp"  # the object selects the strategy, as a dict does
    assert {k: args.parallelism_config[k] for k in ("dp_replicate_size", "dp_shard_size", "tp_size", "cp_size")} == {
        "dp_replicate_size": 1, "dp_shard_size": 2, "tp_size": 2, "cp_size": 1}
    assert args.parallelism_config["tp_handler"] == {"enable_async_tp": False}  # accelerate's default handler, as JSON
    assert json.loads(json.dumps(args.to_dict()))["parallelism_config"] == args.parallelism_config
    check_arguments(args)
    assert parallelism.layout(args.parallelism_config, world_size=4).shape() == (1, 2, 1, 2)

    args = arguments(dp_shard_size=2, cp_size=2, cp_handler=TorchContextParallelConfig(cp_comm_strategy="alltoall"))
    layout = parallelism.layout(args.parallelism_config, world_size=4)
    assert layout.shape() == (1, 2, 2, 1) and context_parallel.rotate_method(layout.extra["cp_handler"]) == "alltoall"

    args = arguments(dp_shard_size=2, tp_size=2, tp_handler=TorchTensorParallelConfig(enable_async_tp=True))
    with pytest.raises(UsageError, match="enable_async_tp=true asks for async tensor parallel"):
        check_arguments(args)


def test_refused_dimensions_and_plans():
    from treadle import parallelism
    from treadle_fsdp import options, tensor_parallel

    problems = parallelism.unsupported(parallelism.layout({"sp_size": 2}), options.OFFERED, "fsdp", options.SP_HINT)
    assert len(problems) == 1 and "sp_size=2" in problems[0] and "DeepSpeed" in problems[0]
    assert parallelism.layout({"tp_size": 2}, world_size=8).shape() == (1, 4, 1, 2)

    with pytest.raises(UsageError, match="has no tensor-parallel plan"):
        tensor_parallel.plan_for(nn.Sequential(nn.Linear(4, 4)), None, 2)
    with pytest.raises(UsageError, match=r"layers.0.up: out_features=64 does not divide by tp_size=3"):
        tensor_parallel.plan_for(TinyLM(), None, 3)
    with pytest.raises(UsageError, match="'gather'"):
        tensor_parallel.plan_for(TinyLM(), {"head": "gather"}, 2)
    assert set(tensor_parallel.plan_for(TinyLM(), {"layers.*.up": "colwise"}, 2)) == {"layers.0.up", "layers.1.up"}
    tied = TinyLM()
    tied.head = nn.Linear(WIDTH, VOCAB, bias=False)
    tied.head.weight = tied.embed.weight
    with pytest.raises(UsageError, match="head shares its weight with embed"):
        tensor_parallel.plan_for(tied, {"head": "colwise_rep"}, 2)
