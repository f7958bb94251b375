"""treadle-ddp with real processes: 2 ranks over gloo on the CPU, started the ways users start them.

Each multi-process test is one launch (a few seconds, most of it Python and torch starting up).
The reference is one process with the batch both ranks see together: 2 ranks x 8 samples (or
2 x 4 x 2 accumulation micro-batches) must end with its weights, log its losses and gather its
evaluation outputs, within float tolerance (the sums are added in another order).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
TREADLE = [sys.executable, "-m", "treadle"]
COMMON = [
    "--task", "ddp_task:build", "--max_steps", "4", "--optim", "sgd", "--learning_rate", "0.5",
    "--eval_strategy", "steps", "--eval_steps", "4", "--per_device_eval_batch_size", "4",
    "--logging_steps", "1", "--save_steps", "2", "--disable_tqdm", "--seed", "7",
]


def run(argv: list[str], timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    return finish(launch(argv, **env), timeout)


def launch(argv: list[str], **env: str) -> subprocess.Popen:
    # a clean start: not inside a launcher, and the ddp plugin loaded through its entry point (only it)
    launched = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
                "TREADLE_DISABLE_PLUGIN_AUTOLOAD")
    environ = {name: value for name, value in os.environ.items() if name not in launched}
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    environ.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": path, "TREADLE_PLUGINS": "ddp", **env})
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)


def finish(proc: subprocess.Popen, timeout: float = 240) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        stderr += f"\n(killed after {timeout}s)"
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / "model.safetensors"))


def history(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


def train_losses(output_dir: Path) -> list[float]:
    return [entry["loss"] for entry in history(output_dir) if "loss" in entry]


def eval_metrics(output_dir: Path) -> dict[str, float]:
    entry = next(e for e in history(output_dir) if "eval_loss" in e)
    return {k: v for k, v in entry.items() if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))}


def assert_same_training(got: Path, expected: Path, rel: float = 1e-5) -> None:
    got_weights, expected_weights = weights(got), weights(expected)
    assert got_weights.keys() == expected_weights.keys()
    for name in expected_weights:
        torch.testing.assert_close(got_weights[name], expected_weights[name], rtol=rel, atol=rel / 10, msg=name)
    assert train_losses(got) == pytest.approx(train_losses(expected), rel=rel)  # the mean over both ranks
    got_eval, expected_eval = eval_metrics(got), eval_metrics(expected)
    assert got_eval.keys() == expected_eval.keys()
    assert got_eval == pytest.approx(expected_eval, rel=rel)
    assert expected_eval["eval_rows"] == 21  # every sample once: the padded-out repeats were trimmed


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The reference: one process, batch 16 (what the two ranks see together per step)."""
    output_dir = tmp_path_factory.mktemp("one-process")
    ok(run([*TREADLE, "train", *COMMON, "--per_device_train_batch_size", "16", "--output_dir", str(output_dir)]))
    return output_dir


