"""ALST/Ulysses sequence parallelism (``parallelism_config={"sp_size": 2}``) on DeepSpeed's engine.

One torchrun launch of 2 gloo processes runs, in the same process group (sp_kit.main): a plain
torch causal transformer at sp=2 under ZeRO-2 (2 accumulation micro-batches of 4) with a step-3
checkpoint, the same run resumed from it, the same model under ZeRO-3 (8 sequences a step), three
refused runs (a head count that does not divide by 2, attention written by hand that SDPA routing
never sees, ZeRO-3 without reduce-scatter), and, where transformers is installed, a
tiny LlamaForCausalLM at sp=2 through DeepSpeed's UlyssesSPAttentionHF (ZeRO-0). Each must
end where one process with the same global batch (8 sequences) ends, the resumed one bitwise
where the uninterrupted one did. The rest checks what needs no process: the input split, the
model checks and the parse-time mesh checks.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import sp_kit
import torch
from ds_kit import TORCHRUN, free_port, ok, run, weights
from treadle.errors import UsageError

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def _facts(path, rank=0) -> dict:
    return json.loads((path / f"facts-{rank}.json").read_text())


def _assert_trains_like(got, reference) -> None:
    want = weights(reference)
    assert weights(got).keys() == want.keys()
    for name, value in weights(got).items():
        torch.testing.assert_close(value, want[name], rtol=1e-4, atol=1e-5, msg=f"{got.name}: {name}")
    for series in ("loss", "grad_norm"):  # the logged loss is the whole micro-batch's, not one slice's
        assert _facts(got)[series] == pytest.approx(_facts(reference)[series], rel=1e-5, abs=1e-6), series
    assert _facts(got)["eval_loss"] == pytest.approx(_facts(reference)["eval_loss"], rel=1e-5)


def test_sp2_on_two_ranks_trains_like_one_process_and_resumes_exactly(tmp_path, extensions):
    sp_kit.train(tmp_path / "single")
    if HAS_TRANSFORMERS:
        sp_kit.train(tmp_path / "llama_single", model_init=sp_kit.tiny_llama)
    launch = [*TORCHRUN, "--nproc_per_node", "2", "--master_port", str(free_port()), sp_kit.__file__, tmp_path,
              "1" if HAS_TRANSFORMERS else "0"]
    ok(run(launch, extensions=extensions))

    sp, single = tmp_path / "sp", tmp_path / "single"
    _assert_trains_like(sp, single)
    _assert_trains_like(tmp_path / "sp_zero3", single)
    facts = [_facts(sp, rank) for rank in (0, 1)]
    assert [f["sizes"] for f in facts] == [[1, 1, 2]] * 2  # get_tp_size, get_cp_size, get_sp_size
    assert [f["shard_info"] for f in facts] == [[1, 0], [1, 0]]  # both ranks of the block read the same batches
    assert facts[0]["total_batch"] == 8 == _facts(single)["total_batch"]  # world 2 // sp 2 = 1 replica x 8
    assert facts[0]["tokens_seen"] == _facts(single)["tokens_seen"] > 0  # a block's batch counted once
    assert facts[0]["strategy"] == "deepspeed"

    resumed = tmp_path / "sp_resumed"
    for name, value in weights(sp).items():
        assert torch.equal(weights(resumed)[name], value), name
    assert _facts(resumed)["loss"] == _facts(sp)["loss"]  # steps 1-3 come from the checkpoint
    engine_files = sorted(p.name for p in (sp / "checkpoint-3" / "deepspeed").iterdir())
    # ZeRO-2 partitions the optimizer over the sequence-data-parallel group: both ranks of the block
    assert engine_files == ["mp_rank_00_model_states.pt", *(f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1))]

    message = json.loads((tmp_path / "refused.json").read_text())["heads"]
    assert "1 attention heads" in message and "sp_size=2" in message
    message = json.loads((tmp_path / "refused.json").read_text())["unrouted"]  # after its first micro-batch
    assert "never reached Ulysses attention" in message and "scaled_dot_product_attention" in message
    message = json.loads((tmp_path / "refused.json").read_text())["zero3_all_reduce"]
    assert "reduce_scatter is false" in message and "ZeRO stage 2" in message

    if HAS_TRANSFORMERS:  # DeepSpeed's UlyssesSPAttentionHF in transformers' attention interface
        _assert_trains_like(tmp_path / "llama_sp", tmp_path / "llama_single")


# ------------------------------------------------------------------------- without processes


def test_each_rank_gets_its_slice_with_global_positions_and_shifted_labels():
    model = sp_kit.TinyCausalLM()
    ids = torch.arange(16).reshape(2, 8)
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt: after the shift, the first slice keeps one label token per row
    from treadle_deepspeed.sequence_parallel import split_inputs

    (first, local0, total0), (second, local1, total1) = (
        split_inputs({"input_ids": ids, "labels": labels}, model, 2, rank) for rank in (0, 1)
    )
    assert torch.equal(first["input_ids"], ids[:, :4]) and torch.equal(second["input_ids"], ids[:, 4:])
    assert torch.equal(second["position_ids"], torch.arange(4, 8).expand(2, 4))  # positions stay global
    # the target of the first slice's last token is the second slice's first label
    assert first["shift_labels"][:, -1].tolist() == labels[:, 4].tolist() == [4, 12]
    assert second["shift_labels"][:, -1].tolist() == [-100, -100]  # nothing follows the sequence
    assert (local0, local1, total0, total1) == (2, 6, 8, 8)
    assert all(v.is_contiguous() for v in second.values())


def test_a_sequence_that_does_not_split_evenly_is_one_message():
    from treadle_deepspeed.sequence_parallel import split_inputs

    with pytest.raises(UsageError, match="sequence length is 7, which does not divide by 2.*pad_to_multiple_of=2"):
        split_inputs({"input_ids": torch.zeros(1, 7, dtype=torch.long)}, sp_kit.TinyCausalLM(), 2, 0)


def test_models_that_sequence_parallelism_would_compute_wrongly_are_refused():
    from treadle_deepspeed.sequence_parallel import check_model

    class NoPositions(torch.nn.Module):
        def forward(self, input_ids, labels=None):
            return input_ids

    with pytest.raises(UsageError, match="takes no position_ids"):
        check_model(NoPositions(), 2)
    with pytest.raises(UsageError, match="4 attention heads .*layers.0.attn.num_heads.* do not divide by 3"):
        check_model(sp_kit.TinyCausalLM(), 3)
    check_model(sp_kit.TinyCausalLM(), 2)
    check_model(sp_kit.TinyCausalLM(), 4)


@pytest.fixture
def deepspeed_plugins(only_plugins):
    """The real entry points of treadle-deepspeed (and treadle-fsdp where installed: its catalog row)."""
    only_plugins(*(("deepspeed", "fsdp") if importlib.util.find_spec("treadle_fsdp") else ("deepspeed",)))


def _problems(tmp_path, **arguments) -> str:
    from treadle import TrainingArguments
    from treadle.config import check_arguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **arguments)
    assert args.strategy == "deepspeed"  # a deepspeed config with parallelism_config: not the fsdp strategy
    with pytest.raises(UsageError) as info:
        check_arguments(args)
    return str(info.value)


def test_impossible_meshes_are_named_when_the_arguments_are_parsed(deepspeed_plugins, monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "3")
    for chosen in ({"deepspeed": {}}, {"strategy": "deepspeed"}):  # a config, or the strategy by name
        message = _problems(tmp_path, **chosen, parallelism_config={"sp_size": 2})
        assert "3 processes cannot be split" in message and "sp_size=2" in message
        assert "contradicts" not in message
    monkeypatch.setenv("WORLD_SIZE", "4")
    message = _problems(tmp_path, deepspeed={}, parallelism_config=json.dumps({"sp_size": 2, "tp_size": 2}))
    assert "tp_size=2 is not something the deepspeed strategy can build" in message and "fsdp strategy" in message
    message = _problems(tmp_path, deepspeed={}, parallelism_config={"sp_size": 2, "sp_backend": "torch"})
    assert "sp_backend='torch'" in message
