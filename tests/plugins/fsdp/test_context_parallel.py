"""Context parallel (``parallelism_config`` cp_size) on 4 gloo processes, and on 2 GPUs where present.

Torch's ring attention has no CPU kernel (it shards only CUDA's flash / memory-efficient / cuDNN
attention ops), so the CPU runs use a model whose layers are all position-wise: embeddings of
token and *position*, MLP blocks, a head, a causal-LM loss that shifts its labels itself. With no
attention between tokens, a run whose sequences are split over cp ranks must end where the
whole-sequence run does, up to float rounding; that checks everything around the attention:
the load-balanced split, global position ids (the model embeds them), the labels pre-shifted
into ``shift_labels`` before splitting, the weighting of each slice's loss by its label tokens
(some labels are -100, unevenly between slices), the gradient average over dp_shard x cp,
the gradient norm and clipping, DCP checkpoints and exact resume. In one set of 4 processes:

* dp=2 x cp=2 (global batch 16, saving at step 2), and resumed from that checkpoint;
* cp=2 x tp=2 (one replica: two accumulated micro-batches of 8);
* dp=2 x cp=2 and replicate=2 x cp=2 (HSDP over the cp shards) with a loss normalised by
  ``num_items_in_batch`` (the other weighting of ``MicroBatch``) on prompts of uneven lengths;
* plain FSDP on 4 ranks;
* a real SDPA model under cp on the CPU: one UsageError naming the operator and the fix.

A one-process run of batch 16 is the reference; the dp x cp checkpoint also resumes in one
process. The ``gpu`` test trains a causal SDPA transformer with cp=2 on 2 GPUs against 1 GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fsdp_kit import cli_env, run_ranks
from test_nd_parallel import _assert_close, _facts, _weights
from test_nd_parallel import train as nd_train
from torch import nn
from treadle.errors import UsageError

HERE = Path(__file__).resolve().parent
VOCAB, SEQ, WIDTH, ROWS, MAX_LEN = 32, 8, 16, 64, 64


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.up, self.down = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.down(torch.relu(self.up(self.norm(h))))


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, shift_labels=None, num_items_in_batch=None, **_) -> torch.Tensor:
    """As transformers' causal LMs: shift ``labels`` here, unless aligned ``shift_labels`` came with the batch;
    a sum over ``num_items_in_batch`` when the loop passes it, else a mean."""
    if shift_labels is None:
        logits, shift_labels = logits[:, :-1], labels[:, 1:]
    if num_items_in_batch is None:
        return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), shift_labels.reshape(-1))
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), shift_labels.reshape(-1), reduction="sum") / num_items_in_batch


class PositionWiseLM(nn.Module):
    """No token looks at another: sequence-split training must equal whole-sequence training.

    Its forward takes ``**kwargs`` like a transformers model (where ``shift_labels`` arrives);
    its loss is a mean over its tokens (``accepts_loss_kwargs`` False), see ``ItemsLM``.
    """

    _no_split_modules = ["Mlp"]
    _tp_plan = {"layers.*.up": "colwise", "layers.*.down": "rowwise"}
    accepts_loss_kwargs = False

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.position = nn.Embedding(VOCAB, WIDTH), nn.Embedding(MAX_LEN, WIDTH)
        self.layers = nn.ModuleList(Mlp() for _ in range(2))
        self.head = nn.Linear(WIDTH, VOCAB)

    def mix(self, h: torch.Tensor, depth: int) -> torch.Tensor:
        return h  # no attention between tokens

    def forward(self, input_ids, position_ids=None, labels=None, **kwargs):
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        h = self.embed(input_ids) + self.position(position_ids)
        for depth, layer in enumerate(self.layers):
            h = layer(self.mix(h, depth))
        logits = self.head(h)
        result = {"logits": logits}
        if labels is not None:
            result["loss"] = causal_lm_loss(logits, labels, **kwargs)
        return result


class ItemsLM(PositionWiseLM):
    """The loss normalised by the ``num_items_in_batch`` the loop passes (as transformers' LMs):
    exact token averaging over replicas with different label counts."""

    accepts_loss_kwargs = True


class CausalSdpaLM(PositionWiseLM):
    """The same with one causal self-attention per layer through F.scaled_dot_product_attention."""

    def __init__(self) -> None:
        super().__init__()
        # no bias: softmax ignores a key bias, so its gradient is rounding noise that Adam would blow up to lr-sized steps
        self.qkv = nn.ModuleList(nn.Linear(WIDTH, 3 * WIDTH, bias=False) for _ in range(2))

    def mix(self, h: torch.Tensor, depth: int) -> torch.Tensor:
        b, t, _ = h.shape
        q, k, v = (x.view(b, t, 2, WIDTH // 2).transpose(1, 2) for x in self.qkv[depth](h).chunk(3, dim=-1))
        return h + nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, WIDTH)


class Prompts(torch.utils.data.Dataset):
    """Causal-LM rows as transformers takes them (labels = input_ids, the model shifts); each row's
    prompt (1-5 leading tokens) is masked with -100, so slices hold different label counts. The first
    token is always masked: the loop counts ``labels`` for ``num_items_in_batch``, the loss their shift."""

    prompt: int | None = None  # None: a random length per row

    def __init__(self, length: int = SEQ) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, VOCAB, (ROWS, length), generator=g)
        self.labels = self.ids.clone()
        prompts = torch.randint(1, 6, (ROWS,), generator=g).tolist() if self.prompt is None else [self.prompt] * ROWS
        for row, prompt in enumerate(prompts):
            self.labels[row, :prompt] = -100

    def __len__(self) -> int:
        return ROWS

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class EvenPrompts(Prompts):
    """Every prompt 3 tokens: each replica's batch has as many label tokens as another's (a mean loss
    averaged over replicas is then the global mean), while the two cp slices of a row hold 1 and 4."""

    prompt = 3


def train(output_dir, **overrides):
    """A mean loss (weighted by each slice's share of its micro-batch's label tokens)."""
    return nd_train(output_dir, model_init=PositionWiseLM, data=EvenPrompts, **overrides)


def train_items(output_dir, **overrides):
    """A loss normalised by the step's label tokens over all replicas (uneven prompts)."""
    return nd_train(output_dir, model_init=ItemsLM, data=Prompts, **overrides)


DP_CP = {"dp_shard_size": 2, "cp_size": 2}


def _four_ranks(rank: int, root: str) -> None:
    cp = dict(strategy="fsdp", parallelism_config=DP_CP, fsdp_config={"state_dict_type": "FULL_STATE_DICT"})
    train(f"{root}/cp", save_strategy="steps", save_steps=2, **cp)
    train(f"{root}/cp_resumed", resume=f"{root}/cp/checkpoint-2", **cp)
    # one replica; two accumulated micro-batches of 8 (each its own cp context, the first without gradient sync)
    train(f"{root}/cp_tp", strategy="fsdp", parallelism_config={"cp_size": 2, "tp_size": 2}, gradient_accumulation_steps=2)
    train_items(f"{root}/cp_items", strategy="fsdp", parallelism_config=DP_CP)
    hsdp_cp = {"dp_replicate_size": 2, "cp_size": 2, "cp_handler": {"cp_comm_strategy": "alltoall"}}
    train_items(f"{root}/hsdp_cp", strategy="fsdp", parallelism_config=hsdp_cp)
    train(f"{root}/fsdp4", strategy="fsdp", per_device_train_batch_size=4)
    try:  # last: a run that fails inside its first forward
        nd_train(f"{root}/sdpa_cpu", model_init=CausalSdpaLM, data=Prompts, strategy="fsdp", parallelism_config=DP_CP)
    except UsageError as exc:
        Path(root, f"sdpa_cpu-{rank}.txt").write_text(str(exc))


def _one_rank_resume(rank: int, root: str) -> None:
    train(f"{root}/one_resumed", resume=f"{root}/cp/checkpoint-2", strategy="fsdp", per_device_train_batch_size=16)


def test_dp2_cp2_and_cp2_tp2_train_like_one_process_resume_and_load_in_one(tmp_path):
    train(tmp_path / "single", per_device_train_batch_size=16)
    train_items(tmp_path / "single_items", per_device_train_batch_size=16)
    run_ranks(4, _four_ranks, str(tmp_path), timeout=400)
    cp, single = tmp_path / "cp", tmp_path / "single"

    for run in ("cp", "cp_tp", "fsdp4"):
        _assert_close(tmp_path / run, single)
    for run in ("cp_items", "hsdp_cp"):
        _assert_close(tmp_path / run, tmp_path / "single_items")
    PositionWiseLM().load_state_dict(_weights(cp), strict=True)

    # sizes and accounting: ranks (0,1) and (2,3) are cp pairs sharing batches
    assert [_facts(cp, rank)["shard_info"] for rank in range(4)] == [[2, 0], [2, 0], [2, 1], [2, 1]]
    assert _facts(cp)["sizes"] == [1, 2, 1] and _facts(tmp_path / "cp_tp")["sizes"] == [2, 2, 1]
    assert _facts(cp)["total_batch"] == 16 == _facts(tmp_path / "cp_tp")["total_batch"] == _facts(tmp_path / "hsdp_cp")["total_batch"]
    assert "(batch 8 per device, 16 per step)" in _facts(cp)["plan"][0]
    assert "(batch 8 per device, 16 per step)" in _facts(tmp_path / "cp_tp")["plan"][0]

    # the DCP checkpoint holds a shard per rank (parameters shard over dp_shard x cp), resumes exactly
    files = {p.name for p in (cp / "checkpoint-2" / "fsdp").iterdir()}
    assert {".metadata", *(f"__{r}_0.distcp" for r in range(4))} <= files
    for key, value in _weights(cp).items():
        assert torch.equal(_weights(tmp_path / "cp_resumed")[key], value), key
    assert _facts(tmp_path / "cp_resumed")["loss"] == _facts(cp)["loss"]

    # every rank stopped at its first attention call on the CPU with the same message
    messages = {Path(tmp_path, f"sdpa_cpu-{rank}.txt").read_text() for rank in range(4)}
    assert len(messages) == 1
    message = messages.pop()
    assert "aten._scaled_dot_product_flash_attention_for_cpu.default" in message and "on cpu" in message
    assert "Run cp_size>1 on CUDA GPUs" in message and "Traceback" not in message
    assert not (tmp_path / "sdpa_cpu" / "model.safetensors").exists()

    run_ranks(1, _one_rank_resume, str(tmp_path))
    for key, value in _weights(cp).items():
        torch.testing.assert_close(_weights(tmp_path / "one_resumed")[key], value, atol=1e-5, rtol=1e-4, msg=key)


# ------------------------------------------------------------------------- one micro-batch, no processes


def test_a_micro_batch_gets_global_positions_and_labels_shifted_before_splitting():
    from treadle_fsdp import context_parallel

    row = Prompts()[3]
    batch = {"input_ids": row["input_ids"][None], "labels": row["labels"][None]}
    whole = context_parallel.complete(batch, PositionWiseLM(), SEQ)
    assert whole["position_ids"].tolist() == [list(range(SEQ))]
    assert whole["shift_labels"].tolist() == [[*batch["labels"][0, 1:].tolist(), -100]]
    assert batch.keys() == {"input_ids", "labels"}  # the loop's batch is left as it was

    class AlignedLabels(nn.Module):  # takes neither positions nor shift_labels: nothing is added
        def forward(self, input_ids, labels=None):
            return input_ids

    assert context_parallel.complete(batch, AlignedLabels(), SEQ).keys() == {"input_ids", "labels"}
    assert context_parallel.label_items(whole) == int((whole["shift_labels"] != -100).sum())


def test_a_transformers_causal_lm_gets_what_ring_attention_needs(monkeypatch):
    """LlamaForCausalLM on rank 0's load-balanced slice of 2 (positions 0, 1, 6, 7): it takes the
    pre-shifted labels, and calls SDPA causal without a mask. Without the added mask of ones,
    transformers would read the jump in the positions as packed sequences and build a mask."""
    pytest.importorskip("transformers")
    from test_nd_parallel import tiny_llama
    from treadle_fsdp import context_parallel

    model = tiny_llama()
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))
    whole = context_parallel.complete({"input_ids": ids, "labels": ids}, model, SEQ)
    assert whole.keys() == {"input_ids", "labels", "position_ids", "attention_mask", "shift_labels"}
    head_and_tail = torch.tensor([0, 1, 6, 7])  # torch's head-tail balancer: chunks 0 and 3 of 4
    part = {k: v[:, head_and_tail] for k, v in whole.items()}
    part["use_cache"] = False  # as in training (treadle's use_cache default)

    calls = []
    sdpa = nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append((kwargs.get("attn_mask"), kwargs.get("is_causal")))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(nn.functional, "scaled_dot_product_attention", spy)
    loss = model(**part).loss
    assert calls and all(mask is None and causal for mask, causal in calls)
    targets = part["shift_labels"]
    logits = model(**part).logits
    assert torch.allclose(loss, nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)))

    calls.clear()
    model(**{k: v for k, v in part.items() if k != "attention_mask"})
    assert any(mask is not None for mask, _ in calls)  # the packed-sequence reading the added mask avoids

    model.config._attn_implementation = "eager"  # attention torch would not split: refused, not run per slice
    with pytest.raises(UsageError, match="attn_implementation is 'eager'.* attn_implementation='sdpa'"):
        context_parallel.check_model(model)
    context_parallel.check_model(PositionWiseLM())  # not a transformers model: trusted


