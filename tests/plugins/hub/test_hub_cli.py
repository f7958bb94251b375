"""``treadle train --push_to_hub`` in child processes: exit status and summary with a failing hub,
resuming exactly from ``hub:ORG/NAME``, the tokens from HF_TOKEN and a saved login, clear errors."""

from __future__ import annotations

import pytest
from hub_kit import TOKEN
from treadle.checkpoint.model_files import read_weights

TRAIN = ("train", "--task", "hub_task:build", "--per_device_train_batch_size", "16", "--report_to", "none",
         "--disable_tqdm", "true", "--seed", "5")


def _no_traceback(result):
    assert "Traceback" not in result.stderr, result.stderr


def test_a_failing_hub_is_a_warning_and_a_summary_line_not_a_failed_run(fake_hub, hub_cli, tmp_path):
    fake_hub.fail_commits(500)
    result = hub_cli(*TRAIN, "--output_dir", "down", "--max_steps", "2", "--save_steps", "2", "--push_to_hub",
                     "--hub_retry_delay", "0.01", "--hub_push_retries", "1", env={"HF_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    _no_traceback(result)
    assert "giving up on uploading checkpoint-2" in result.stderr
    assert "upload(s) FAILED (the local files are intact)" in result.stdout
    assert "checkpoint-2 (step 2): HfHubHTTPError" in result.stdout
    assert (tmp_path / "down" / "checkpoint-2" / "manifest.json").is_file()
    assert (tmp_path / "down" / "model.safetensors").is_file()
    assert fake_hub.tokens_seen() == {TOKEN}  # HF_TOKEN was used
    assert TOKEN not in result.stdout + result.stderr


def test_resume_from_the_hub_continues_exactly(fake_hub, hub_cli, tmp_path, hub_env):
    common = (*TRAIN, "--max_steps", "6", "--save_steps", "2", "--logging_steps", "1")
    straight = hub_cli(*common, "--output_dir", "straight")
    assert straight.returncode == 0, straight.stderr

    crashed = hub_cli(*common, "--output_dir", "crashed", "--push_to_hub", "--hub_strategy", "checkpoint",
                      "--hub_model_id", "tester/resumable", "--hub_token", TOKEN, env={"HUB_TEST_CRASH_AT": "5"})
    assert crashed.returncode != 0 and "crashing after step 5" in crashed.stderr
    files = fake_hub.files("tester/resumable")
    assert '"global_step": 4' in files["last-checkpoint/manifest.json"].decode()  # the upload finished before exit

    (tmp_path / "hf-home").mkdir(exist_ok=True)
    (tmp_path / "hf-home" / "token").write_text(TOKEN)  # a saved login (what `hf auth login` writes)
    resumed = hub_cli(*common, "--output_dir", "elsewhere", "--push_to_hub", "--resume_from_checkpoint",
                      "hub:tester/resumable")
    assert resumed.returncode == 0, resumed.stderr
    assert "step 5/6  loss" in resumed.stderr and "step 4/6  loss" not in resumed.stderr  # it started after step 4
    assert any(r["kind"] == "download" and "last-checkpoint/" in r["path"] for r in fake_hub.requests)
    final = read_weights(tmp_path / "elsewhere" / "model.safetensors")
    expected = read_weights(tmp_path / "straight" / "model.safetensors")
    assert final.keys() == expected.keys()
    assert all(final[name].equal(expected[name]) for name in final), "the resumed run drifted from the straight one"
    summaries = [c.summary for c in fake_hub.history("tester/resumable")]
    assert summaries[-1] in ("End of training", "Model save") and "Training in progress, step 6" in summaries
    assert "pushed to " in resumed.stdout and "tester/resumable" in resumed.stdout
    assert TOKEN not in resumed.stdout + resumed.stderr + crashed.stdout + crashed.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--resume_from_checkpoint", "hub:tester/nowhere", "--hub_token", TOKEN), "cannot download it from the hub"),
        (("--push_to_hub",), "no Hub token found"),
    ],
)
def test_errors_are_one_clear_message(hub_cli, argv, message):
    result = hub_cli(*TRAIN, "--output_dir", "err", "--max_steps", "1", *argv)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    _no_traceback(result)


def test_two_processes_upload_from_the_main_one_only(fake_hub, hub_cli, tmp_path):
    pytest.importorskip("treadle_ddp")
    result = hub_cli(*TRAIN, "--output_dir", "pair", "--max_steps", "4", "--save_steps", "2", "--push_to_hub",
                     "--hub_strategy", "checkpoint", "--hub_token", TOKEN, "--nproc_per_node", "2",
                     env={"TREADLE_PLUGINS": "hub,ddp"})
    assert result.returncode == 0, result.stderr
    summaries = [c.summary for c in fake_hub.history("tester/pair")]
    assert summaries[:2] == ["Training in progress, step 2", "Training in progress, step 4"]
    assert set(summaries[2:]) <= {"Model save", "End of training"} and len(summaries) <= 4
    assert fake_hub.attempts("create") == 1 and fake_hub.max_concurrent_commits == 1
    assert result.stdout.count("pushed to ") == 1
    manifest = fake_hub.files("tester/pair")["last-checkpoint/manifest.json"].decode()
    assert '"world_size": 2' in manifest
