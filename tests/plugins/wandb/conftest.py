"""treadle-wandb's tests: the installed plugin alone, wandb offline, every wandb file under tmp_path."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # reporter_kit
from reporter_kit import only_plugin  # noqa: E402


@pytest.fixture(autouse=True)
def _wandb_plugin_loaded(monkeypatch, tmp_path, _isolated_plugins):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    for name in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_TAGS", "WANDB_RUN_GROUP", "WANDB_LOG_MODEL", "WANDB_DIR",
                 "WANDB_NAME", "WANDB_RUN_ID", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield from only_plugin(monkeypatch, "wandb")