def test_right_padding_of_a_transformers_causal_lm_is_exact_without_the_mask():
    """A causal LM's real tokens never attend to later (padded) positions: the padding may stay in
    the batch with its labels at -100 and a mask of ones, which ring attention can compute."""
    pytest.importorskip("transformers")
    from test_nd_parallel import tiny_llama
    from treadle.model_io import loss_shifts_labels
    from treadle_fsdp import context_parallel

    model = tiny_llama().eval()
    assert loss_shifts_labels(model)
    ids = torch.randint(1, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, 5:] = 0  # the second row has 5 real tokens, then padding
    labels = ids.masked_fill(mask == 0, -100)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.clone()}  # a collator that left pad labels in
    context_parallel.check(batch, SEQ, 2, causal=True)
    whole = context_parallel.complete(batch, model, SEQ)
    assert bool((whole["attention_mask"] == 1).all())
    assert torch.equal(whole["labels"], labels) and bool((whole["shift_labels"][1, 4:] == -100).all())
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss  # transformers' own padding mask
        got = model(**{**whole, "use_cache": False}).loss
    torch.testing.assert_close(got, expected)

    left = torch.ones(2, SEQ, dtype=torch.long)
    left[0, :3] = 0
    with pytest.raises(UsageError, match="padding_side='right'"):
        context_parallel.check({"input_ids": ids, "attention_mask": left}, SEQ, 2, causal=True)
    with pytest.raises(UsageError, match="transformers causal LMs only"):
        context_parallel.check(batch, SEQ, 2, causal=False)  # a model that may attend both ways


