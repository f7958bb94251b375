"""treadle.reporting: what the tensorboard, wandb and mlflow reporters share."""

from __future__ import annotations

import http.server
import socket
import threading

import numpy as np
import pytest
import torch
from treadle.args import TrainingArguments
from treadle.reporting import as_number, default_logging_dir, metric_name, model_files, run_config, scalar_metrics, unreachable


def test_metric_names_group_by_split():
    assert [metric_name(k) for k in ("loss", "eval_loss", "eval_squad_f1", "test_accuracy", "train_loss", "epoch")] == [
        "train/loss", "eval/loss", "eval/squad_f1", "test/accuracy", "train/train_loss", "train/epoch"]


def test_only_numbers_are_metrics():
    assert [as_number(v) for v in (3, 0.5, torch.tensor(2.0), np.float32(1.5), True, "x", None, torch.ones(2))] == [
        3.0, 0.5, 2.0, 1.5, None, None, None, None]
    assert scalar_metrics({"loss": torch.tensor(0.25), "note": "hi", "eval_accuracy": 1}) == {
        "train/loss": 0.25, "eval/accuracy": 1.0}


def test_run_config_masks_tokens_and_url_credentials(tmp_path):
    args = TrainingArguments(str(tmp_path), hub_token="hf_abc", run_name="https://alice:s3cret@tracking.example/x")
    config = run_config(args, model=torch.nn.Linear(3, 2))
    assert config["hub_token"] == "***" and config["run_name"] == "https://***@tracking.example/x"
    assert config["model/num_parameters"] == 8
    assert all(isinstance(v, (bool, int, float, str)) for v in config.values())


def test_default_logging_dir_is_under_output_dir_unless_given(tmp_path):
    assert default_logging_dir(TrainingArguments(str(tmp_path))).startswith(str(tmp_path / "runs") + "/")
    assert default_logging_dir(TrainingArguments(str(tmp_path), logging_dir=str(tmp_path / "tb"))) == str(tmp_path / "tb")


def test_model_files_are_the_saved_model_without_the_run_records(tmp_path):
    assert model_files(str(tmp_path)) == []
    for name in ("model.safetensors", "config.json", "metrics.jsonl", "train_results.json", "trainer_state.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "checkpoint-4").mkdir()
    assert [p.rsplit("/", 1)[1] for p in model_files(str(tmp_path))] == ["config.json", "model.safetensors"]


@pytest.fixture
def http_server():
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            self.send_response(int(self.path.strip("/")))
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_unreachable_tells_a_missing_server_from_one_that_answers(http_server):
    assert unreachable(f"{http_server}/200") is None and unreachable(f"{http_server}/404") is None
    assert unreachable(f"{http_server}/502") == "HTTP 502 Bad Gateway"  # a gateway without its server
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert "refused" in unreachable(f"http://127.0.0.1:{closed}/health", timeout=2).lower()
