"""The overhead benchmark still runs end to end (its figures are read by people, never asserted)."""

import re
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_overhead.py"


def test_overhead_benchmark_prints_a_ratio_for_each_workload():
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--rounds", "2", "--warmup", "0"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "SET-UP DIFFERS" not in out, out
    for workload, target in (("mlp", "1.03"), ("gpt", "1.01")):
        section = out[out.index(f"{workload}: treadle / plain") :]
        cpu, wall = section.splitlines()[1:3]
        assert re.match(r"\s+cpu\s+plain\s+[\d.]+ ms/step\s+treadle\s+[\d.]+ ms/step\s+ratio \d+\.\d{3} ", cpu), cpu
        assert f"target <= {target}" in cpu
        assert re.match(r"\s+wall\s+plain\s+[\d.]+ ms/step\s+treadle\s+[\d.]+ ms/step\s+ratio \d+\.\d{3} ", wall), wall
