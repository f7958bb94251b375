"""treadle-transformers: a transformers model fine-tuned from the shell, no script.

Each task trains and evaluates through ``treadle train --task ...`` on files written here, with a
tiny model and a tokenizer built in the test; the output directory loads with from_pretrained.
"""

from __future__ import annotations

import csv
import json
import random

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("datasets")

COMMON = ("--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--seed", "0", "--use_cpu", "true")


def _reviews(n, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        positive = rng.random() < 0.5
        words = [rng.choice(["good", "fine"] if positive else ["bad", "awful"])] + rng.sample(["the", "movie", "plot", "was", "is", "a"], 3)
        rng.shuffle(words)
        rows.append({"sentence": " ".join(words), "label": "pos" if positive else "neg"})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _csv(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_text_classification_from_the_shell(tmp_path, model_dir, treadle_cli):
    model = model_dir("bert")
    train, dev = _csv(tmp_path / "train.csv", _reviews(160, 0)), _csv(tmp_path / "dev.csv", _reviews(40, 1))
    out = tmp_path / "out"
    result = treadle_cli("train", "--task", "text-classification", "--model_name_or_path", model, "--train_file", train,
                         "--validation_file", dev, "--output_dir", out, "--num_train_epochs", "6", "--learning_rate", "3e-3",
                         "--per_device_train_batch_size", "16", "--max_seq_length", "16", "--do_eval", *COMMON)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["eval_accuracy"] >= 0.9 and "eval_f1" in metrics
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(str(out))
    assert reloaded.config.id2label == {0: "neg", 1: "pos"}
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))  # saved next to the model
    assert tokenizer("good movie")["input_ids"]

    again = treadle_cli("train", "--task", "text-classification", "--model_name_or_path", out, "--train_file", train,
                        "--validation_file", dev, "--output_dir", tmp_path / "out2", "--max_steps", "1", "--do_eval", *COMMON)
    assert again.returncode == 0, again.stderr[-3000:]  # weights in the directory: fine-tuned from them
    assert json.loads((tmp_path / "out2" / "eval_results.json").read_text())["eval_accuracy"] >= 0.85


def test_causal_lm_reports_perplexity(tmp_path, model_dir, treadle_cli):
    model = model_dir("gpt2")
    rng = random.Random(0)
    lines = [" ".join(["the", rng.choice(["cat", "dog"]), "is", rng.choice(["red", "blue", "green"])]) for _ in range(200)]
    (tmp_path / "train.txt").write_text("\n".join(lines[:160]) + "\n")
    (tmp_path / "dev.txt").write_text("\n".join(lines[160:]) + "\n")
    out = tmp_path / "out"
    common = list(COMMON)
    common[common.index("--report_to") + 1] = "jsonl"  # a reporter: the perplexity must reach its eval log too
    result = treadle_cli("train", "--task", "causal-lm", "--model_name_or_path", model, "--train_file", tmp_path / "train.txt",
                         "--validation_file", tmp_path / "dev.txt", "--output_dir", out, "--block_size", "16",
                         "--max_steps", "40", "--learning_rate", "3e-3", "--per_device_train_batch_size", "8", "--do_eval", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "eval_results.json").read_text())
    assert 1.0 < metrics["eval_perplexity"] < len(transformers.AutoTokenizer.from_pretrained(str(out)))
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluation = [line for line in logged if "eval_loss" in line][-1]
    assert evaluation["eval_perplexity"] == pytest.approx(metrics["eval_perplexity"])  # logged with the loss, not after
    assert metrics["eval_accuracy"] > 0.3  # "the" and "is" are predictable
    assert transformers.AutoModelForCausalLM.from_pretrained(str(out)).config.n_layer == 1


def test_seq2seq_generates_and_its_ids_reach_compute_metrics(tmp_path, model_dir, treadle_cli):
    model = model_dir("t5")
    rng = random.Random(0)
    rows = []
    for _ in range(120):  # the target is the colour named in the source
        color = rng.choice(["red", "blue", "green"])
        rows.append({"source": f"the {rng.choice(['cat', 'dog'])} is {color}", "target": color})
    write_jsonl(tmp_path / "train.jsonl", rows[:100])
    write_jsonl(tmp_path / "dev.jsonl", rows[100:])
    out = tmp_path / "out"
    result = treadle_cli("train", "--task", "seq2seq", "--model_name_or_path", model, "--train_file", tmp_path / "train.jsonl",
                         "--validation_file", tmp_path / "dev.jsonl", "--output_dir", out, "--num_train_epochs", "8",
                         "--learning_rate", "1e-2", "--per_device_train_batch_size", "10", "--predict_with_generate",
                         "--generation_max_length", "4", "--do_eval", *COMMON)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "eval_results.json").read_text())
    assert "eval_exact_match" in metrics  # computed on generated, decoded text
    assert metrics["eval_exact_match"] > 0.5
    assert transformers.AutoModelForSeq2SeqLM.from_pretrained(str(out)).config.d_model == 32


def test_missing_options_are_one_clear_error(tmp_path, treadle_cli):
    result = treadle_cli("train", "--task", "text-classification")
    assert result.returncode == 2
    assert "--model_name_or_path" in result.stderr and "--train_file" in result.stderr
    assert "Traceback" not in result.stderr
    missing = treadle_cli("train", "--task", "text-classification", "--model_name_or_path", tmp_path, "--train_file",
                          tmp_path / "nope.csv")
    assert missing.returncode == 2 and "no such file" in missing.stderr