def test_a_causal_lm_batch_of_any_length_is_padded_to_split_evenly():
    """6 tokens with cp_size=2: padded on the right to 8 (2 x cp_size, balanced), with the loss unchanged."""
    pytest.importorskip("transformers")
    from test_nd_parallel import tiny_llama
    from treadle_fsdp import context_parallel

    model = tiny_llama().eval()
    ids = torch.randint(1, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(6).expand(2, -1)}
    padded, length = context_parallel.pad_to_multiple(batch, 6, 4)
    assert length == 8 and padded["input_ids"].shape == (2, 8)
    assert padded["labels"][:, 6:].eq(-100).all() and padded["attention_mask"][:, 6:].eq(0).all()
    assert padded["position_ids"][0].tolist() == list(range(8))
    context_parallel.check(padded, length, 2, causal=True)
    whole = context_parallel.complete(padded, model, length)
    with torch.no_grad():
        expected = model(input_ids=ids, labels=ids).loss
        got = model(**{**whole, "use_cache": False}).loss
    torch.testing.assert_close(got, expected)
    assert context_parallel.pad_to_multiple(batch, 6, 3) == (batch, 6)  # already a multiple: untouched


def test_what_ring_attention_cannot_compute_is_refused_with_the_fix():
    from treadle_fsdp import context_parallel

    ids = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(UsageError, match=r"sequence length of 6 does not divide by cp_size=4; .* multiple of 8"):
        context_parallel.check({"input_ids": ids[:, :6]}, 6, 4)
    padded = torch.ones(2, 8, dtype=torch.long)
    padded[1, -2:] = 0
    with pytest.raises(UsageError, match="attention_mask with zeros .* pack sequences"):
        context_parallel.check({"input_ids": ids, "attention_mask": padded}, 8, 2)
    context_parallel.check({"input_ids": ids, "attention_mask": torch.ones(2, 8)}, 8, 2)  # all ones: fine
    with pytest.raises(UsageError, match=r"labels of shape \(2,\) are not one per token"):
        context_parallel.check({"input_ids": ids, "labels": torch.zeros(2, dtype=torch.long)}, 8, 2)
    with pytest.raises(UsageError, match="input_ids .* of shape \\(batch, sequence\\)"):
        context_parallel.sequence_length({"x": torch.zeros(2, 3)})

    missing = NotImplementedError(
        "Operator aten._scaled_dot_product_flash_attention_for_cpu.default does not have a sharding strategy registered."
    )
    assert "aten._scaled_dot_product_flash_attention_for_cpu.default has no ring-attention" in \
        context_parallel.unsupported_attention(missing, "cpu")
    assert context_parallel.unsupported_attention(NotImplementedError("something else"), "cpu") is None

    assert context_parallel.rotate_method({"cp_comm_strategy": "alltoall"}) == "alltoall"
    with pytest.raises(UsageError, match="cp_comm_strategy must be 'allgather' or 'alltoall'"):
        context_parallel.rotate_method({"cp_comm_strategy": "ring"})


