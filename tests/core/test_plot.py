"""``treadle plot``: the curves of a real run's output directory, drawn to a PNG."""

from __future__ import annotations

import json
import sys

import pytest
from trainer_kit import Classifier, make_args, make_data
from treadle.errors import UsageError
from treadle.plot import plot_run, read_curves
from treadle.trainer import Trainer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _trained_run(tmp_path, report_to="jsonl"):
    args = make_args(tmp_path, max_steps=6, logging_strategy="steps", logging_steps=2, eval_strategy="steps", eval_steps=3,
                     report_to=report_to)
    trainer = Trainer(Classifier(), args, train_dataset=make_data(64), eval_dataset=make_data(16))
    trainer.train()
    trainer.save_state()
    trainer.end_run()
    return trainer, tmp_path / "out"


def test_the_curves_are_the_logged_values_from_metrics_jsonl_or_trainer_state(tmp_path):
    trainer, out = _trained_run(tmp_path)
    expected = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    curves = read_curves(str(out))
    assert curves.source.name == "metrics.jsonl"
    assert curves.series["loss"] == [(step, pytest.approx(value)) for step, value in expected]
    assert [step for step, _ in curves.series["eval_loss"]] == [3, 6]
    assert [title for title, _ in curves.panels()] == ["loss", "learning rate", "gradient norm"]
    assert dict(curves.panels())["loss"] == ["loss", "eval_loss"]

    (out / "metrics.jsonl").unlink()
    from_state = read_curves(str(out))
    assert from_state.source.name == "trainer_state.json"
    assert from_state.series["loss"] == [(step, pytest.approx(value)) for step, value in expected]


def test_after_a_resume_the_later_line_of_a_step_wins_and_a_cut_line_is_skipped(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    lines = [{"step": 2, "loss": 1.0}, {"step": 4, "loss": 0.9}, {"step": 4, "loss": 0.8, "eval_accuracy": 0.5},
             {"step": 6, "loss": 0.7}]
    text = "\n".join(json.dumps(line) for line in lines[:2]) + '\n{"step": 5, "lo\n' + "\n".join(json.dumps(line) for line in lines[2:])
    (out / "metrics.jsonl").write_text(text + "\n")
    curves = read_curves(str(out))
    assert curves.series["loss"] == [(2, 1.0), (4, 0.8), (6, 0.7)]
    assert dict(curves.panels())["evaluation"] == ["eval_accuracy"]


def test_treadle_plot_writes_a_png(tmp_path, run_treadle):
    pytest.importorskip("matplotlib")
    _, out = _trained_run(tmp_path)
    result = run_treadle("plot", out, "--output", tmp_path / "curves.png")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert plot_run(str(out)) == out / "metrics.png" and (out / "metrics.png").stat().st_size > 10_000


def test_nothing_to_plot_is_one_clear_message(tmp_path, run_treadle):
    result = run_treadle("plot", tmp_path / "missing")
    assert result.returncode == 2 and "is not a directory" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="neither metrics.jsonl nor trainer_state.json"):
        read_curves(str(tmp_path / "empty"))


def test_without_matplotlib_the_message_says_what_to_install(tmp_path, monkeypatch):
    _, out = _trained_run(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(UsageError, match=r"pip install 'treadle\[plot\]'"):
        plot_run(str(out))
