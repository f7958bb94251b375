"""``treadle verify-resume`` prints its progress and verdict, not the three runs' bars and log lines."""

from __future__ import annotations

import logging

from treadle.cli import main as cli_main


def main(argv):
    return cli_main(["verify-resume", *argv])

COMMON = ["--task", "resume_task:build", "--max_steps", "6", "--per_device_train_batch_size", "8",
          "--report_to", "console", "--logging_steps", "2", "--save_strategy", "no", "--seed", "3"]


def _console_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "treadle.console"]


def test_the_inner_runs_are_quiet_unless_verbose(tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="treadle")
    level = logging.getLogger("treadle").level
    assert main([*COMMON, "--stop_at", "3"]) == 0
    out, err = capsys.readouterr()
    assert out.strip().startswith("identical: 6 steps straight")
    assert [line for line in err.splitlines() if "fixture" not in line] == [
        "verify-resume 1/3: 6 steps straight",
        "verify-resume 2/3: 3 steps, then save and stop",
        "verify-resume 3/3: resume from checkpoint-3 in a new Trainer, steps 4 to 6",
    ]
    assert not _console_lines(caplog)
    assert logging.getLogger("treadle").level == level  # the runs' log level does not outlive them

    assert main([*COMMON, "--stop_at", "3", "--verbose"]) == 0
    out, err = capsys.readouterr()
    assert out.strip().startswith("identical: 6 steps straight")
    assert "train:" in err  # progress bars
    assert any(line.startswith("step 2/6  loss") for line in _console_lines(caplog))
