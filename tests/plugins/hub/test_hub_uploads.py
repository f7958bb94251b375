"""Uploads in the background: one at a time, never blocking a step, checkpoints held against
rotation while uploading, and failures retried, then reported without stopping training."""

from __future__ import annotations

import logging
import time

import pytest
from hub_kit import tiny_trainer
from treadle.markers import hookimpl

pytestmark = pytest.mark.usefixtures("hub_env")


class Watch:
    """Records, at the end of each step, how many commits the hub had and which checkpoints existed."""

    def __init__(self, hub, output_dir):
        self.hub, self.output_dir, self.at_step = hub, output_dir, {}

    @hookimpl
    def treadle_on_step_end(self, state):
        self.at_step[state.global_step] = (
            len(self.hub.history(f"tester/{self.output_dir.name}")) if f"tester/{self.output_dir.name}" in self.hub.repos else 0,
            sorted(p.name for p in self.output_dir.glob("checkpoint-*")),
        )


def test_uploads_run_one_at_a_time_behind_training_and_hold_their_checkpoint(fake_hub, tmp_path):
    fake_hub.commit_delay = 0.6
    out = tmp_path / "slow"
    watch = Watch(fake_hub, out)
    trainer = tiny_trainer(out, max_steps=4, save_steps=1, save_total_limit=1, hub_strategy="checkpoint",
                           hub_always_push=True, callbacks=[watch])
    started = time.monotonic()
    trainer.train()
    assert fake_hub.max_concurrent_commits == 1
    history = [c.summary for c in fake_hub.history("tester/slow")]
    assert history == [f"Training in progress, step {n}" for n in (1, 2, 3, 4)]  # every save, in order
    commits_at_last_step, checkpoints_at_last_step = watch.at_step[4]
    assert commits_at_last_step < 4  # step 4 ended while uploads were still queued: no step waited for them
    # save_total_limit=1, but checkpoints still uploading were kept; rotation deleted them once released
    assert len(checkpoints_at_last_step) > 1
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
    assert time.monotonic() - started >= 4 * 0.6  # train_end waited for the last upload
    for commit in fake_hub.history("tester/slow"):  # each upload read a whole checkpoint
        step = commit.summary.rsplit(" ", 1)[1]
        assert f'"global_step": {step}' in commit.files["last-checkpoint/manifest.json"].decode()


def test_a_newer_checkpoint_replaces_the_one_waiting(fake_hub, tmp_path):
    fake_hub.commit_delay = 0.8
    trainer = tiny_trainer(tmp_path / "coalesce", max_steps=4, save_steps=1, save_total_limit=1, hub_strategy="checkpoint")
    trainer.train()
    history = [c.summary for c in fake_hub.history("tester/coalesce")]
    assert history[0] == "Training in progress, step 1" and history[-1] == "Training in progress, step 4"
    assert len(history) < 4  # steps 2 and/or 3 were replaced while step 1 uploaded
    superseded = [job for job in trainer.hub.pushed if job.status == "superseded"]
    assert superseded and not trainer.hub.failures
    assert sorted(p.name for p in (tmp_path / "coalesce").glob("checkpoint-*")) == ["checkpoint-4"]


def test_a_failing_upload_is_retried_with_backoff(fake_hub, tmp_path, caplog):
    fake_hub.fail_commits(500, times=2)
    trainer = tiny_trainer(tmp_path / "flaky", max_steps=2, save_steps=2)
    with caplog.at_level(logging.WARNING, logger="treadle.hub"):
        trainer.train()
    assert fake_hub.attempts("commit") == 3
    assert [c.summary for c in fake_hub.history("tester/flaky")] == ["Training in progress, step 2"]
    retries = [r for r in caplog.records if "trying again" in r.getMessage()]
    assert len(retries) == 2 and "500" in retries[0].getMessage()
    assert trainer.hub.failures == [] and trainer.hub.pushed[0].attempts == 3


def test_a_hub_that_keeps_failing_costs_no_step_and_no_file(fake_hub, tmp_path, caplog):
    fake_hub.fail_commits(503)
    trainer = tiny_trainer(tmp_path / "down", max_steps=4, save_steps=2, hub_strategy="checkpoint",
                           plugin_options={"hub_push_retries": 2, "hub_retry_delay": 0.01})
    with caplog.at_level(logging.WARNING, logger="treadle.hub"):
        output = trainer.train()
    assert output.global_step == 4
    assert sorted(p.name for p in (tmp_path / "down").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    failures = trainer.hub.failures
    assert [job.description for job in failures] == ["checkpoint-2 (step 2)", "checkpoint-4 (step 4)"]
    assert all(job.attempts == 3 and "503" in job.error for job in failures)
    assert "giving up on uploading checkpoint-4" in caplog.text
    summary = "\n".join(trainer.hub.summary())
    assert "2 upload(s) FAILED" in summary and "checkpoint-4 (step 4)" in summary
    job = trainer.push_to_hub()  # an explicit push that fails is a result, not an exception
    assert not job.ok and "503" in job.error


def test_an_error_that_cannot_heal_is_not_retried(fake_hub, tmp_path):
    fake_hub.fail_commits(403)
    trainer = tiny_trainer(tmp_path / "forbidden", max_steps=2, save_steps=2)
    trainer.train()
    assert fake_hub.attempts("commit") == 1
    assert trainer.hub.failures[0].attempts == 1 and "403" in trainer.hub.failures[0].error


def test_an_exception_stops_uploads_but_finishes_what_was_queued(fake_hub, tmp_path):
    import hub_task

    fake_hub.commit_delay = 0.5
    trainer = tiny_trainer(tmp_path / "crash", max_steps=6, save_steps=1, hub_strategy="checkpoint",
                           callbacks=[hub_task.CrashAt(3)])
    with pytest.raises(RuntimeError, match="crashing after step 3"):
        trainer.train()
    assert not trainer.hub.uploader.busy()
    steps = [c.summary for c in fake_hub.history("tester/crash")]
    assert steps[0] == "Training in progress, step 1" and steps[-1] == "Training in progress, step 2"
    late = trainer.hub.push(str(tmp_path / "crash"), commit_message="after the crash", blocking=True)
    assert late.status == "cancelled"  # hub sync has stopped
