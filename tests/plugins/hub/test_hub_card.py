"""The generated model card, and the token: used on the wire, never written to a file or a log."""

from __future__ import annotations

import logging

import pytest
import yaml
from hub_kit import TOKEN, tiny_trainer

pytestmark = pytest.mark.usefixtures("hub_env")


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_card_describes_the_run(fake_hub, tmp_path):
    trainer = tiny_trainer(tmp_path / "carded", max_steps=4, save_steps=4, eval_strategy="steps", eval_steps=2,
                           learning_rate=0.01, seed=7)
    trainer.train()
    trainer.push_to_hub(license="apache-2.0", dataset="synthetic glyphs", finetuned_from="scratch")
    card = fake_hub.files("tester/carded")["README.md"].decode()
    meta = _front_matter(card)
    assert meta["library_name"] == "treadle" and meta["license"] == "apache-2.0"
    assert "treadle" in meta["tags"] and meta["datasets"] == ["synthetic glyphs"] and meta["base_model"] == "scratch"
    assert "`GlyphClassifier` model" in card and "`hub_task:build` task" in card
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert [e["step"] for e in evals] == [2, 4]
    assert "## Evaluation during training" in card
    assert f"| eval_loss | {evals[-1]['eval_loss']:.4g} |" in card  # the final metrics
    assert f"| eval_accuracy | {evals[-1]['eval_accuracy']:.4g} |" in card
    for row in ("| learning_rate | 0.01 |", "| seed | 7 |", "| max_steps | 4 |", "| strategy | single |"):
        assert row in card
    assert "| per_device_eval_batch_size |" not in card  # defaults are left out
    assert "- treadle " in card and "- torch " in card and "- huggingface_hub " in card
    assert str(tmp_path) not in card  # no local paths


def test_a_checkpoint_card_says_training_is_in_progress(fake_hub, tmp_path):
    trainer = tiny_trainer(tmp_path / "progress", max_steps=2, save_steps=2)
    trainer.train()
    card = fake_hub.history("tester/progress")[0].files["README.md"].decode()
    assert "**Training in progress**: this upload is the model at step 2." in card
    _front_matter(card)


def test_the_token_reaches_the_hub_and_nothing_else(fake_hub, tmp_path, caplog, capsys):
    fake_hub.fail_commits(500, times=1)  # a failure message too must not quote it
    with caplog.at_level(logging.DEBUG):
        trainer = tiny_trainer(tmp_path / "secret", max_steps=2, save_steps=2, hub_strategy="checkpoint")
        trainer.train()
        trainer.save_model()
        trainer.push_to_hub()
        trainer.save_state()
    assert fake_hub.tokens_seen() == {TOKEN}  # every request was authenticated with it
    assert TOKEN not in caplog.text and TOKEN not in "".join(capsys.readouterr())
    assert TOKEN not in repr(trainer.args) and TOKEN not in str(trainer.hub.summary())
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.json" for p in written)
    for path in written:
        assert TOKEN.encode() not in path.read_bytes(), path
    for commit in fake_hub.history("tester/secret"):
        for name, data in commit.files.items():
            assert TOKEN.encode() not in data, name
