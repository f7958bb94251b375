"""treadle-mlflow's tests: the installed plugin alone, and one real tracking server for the session."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # reporter_kit
from mlflow_server import MlflowServer  # noqa: E402
from reporter_kit import only_plugin  # noqa: E402


@pytest.fixture(autouse=True)
def _mlflow_plugin_loaded(monkeypatch, _isolated_plugins):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID", "MLFLOW_TAGS",
                 "MLFLOW_NESTED_RUN", "MLFLOW_PARENT_RUN_ID", "HF_MLFLOW_LOG_ARTIFACTS"):
        monkeypatch.delenv(name, raising=False)
    yield from only_plugin(monkeypatch, "mlflow")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()
