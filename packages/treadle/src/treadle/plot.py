"""``treadle plot OUTPUT_DIR``: a run's curves as one PNG, without any tracking service.

The numbers come from what every run leaves in its output directory: ``metrics.jsonl`` (the
``jsonl`` reporter, on by default for the demo task), else the log history of
``trainer_state.json`` (written at the end of ``treadle train``, and in every checkpoint). After a
resume the metrics file holds the repeated steps twice; the later line wins, so the curve shows
what the finished run went through. matplotlib is an optional extra (``pip install
'treadle[plot]'``) imported only here.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from treadle.errors import UsageError

_SPEEDS = ("_runtime", "_samples_per_second", "_steps_per_second", "_tokens_per_second")


@dataclass
class RunCurves:
    """``key -> [(step, value), ...]`` sorted by step, and where they were read from."""

    source: Path
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def panels(self) -> list[tuple[str, list[str]]]:
        """``(title, keys)`` of each panel to draw, in order; panels without data are left out."""
        keys = set(self.series)
        evaluation = sorted(k for k in keys if k.startswith("eval_") and k != "eval_loss" and not k.endswith(_SPEEDS))
        wanted = [
            ("loss", [k for k in ("loss", "eval_loss") if k in keys]),
            ("learning rate", [k for k in ("learning_rate",) if k in keys]),
            ("gradient norm", [k for k in ("grad_norm",) if k in keys]),
            ("evaluation", evaluation),
        ]
        return [(title, names) for title, names in wanted if names]


def read_curves(output_dir: str) -> RunCurves:
    """The run's metrics by step, from ``metrics.jsonl`` or else ``trainer_state.json``."""
    directory = Path(output_dir)
    if not directory.is_dir():
        raise UsageError(f"treadle plot: {output_dir} is not a directory (give the output_dir of a run)")
    jsonl, state = directory / "metrics.jsonl", directory / "trainer_state.json"
    if jsonl.is_file():
        return _curves(jsonl, _jsonl_records(jsonl))
    if state.is_file():
        try:
            history = json.loads(state.read_text(encoding="utf-8")).get("log_history", [])
        except ValueError as exc:
            raise UsageError(f"treadle plot: {state} is not valid JSON ({exc})") from None
        return _curves(state, history)
    raise UsageError(
        f"treadle plot: {output_dir} holds neither metrics.jsonl nor trainer_state.json "
        "(train with --report_to jsonl, or point at a finished run's output_dir)"
    )


def _jsonl_records(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a crash
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _curves(source: Path, records: list[dict[str, Any]]) -> RunCurves:
    by_key: dict[str, dict[int, float]] = {}
    for record in records:
        step = record.get("step")
        if not isinstance(step, int):
            continue
        for key, value in record.items():
            if key in ("step", "epoch") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                by_key.setdefault(key, {})[step] = float(value)  # a later line (a resume) replaces an earlier one
    series = {key: sorted(points.items()) for key, points in by_key.items() if key not in ("total_flos",)}
    return RunCurves(source, series)


def plot_run(output_dir: str, output: Optional[str] = None) -> Path:
    """Draw the run's curves; returns the PNG's path (default ``OUTPUT_DIR/metrics.png``)."""
    curves = read_curves(output_dir)
    panels = curves.panels()
    if not panels:
        raise UsageError(f"treadle plot: {curves.source} has no loss, learning rate or evaluation metrics to draw")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("treadle plot needs matplotlib: pip install 'treadle[plot]' (or pip install matplotlib)") from None

    columns = 1 if len(panels) == 1 else 2
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(6 * columns, 3.6 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (title, keys) in zip(axes, panels, strict=False):  # a 2x2 grid may have a spare cell
        for key in keys:
            steps, values = zip(*curves.series[key], strict=True)
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.legend(fontsize="small")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure.suptitle(f"{os.path.basename(os.path.abspath(output_dir))} ({curves.source.name})")
    target = Path(output) if output else Path(output_dir) / "metrics.png"
    try:
        figure.savefig(target, dpi=100)
    except OSError as exc:
        raise UsageError(f"treadle plot: cannot write {target} ({exc.strerror or exc})") from None
    return target


def main(rest: list[str]) -> int:
    """``treadle plot OUTPUT_DIR [--output FILE]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="treadle plot", description="Draw a run's loss, learning rate and evaluation curves to a PNG."
    )
    parser.add_argument("output_dir", help="the run's output_dir (with metrics.jsonl or trainer_state.json)")
    parser.add_argument("--output", "-o", default=None, help="the PNG to write (default OUTPUT_DIR/metrics.png)")
    parsed = parser.parse_args(rest)
    target = plot_run(parsed.output_dir, parsed.output)
    print(f"wrote {target}")
    return 0
