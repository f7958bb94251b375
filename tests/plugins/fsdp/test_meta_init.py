"""cpu_ram_efficient_loading: a model bigger than one rank may allocate is built empty and filled shard by shard.

The budget per rank is 75% of the model's full size in resident memory above what the process
held before (the peak, VmHWM, reset before each measurement, after a warm-up run has loaded
FSDP2's own state). A normal build of the model exceeds it; with the meta-device build
each rank holds only its half of the weights plus one layer at a time in full while it builds,
shards, fills and evaluates, and the consolidated weights equal those of a normal build from the
same seed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
from pathlib import Path

import pytest
import torch
from fsdp_kit import TinyNet, dataset, final_weights, run_ranks, training_args

WIDTH, DEPTH = 1024, 32  # 33.6M parameters: 134 MB in float32, one block 4 MB
FULL_BYTES = 4 * sum(p.numel() for p in TinyNet(WIDTH, DEPTH).parameters())
BUDGET = int(0.75 * FULL_BYTES)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _big() -> TinyNet:
    return TinyNet(WIDTH, DEPTH)


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


def _meta_worker(rank: int, root: str) -> None:
    from treadle import Trainer

    args = training_args(
        root, strategy="fsdp", fsdp="full_shard auto_wrap", per_device_eval_batch_size=8,
        fsdp_config={"cpu_ram_efficient_loading": True, "sync_module_states": True},
    )
    # Freed buffers of 1 MiB and more go back to the system at once (glibc would otherwise keep
    # them in its heap, and the peak would show the allocator's cache rather than live tensors).
    ctypes.CDLL(ctypes.util.find_library("c")).mallopt(M_MMAP_THRESHOLD, 1 << 20)

    def build_and_evaluate(model_init):
        trainer = Trainer(args=args, model_init=model_init, eval_dataset=dataset())
        return trainer, trainer.evaluate()

    build_and_evaluate(TinyNet)[0].end_run()  # first use of FSDP2 and the Trainer: a fixed ~30 MB of library state
    normal, _ = _peak_growth(lambda: _big().state_dict() and None)
    sharded, (trainer, metrics) = _peak_growth(lambda: build_and_evaluate(_big))
    local = sum(p.to_local().numel() * 4 for p in trainer.model.parameters())
    trainer.save_model()  # gathers the full weights on rank 0: past the measurement
    report = {"normal": normal, "sharded": sharded, "local": local, "loss": metrics["eval_loss"]}
    Path(root, f"rank{rank}.json").write_text(json.dumps(report))
    trainer.end_run()


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc to measure peak memory")
def test_a_model_too_big_for_one_rank_is_filled_shard_by_shard(tmp_path):
    run_ranks(2, _meta_worker, str(tmp_path))
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in reports:
        assert r["normal"] > BUDGET, f"a normal build must not fit the budget ({r['normal']} <= {BUDGET})"
        assert r["sharded"] < BUDGET, f"sharded build and evaluation took {r['sharded']} bytes at the peak (budget {BUDGET})"
        assert r["local"] <= FULL_BYTES // 2 + 4 * WIDTH  # half the model each
    torch.manual_seed(7)  # the seed the Trainer built the model with
    normal = _big().state_dict()
    got = final_weights(tmp_path)
    assert got.keys() == normal.keys()
    for key, value in normal.items():
        assert torch.equal(got[key], value), key
    assert reports[0]["loss"] == reports[1]["loss"]
