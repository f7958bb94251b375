"""benchmarks/bench_precision.py still runs end to end (its figures are read by people, never asserted)."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_precision.py"


def test_the_precision_benchmark_reports_a_ratio_per_precision():
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--precisions", "fp32,bf16", "--rounds", "1", "--block", "2", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["ratio_to_fp32"]["fp32"] == 1.0 and figures["ratio_to_fp32"]["bf16"] > 0
    assert figures["steps_per_precision"] == 2