def test_cp_size_is_a_dimension_the_fsdp_strategy_builds():
    from treadle import parallelism
    from treadle_fsdp import options

    assert parallelism.unsupported(parallelism.layout({"cp_size": 2, "tp_size": 2}), options.OFFERED, "fsdp") == []
    assert parallelism.layout({"cp_size": 2}, world_size=8).shape() == (1, 4, 2, 1)


# ------------------------------------------------------------------------- real ring attention


def cli_task(args):
    """``--task test_context_parallel:cli_task``: the causal SDPA model on sequences of 64 tokens."""
    from treadle import TaskParts

    return TaskParts(model=CausalSdpaLM(), train_dataset=Prompts(MAX_LEN), eval_dataset=Prompts(MAX_LEN))


def _treadle(argv: list[str], plugins: str, timeout: int) -> subprocess.CompletedProcess:
    env = cli_env(plugins)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env["PYTHONPATH"]])
    return subprocess.run([sys.executable, "-m", "treadle", *argv], capture_output=True, text=True, env=env, timeout=timeout)


def test_the_command_line_stops_cp_on_the_cpu_with_one_message(tmp_path):
    """treadle train --nproc_per_node 2 with cp_size=2 and SDPA on the CPU: exit 2, the fix, no traceback."""
    result = _treadle(["train", "--nproc_per_node", "2", "--task", "test_context_parallel:cli_task", "--use_cpu",
                       "--output_dir", str(tmp_path / "out"), "--parallelism_config", '{"cp_size": 2}', "--max_steps", "2",
                       "--report_to", "none", "--disable_tqdm"], "fsdp", 180)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-4000:]
    assert "has no ring-attention implementation on cpu" in result.stderr and "Run cp_size>1 on CUDA GPUs" in result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_ring_attention_on_two_gpus_trains_like_one(tmp_path):
    """cp=2 on 2 GPUs (ring attention over nccl, the memory-efficient kernel in fp32) against 1 GPU, same batch."""
    from safetensors.torch import load_file

    def launch(out: Path, *extra: str) -> None:
        argv = ["train", "--task", "test_context_parallel:cli_task", "--backend", "cuda", "--strategy", "fsdp",
                "--per_device_train_batch_size", "8", "--max_steps", "4", "--learning_rate", "0.01", "--max_grad_norm", "0.5",
                "--seed", "7", "--report_to", "none", "--disable_tqdm", "--save_strategy", "no", "--output_dir", str(out), *extra]
        result = _treadle(argv, "fsdp,cuda", 600)
        assert result.returncode == 0, result.stderr[-6000:]

    launch(tmp_path / "one")
    launch(tmp_path / "cp", "--nproc_per_node", "2", "--parallelism_config", json.dumps({"cp_size": 2}))
    got, want = load_file(str(tmp_path / "cp" / "model.safetensors")), load_file(str(tmp_path / "one" / "model.safetensors"))
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-4, rtol=1e-3, msg=key)
