"""cpu_ram_efficient_loading: only rank 0 builds the real model; the others build it empty and receive their shards.

One set of two processes runs everything, and the tests read what each rank reported:

* memory: a model bigger than rank 1 may allocate (75% of its full size in resident memory
  above what the process held before: the peak, VmHWM, reset before each measurement, after a
  warm-up run has loaded FSDP2's own state) is built empty there, so rank 1 holds only its half
  of the weights plus one tensor at a time as rank 0 broadcasts them; rank 0 builds it in full;
* a model that initialises itself in ``__init__`` (normal(0, 0.02), as Hugging Face models do,
  plus a random non-persistent buffer) trains exactly like the same run without the option;
* so does one split over two tensor-parallel ranks first (``parallelism_config`` tp_size=2);
* a model whose ``model_init`` loads a safetensors file keeps those weights;
* rank 1's parameters are on the meta device when its ``model_init`` returns, rank 0's are not;
* a model without real weights on rank 0 is one message on every rank.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
from pathlib import Path

import pytest
import torch
from fsdp_kit import TinyNet, dataset, final_weights, losses, run_ranks, train, training_args
from torch import nn

WIDTH, DEPTH = 1024, 32  # 33.6M parameters: 134 MB in float32, one block 4 MB
FULL_BYTES = 4 * sum(p.numel() for p in TinyNet(WIDTH, DEPTH).parameters())
BUDGET = int(0.75 * FULL_BYTES)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
EMPTY = {"cpu_ram_efficient_loading": True, "sync_module_states": True}


class HfLikeNet(TinyNet):
    """Initialises its own weights after construction, as ``PreTrainedModel.post_init`` does, and
    holds a random buffer outside the state dict (a rank that builds empty draws a different one)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("gain", 0.5 + torch.rand(8), persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return super().forward(x * self.gain, labels)


class HfLikeTpNet(HfLikeNet):
    """The same, split over two tensor-parallel ranks (a colwise/rowwise pair)."""

    _tp_plan = {"blocks.0.linear": "colwise", "blocks.1.linear": "rowwise"}


def _pretrained_file(root: str) -> str:
    """Weights no seeded build would produce (a checkpoint from elsewhere)."""
    from safetensors.torch import save_file

    path = Path(root, "pretrained.safetensors")
    if not path.exists():
        torch.manual_seed(1234)
        weights = {k: v * 3 for k, v in TinyNet().state_dict().items()}
        save_file(weights, str(path))
    return str(path)


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/self/status")


def _peak_growth(work) -> tuple[int, object]:
    """Resident memory ``work()`` added at its peak, and what it returned."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    before = _status_bytes("VmRSS")
    result = work()
    return _status_bytes("VmHWM") - before, result


def _measure_memory(rank: int, root: str) -> dict:
    from treadle import Trainer

    args = training_args(root, strategy="fsdp", fsdp="full_shard auto_wrap", per_device_eval_batch_size=8,
                         fsdp_config=EMPTY)
    # Freed buffers of 1 MiB and more go back to the system at once (glibc would otherwise keep
    # them in its heap, and the peak would show the allocator's cache rather than live tensors).
    ctypes.CDLL(ctypes.util.find_library("c")).mallopt(M_MMAP_THRESHOLD, 1 << 20)

    def build_and_evaluate(model_init):
        trainer = Trainer(args=args, model_init=model_init, eval_dataset=dataset())
        return trainer, trainer.evaluate()

    build_and_evaluate(TinyNet)[0].end_run()  # first use of FSDP2 and the Trainer: a fixed ~30 MB of library state
    normal, _ = _peak_growth(lambda: TinyNet(WIDTH, DEPTH).state_dict() and None)
    sharded, (trainer, metrics) = _peak_growth(lambda: build_and_evaluate(lambda: TinyNet(WIDTH, DEPTH)))
    local = sum(p.to_local().numel() * 4 for p in trainer.model.parameters())
    trainer.save_model()  # gathers the full weights on rank 0: past the measurement
    trainer.end_run()
    return {"normal": normal, "sharded": sharded, "local": local, "loss": metrics["eval_loss"]}


def _recording(build, seen: list[bool]):
    """``build`` as a model_init that notes which parameters it left on the meta device."""

    def model_init() -> nn.Module:
        model = build()
        seen.extend(p.is_meta for p in model.parameters())
        return model

    return model_init


def _worker(rank: int, root: str) -> None:
    report = {"memory": _measure_memory(rank, f"{root}/big")}
    pretrained = _pretrained_file(root) if rank == 0 else None
    torch.distributed.barrier()
    pretrained = pretrained or str(Path(root, "pretrained.safetensors"))

    def load_pretrained() -> TinyNet:
        from safetensors.torch import load_file

        model = TinyNet()
        model.load_state_dict(load_file(pretrained))
        return model

    cases = {
        "hf_init": (HfLikeNet, {}),
        "pretrained": (load_pretrained, {}),
        # tp first: rank 0's full weights fill the shards of DTensors split over tp
        "tp": (HfLikeTpNet, {"parallelism_config": {"dp_shard_size": 1, "tp_size": 2}}),
    }
    for case, (build, more) in cases.items():
        for name, config in {"empty": EMPTY, "full": {}}.items():
            seen: list[bool] = []
            trainer = train(f"{root}/{case}-{name}", model_init=_recording(build, seen), strategy="fsdp",
                            fsdp="full_shard auto_wrap", fsdp_config=config, **more)
            buffers = {k: v.tolist() for k, v in trainer.model.named_buffers()}
            report[f"{case}-{name}"] = {"meta_after_build": seen, "buffers": buffers}
    report["meta_on_rank0"] = _refusal(f"{root}/meta-on-rank0")
    Path(root, f"rank{rank}.json").write_text(json.dumps(report))


def _refusal(output_dir: str) -> str:
    """The message a model built on the meta device everywhere (rank 0 included) stops with."""
    from treadle.errors import UsageError

    def on_meta() -> TinyNet:
        with torch.device("meta"):
            return TinyNet()

    try:
        train(output_dir, model_init=on_meta, strategy="fsdp", fsdp="full_shard auto_wrap", fsdp_config=EMPTY)
    except UsageError as exc:
        return str(exc)
    return ""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("meta_init")
    run_ranks(2, _worker, str(root), timeout=240)
    return root, [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc to measure peak memory")
def test_only_rank0_builds_a_model_too_big_for_one_rank(runs):
    root, reports = runs
    rank0, rank1 = (r["memory"] for r in reports)
    assert rank1["normal"] > BUDGET, f"a normal build must not fit the budget ({rank1['normal']} <= {BUDGET})"
    assert rank1["sharded"] < BUDGET, f"rank 1's build and evaluation took {rank1['sharded']} bytes at the peak (budget {BUDGET})"
    # rank 0 holds its full build until the broadcast ends, plus its shards: no third copy
    assert rank0["sharded"] < 1.75 * FULL_BYTES, rank0
    for r in (rank0, rank1):
        assert r["local"] <= FULL_BYTES // 2 + 4 * WIDTH  # half the model each
    torch.manual_seed(7)  # the seed the Trainer built the model with
    normal = TinyNet(WIDTH, DEPTH).state_dict()
    got = final_weights(root / "big")
    assert got.keys() == normal.keys()
    for key, value in normal.items():
        assert torch.equal(got[key], value), key
    assert rank0["loss"] == rank1["loss"]


def _assert_same_run(root: Path, case: str) -> None:
    empty, full = root / f"{case}-empty", root / f"{case}-full"
    assert losses(empty) == losses(full), (losses(empty), losses(full))
    got, want = final_weights(empty), final_weights(full)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), f"{case}: {key}"


@pytest.mark.parametrize("case", ["hf_init", "tp"])
def test_a_model_with_its_own_init_trains_like_a_full_build(runs, case):
    root, reports = runs
    _assert_same_run(root, case)
    # the random non-persistent buffer is rank 0's everywhere
    assert reports[0][f"{case}-empty"]["buffers"] == reports[1][f"{case}-empty"]["buffers"]
    assert reports[0][f"{case}-empty"]["buffers"] == reports[0][f"{case}-full"]["buffers"]


def test_pretrained_weights_loaded_by_model_init_are_kept(runs):
    root, _ = runs
    # the first loss is computed on the weights the run starts from: the file's, on both runs
    assert losses(root / "pretrained-empty")["loss"][0] == losses(root / "pretrained-full")["loss"][0]
    _assert_same_run(root, "pretrained")


def test_ranks_other_than_0_build_no_weights(runs):
    _, reports = runs
    for case in ("hf_init", "pretrained", "tp"):
        assert not any(reports[0][f"{case}-empty"]["meta_after_build"]), "rank 0 builds the real model"
        assert all(reports[1][f"{case}-empty"]["meta_after_build"]), "rank 1 must build its parameters on meta"
        assert not any(reports[1][f"{case}-full"]["meta_after_build"])


def test_rank0_without_real_weights_is_refused_on_every_rank(runs):
    _, reports = runs
    for report in reports:
        message = report["meta_on_rank0"]
        assert "rank 0's model has parameters on the meta device (inp.weight, inp.bias, blocks.0.linear.weight, ...)" in message