def test_nproc_per_node_trains_like_one_process(one_process, tmp_path):
    """`treadle train --nproc_per_node 2`: same weights, logged losses and evaluation as one process.

    Also: the task's main_process_first block runs on rank 0 before the other rank enters it;
    only rank 0 prints the summary; rank 1 logs at log_level_replica.
    """
    output_dir, cache = tmp_path / "out", tmp_path / "cache"
    cache.mkdir()
    argv = [*COMMON, "--task", "ddp_task:build_with_shared_cache", "--per_device_train_batch_size", "8",
            "--output_dir", str(output_dir), "--log_level", "info", "--log_level_replica", "error"]
    result = ok(run([*TREADLE, "train", "--nproc_per_node", "2", *argv], DDP_TEST_CACHE=str(cache)))
    assert_same_training(output_dir, one_process)
    assert result.stdout.count("trained 4 steps") == 1
    assert (cache / "level-0").read_text() == "INFO" and (cache / "level-1").read_text() == "ERROR"
    manifest = json.loads((output_dir / "checkpoint-4" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["strategy"] == "ddp"


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")
def test_a_transformers_causal_lm_is_normalised_over_every_ranks_targets(tmp_path):
    """GPT-2 on 2 ranks whose batches hold different numbers of targets: with average_tokens_across_devices
    its loss is divided by the targets of both ranks (counted over labels[..., 1:]), so the run ends
    where one process with both ranks' rows does."""
    argv = ["--task", "ddp_task:causal_lm", "--max_steps", "3", "--optim", "sgd", "--learning_rate", "0.5",
            "--logging_steps", "1", "--save_strategy", "no", "--disable_tqdm", "--seed", "7"]
    one, two = tmp_path / "one", tmp_path / "two"
    ok(run([*TREADLE, "train", *argv, "--per_device_train_batch_size", "8", "--output_dir", str(one)]))
    ok(run([*TREADLE, "train", "--nproc_per_node", "2", *argv, "--per_device_train_batch_size", "4",
            "--output_dir", str(two)]))
    got, expected = weights(two), weights(one)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert train_losses(two) == pytest.approx(train_losses(one), rel=1e-5)


def test_torchrun_with_accumulation_and_gather_object(one_process, tmp_path):
    """`torchrun -m treadle train`: 2 ranks x 4 samples x 2 micro-batches (no_sync on the first) equal
    one process with 16; the loss divides by the items of both ranks (average_tokens_across_devices);
    evaluation gathers with pickled objects (eval_use_gather_object) and still gets the same outputs."""
    output_dir = tmp_path / "out"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "treadle"]
    argv = [*COMMON, "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
            "--eval_use_gather_object", "--output_dir", str(output_dir)]
    ok(run([*torchrun, "train", *argv]))
    assert_same_training(output_dir, one_process)


def test_failed_rank_ends_the_run_and_the_checkpoint_resumes(one_process, tmp_path):
    """Rank 1 raising at step 3 ends both processes with a message naming it; checkpoint-2 is intact
    and a 2-rank resume from it finishes like the uninterrupted run."""
    output_dir = tmp_path / "out"
    argv = [*TREADLE, "train", "--nproc_per_node", "2", *COMMON, "--per_device_train_batch_size", "8",
            "--output_dir", str(output_dir)]
    failed = run(argv, DDP_TEST_FAIL_RANK="1", DDP_TEST_FAIL_STEP="3")
    assert failed.returncode != 0
    assert "rank 1: RuntimeError: rank 1 fails at step 3 on purpose" in failed.stderr
    assert "the run failed: rank 1 (local rank 1" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert sorted(p.name for p in output_dir.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]

    ok(run([*argv, "--resume_from_checkpoint", "true"]))
    assert_same_training(output_dir, one_process)


def test_a_stuck_rank_ends_the_run_within_ddp_timeout(tmp_path):
    """Rank 1 alive but stuck at step 3: rank 0 gives up after --ddp_timeout (5 s) with a message,
    torchrun stops rank 1, the run ends non-zero (instead of waiting forever), checkpoint-2 intact."""
    output_dir = tmp_path / "out"
    argv = [*TREADLE, "train", "--nproc_per_node", "2", *COMMON, "--per_device_train_batch_size", "8",
            "--ddp_timeout", "5", "--output_dir", str(output_dir)]
    failed = run(argv, timeout=120, DDP_TEST_FAIL_RANK="1", DDP_TEST_FAIL_STEP="3", DDP_TEST_FAIL_HOW="hang")
    assert failed.returncode != 0, failed.stderr
    assert "rank 0: RuntimeError:" in failed.stderr and "Timed out" in failed.stderr
    assert "the run failed: rank 0 (local rank 0" in failed.stderr
    assert sorted(p.name for p in output_dir.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]


def test_decisions_of_one_rank_are_taken_by_all(tmp_path):
    """A NaN loss on rank 1 only skips the step on both ranks (--nan_inf_policy skip_step), and a stop
    asked for by rank 0 only stops both: no rank is left waiting in a collective (ddp_timeout 60 s
    would end such a run with an error instead of the exit 0 asserted here)."""
    output_dir = tmp_path / "out"
    argv = [*TREADLE, "train", "--nproc_per_node", "2", *COMMON, "--max_steps", "6", "--per_device_train_batch_size", "8",
            "--nan_inf_policy", "skip_step", "--ddp_timeout", "60", "--output_dir", str(output_dir)]
    ok(run(argv, DDP_TEST_NAN_RANK="1", DDP_TEST_NAN_STEP="2", DDP_TEST_STOP_RANK="0", DDP_TEST_STOP_STEP="3"))
    results = json.loads((output_dir / "train_results.json").read_text())
    assert results["train_skipped_steps"] == 1
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 3


def test_two_rank_resume_is_exact(tmp_path):
    """verify-resume in both processes: stopped at step 2 and resumed equals straight, bit for bit."""
    argv = [*TREADLE, "verify-resume", "--nproc_per_node", "2", *COMMON, "--per_device_train_batch_size", "8",
            "--stop_at", "2", "--output_dir", str(tmp_path / "out")]
    result = ok(run(argv))
    assert result.stdout.count("identical:") == 2, result.stdout


@dataclass
class Machine:
    address: str
    prefix: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def two_machines():
    """Two "machines": network namespaces joined by a veth pair, each with its own address, where
    this process may create them (root); otherwise both on 127.0.0.1."""
    tag = f"trd{os.getpid() % 100000}"
    names, subnet = (f"{tag}a", f"{tag}b"), f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
    addresses = (f"{subnet}.1", f"{subnet}.2")
    steps = [["ip", "netns", "add", names[0]], ["ip", "netns", "add", names[1]],
             ["ip", "link", "add", f"{names[0]}v", "type", "veth", "peer", "name", f"{names[1]}v"]]
    for name, address in zip(names, addresses):
        steps += [["ip", "link", "set", f"{name}v", "netns", name],
                  ["ip", "-n", name, "addr", "add", f"{address}/24", "dev", f"{name}v"],
                  ["ip", "-n", name, "link", "set", f"{name}v", "up"], ["ip", "-n", name, "link", "set", "lo", "up"]]
    try:
        try:
            for step in steps:
                subprocess.run(step, check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            yield [Machine("127.0.0.1"), Machine("127.0.0.1")]
            return
        yield [Machine(address, ["ip", "netns", "exec", name], {"GLOO_SOCKET_IFNAME": f"{name}v"})
               for name, address in zip(names, addresses)]
    finally:
        for name in names:  # deleting a namespace deletes its end of the veth pair, and so the pair
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_machines_through_c10d_rendezvous(one_process, tmp_path):
    """2 "nodes" x 1 process meeting at a c10d rendezvous; storage not shared (save_on_each_node):
    each node writes the same weights, those of one process with both nodes' batch."""
    with two_machines() as machines:
        endpoint = f"{machines[0].address}:{free_port()}"
        procs = []
        for node, machine in enumerate(machines):
            own = ["--rdzv_conf", "is_host=1"] if node == 0 else []
            argv = [*machine.prefix, *TREADLE, "train", "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                    "--rdzv_endpoint", endpoint, "--rdzv_id", tmp_path.name, "--local_addr", machine.address, *own,
                    *COMMON, "--per_device_train_batch_size", "8", "--save_on_each_node",
                    "--output_dir", str(tmp_path / f"node{node}")]
            procs.append(launch(argv, **machine.env))
        results = [finish(proc) for proc in procs]
    for result in results:
        ok(result)
    node0, node1 = weights(tmp_path / "node0"), weights(tmp_path / "node1")
    assert all(torch.equal(node0[name], node1[name]) for name in node0)
    assert (tmp_path / "node1" / "checkpoint-4" / "manifest.json").is_file()
    assert_same_training(tmp_path / "node0", one_process)


def test_launcher_options_inside_a_launched_process_are_refused(tmp_path):
    result = run([*TREADLE, "train", "--nproc_per_node", "2", "--output_dir", str(tmp_path)], WORLD_SIZE="2", RANK="0")
    assert result.returncode == 2
    assert "was itself started by a launcher (WORLD_SIZE=2)" in result.stderr
    assert "Traceback" not in result.stderr


def test_several_processes_with_strategy_single_are_refused(tmp_path):
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    result = run([*TREADLE, "train", "--strategy", "single", "--max_steps", "1", "--output_dir", str(tmp_path)], **env)
    assert result.returncode == 2
    assert "strategy 'single' trains in one process, but a launcher started 2" in result.stderr
    assert "Traceback" not in result.stderr


def test_benchmark_prints_its_ratios():
    """benchmarks/bench_ddp.py still runs end to end (its figures are read by people, not asserted)."""
    bench = HERE.parents[2] / "benchmarks" / "bench_ddp.py"
    result = ok(run([sys.executable, str(bench), "--rounds", "2", "--warmup", "0", "--block", "2"]))
    for clock in ("wall", "cpu"):
        assert re.search(rf"^\s+{clock}\s+hand-written [\d.]+ ms/step\s+treadle [\d.]+ ms/step\s+ratio \d+\.\d{{3}} ", result.stdout, re.M), result.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpus_over_nccl_train_like_one_process(one_process, tmp_path):
    """The same run on 2 GPUs (treadle-cuda, nccl chosen by the backend) ends like the CPU process."""
    output_dir = tmp_path / "out"
    argv = [*TREADLE, "train", "--nproc_per_node", "2", *COMMON, "--backend", "cuda", "--per_device_train_batch_size", "8",
            "--output_dir", str(output_dir)]
    ok(run(argv, TREADLE_PLUGINS="ddp,cuda"))
    assert_same_training(output_dir, one_process, rel=1e-4)


def test_several_processes_without_the_plugin_are_one_error_before_any_starts(tmp_path):
    """Checked once in the launching process with the WORLD_SIZE its children would see."""
    result = run([*TREADLE, "train", "--nproc_per_node", "2", "--output_dir", str(tmp_path)], TREADLE_DISABLE_PLUGIN_AUTOLOAD="1")
    assert result.returncode == 2
    assert "--strategy ddp (WORLD_SIZE=2 in the environment): no installed plugin provides strategy 'ddp'" in result.stderr
    assert "treadle-ddp" in result.stderr and "rank" not in result.stderr
