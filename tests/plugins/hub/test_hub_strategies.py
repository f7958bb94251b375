"""What each --hub_strategy puts on the hub: the commits, their files, the repository settings.

Real ``huggingface_hub`` client, real Trainer runs, the fake hub of ``hub_server`` on 127.0.0.1;
every assertion reads back what the server received.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hub_kit import TOKEN, tiny_trainer

pytestmark = pytest.mark.usefixtures("hub_env")

ROOT_MODEL = {"README.md", "model.safetensors", "training_args.json"}


def _summaries(hub, repo_id, revision="main"):
    return [commit.summary for commit in hub.history(repo_id, revision)]


def _local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_every_save_pushes_each_checkpoints_model_to_the_root(fake_hub, tmp_path):
    trainer = tiny_trainer(tmp_path / "every-save", hub_strategy="every_save")
    trainer.train()
    repo = "tester/every-save"  # the output directory's name, under the token's user
    assert _summaries(fake_hub, repo) == ["Training in progress, step 2", "Training in progress, step 4"]
    files = fake_hub.files(repo)
    assert set(files) == ROOT_MODEL  # the model only: no checkpoint folder, no optimizer state
    assert files["model.safetensors"] == (tmp_path / "every-save" / "checkpoint-4" / "model.safetensors").read_bytes()
    first = fake_hub.history(repo)[0]
    assert set(first.added) == ROOT_MODEL
    assert first.files["model.safetensors"] == (tmp_path / "every-save" / "checkpoint-2" / "model.safetensors").read_bytes()

    trainer.save_model()  # treadle_on_model_saved: the final model is uploaded from output_dir
    assert trainer.hub.wait(timeout=60)
    assert _summaries(fake_hub, repo)[-1] == "Model save"
    assert "Training in progress" not in fake_hub.files(repo)["README.md"].decode()
    assert trainer.hub.failures == []


class Processor:
    """A processing_class (tokenizer stand-in) whose save_pretrained writes a file and a subfolder."""

    def save_pretrained(self, directory):
        Path(directory, "tokenizer_config.json").write_text('{"kind": "test"}')
        Path(directory, "templates").mkdir(exist_ok=True)
        Path(directory, "templates", "chat.jinja").write_text("{{ message }}")


def test_every_save_pushes_the_tokenizer_files_with_each_checkpoints_model(fake_hub, tmp_path):
    trainer = tiny_trainer(tmp_path / "with-tokenizer", hub_strategy="every_save", processing_class=Processor())
    trainer.train()
    tokenizer_files = {"tokenizer_config.json", "templates/chat.jinja"}
    first = fake_hub.history("tester/with-tokenizer")[0]
    assert set(first.added) == ROOT_MODEL | tokenizer_files  # the checkpoint's tokenizer, at the root, from the start
    assert first.files["templates/chat.jinja"] == b"{{ message }}"
    assert trainer.hub.failures == []


def test_checkpoint_keeps_the_newest_checkpoint_in_last_checkpoint(fake_hub, tmp_path):
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=fake_hub.url, token=TOKEN)
    api.create_repo("tester/ckpt")
    api.create_commit("tester/ckpt", [CommitOperationAdd("last-checkpoint/stale.bin", b"from an older run")],
                      commit_message="an older run")
    trainer = tiny_trainer(tmp_path / "out", hub_strategy="checkpoint", hub_model_id="tester/ckpt", save_total_limit=1)
    trainer.train()
    files = fake_hub.files("tester/ckpt")
    pushed = {name[len("last-checkpoint/"):]: data for name, data in files.items() if name.startswith("last-checkpoint/")}
    assert pushed == _local_files(tmp_path / "out" / "checkpoint-4")  # the whole checkpoint, the stale file gone
    assert "manifest.json" in pushed and "optimizer.safetensors" in pushed
    assert ROOT_MODEL <= set(files)
    step2 = fake_hub.history("tester/ckpt")[1]
    assert step2.summary == "Training in progress, step 2" and "last-checkpoint/stale.bin" in step2.deleted
    assert [p.name for p in (tmp_path / "out").glob("checkpoint-*")] == ["checkpoint-4"]  # rotation still happened


def test_all_checkpoints_pushes_every_checkpoint_folder(fake_hub, tmp_path):
    trainer = tiny_trainer(tmp_path / "all", hub_strategy="all_checkpoints", hub_always_push=True)
    trainer.train()
    files = fake_hub.files("tester/all")
    for step in (2, 4):
        folder = tmp_path / "all" / f"checkpoint-{step}"
        assert {f"checkpoint-{step}/{name}": data for name, data in _local_files(folder).items()}.items() <= files.items()
    assert not any(name.startswith("last-checkpoint/") for name in files)


def test_end_pushes_nothing_during_training_then_the_final_model(fake_hub, tmp_path):
    trainer = tiny_trainer(tmp_path / "at-end", hub_strategy="end", hub_private_repo=True)
    trainer.train()
    assert fake_hub.attempts("commit") == 0 and "tester/at-end" not in fake_hub.repos
    job = trainer.push_to_hub(commit_message="the final model", license="mit", tags=["digits"])
    assert job.ok and job.commit_url.startswith(fake_hub.url)
    repo = fake_hub.repo("tester/at-end")
    assert repo.private is True
    assert _summaries(fake_hub, "tester/at-end") == ["the final model"]
    files = fake_hub.files("tester/at-end")
    assert ROOT_MODEL <= set(files) and not any(name.startswith("checkpoint-") for name in files)
    assert files["README.md"] == (tmp_path / "at-end" / "README.md").read_bytes()  # the local folder matches
    assert 'license: "mit"' in files["README.md"].decode() and '- "digits"' in files["README.md"].decode()


def test_revision_pushes_to_a_branch_it_creates(fake_hub, tmp_path):
    trainer = tiny_trainer(tmp_path / "branchy", hub_revision="experiment")
    trainer.train()
    assert _summaries(fake_hub, "tester/branchy", "experiment") == [
        "Training in progress, step 2", "Training in progress, step 4"]
    assert fake_hub.files("tester/branchy", "main") == {}
    assert fake_hub.repo("tester/branchy").private is None  # unset: the account's default


def test_push_to_hub_from_python_without_blocking(fake_hub, tmp_path):
    trainer = tiny_trainer(tmp_path / "py", hub_strategy="end")
    trainer.train()
    fake_hub.commit_delay = 0.5
    job = trainer.push_to_hub(blocking=False, revision="drafts")
    assert not job.done()  # returned at once, the upload runs in the background
    assert job.wait(timeout=60) and job.ok
    assert trainer.hub.wait(timeout=0)
    assert _summaries(fake_hub, "tester/py", "drafts") == ["End of training"]
    with pytest.raises(Exception, match="unknown option"):
        trainer.push_to_hub(licence="mit")


def test_push_to_hub_needs_push_to_hub(tmp_path):
    from treadle import UsageError

    trainer = tiny_trainer(tmp_path / "no-hub", push_to_hub=False)
    with pytest.raises(UsageError, match="push_to_hub needs --push_to_hub"):
        trainer.push_to_hub()


def test_init_hf_repo_and_create_model_card_use_the_plugin(fake_hub, tmp_path):
    trainer = tiny_trainer(tmp_path / "early", hub_strategy="end", hub_model_id="team/early")
    assert trainer.init_hf_repo() == "team/early" and "team/early" in fake_hub.repos
    trainer.train()
    path = trainer.create_model_card(license="mit", model_name="Early bird")
    card = Path(path).read_text()
    assert card.startswith("---\n") and 'license: "mit"' in card and "# Early bird" in card
    assert "## Framework versions" in card and "| max_steps | 4 |" in card  # treadle-hub's card, not the plain one


def test_large_files_go_through_git_lfs(fake_hub, tmp_path, monkeypatch):
    """A real hub stores weights in LFS: the client's LFS path (without Xet) against the fake's store."""
    import hashlib

    from huggingface_hub import constants, hf_hub_download

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    fake_hub.lfs_from = 1024
    trainer = tiny_trainer(tmp_path / "lfs", hub_strategy="checkpoint", max_steps=2, save_steps=2)
    trainer.train()
    weights = (tmp_path / "lfs" / "checkpoint-2" / "model.safetensors").read_bytes()
    assert len(weights) >= 1024 and hashlib.sha256(weights).hexdigest() in fake_hub.lfs_objects
    assert fake_hub.attempts("lfs-batch") >= 1 and fake_hub.attempts("lfs-put") >= 1
    assert fake_hub.files("tester/lfs")["last-checkpoint/model.safetensors"] == weights
    fetched = hf_hub_download("tester/lfs", "last-checkpoint/model.safetensors", endpoint=fake_hub.url, token=TOKEN)
    assert Path(fetched).read_bytes() == weights
    puts = fake_hub.attempts("lfs-put")
    trainer.push_to_hub()  # the weights are already stored: nothing is uploaded again
    assert fake_hub.attempts("lfs-put") == puts
