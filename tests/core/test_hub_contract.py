"""The core's side of hub sync, with a hub plugin shaped like treadle-hub (its "hub" is a folder).

``treadle_on_save`` runs before rotation deletes anything; a plugin holds a checkpoint it still
reads (``Trainer.hold_checkpoint``) and rotation skips it until released; ``save_model`` fires
``treadle_on_model_saved``; ``Trainer.push_to_hub`` uploads once (from the main process only:
tests/plugins/hub runs two real processes); ``treadle_fetch_checkpoint`` turns
``scheme:location`` into a checkpoint.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from trainer_kit import Classifier, make_args, make_data

from treadle.checkpoint import list_checkpoints, resolve_resume_checkpoint
from treadle.components import HubSync
from treadle.errors import CheckpointError
from treadle.markers import hookimpl
from treadle.plugins import get_plugin_manager
from treadle.trainer import Trainer


class FolderHub(HubSync):
    """Uploads by copying into ``<output_dir>.hub/``; a checkpoint upload waits for ``gate``."""

    name = "folder"
    instances: list["FolderHub"] = []

    def __init__(self, args):
        super().__init__(args)
        self.remote = Path(args.output_dir + ".hub")
        self.gate = threading.Event()
        self.threads: list[threading.Thread] = []
        self.model_saved: list[tuple[str, list[str]]] = []
        self.pushes: list[str] = []
        FolderHub.instances.append(self)

    @hookimpl
    def treadle_on_save(self, trainer, state, checkpoint_dir):
        release = trainer.hold_checkpoint(checkpoint_dir)

        def upload():
            self.gate.wait(30)
            shutil.copytree(checkpoint_dir, self.remote / Path(checkpoint_dir).name, dirs_exist_ok=True)
            release()

        thread = threading.Thread(target=upload)
        thread.start()
        self.threads.append(thread)

    @hookimpl
    def treadle_on_model_saved(self, output_dir):
        self.model_saved.append((output_dir, sorted(p.name for p in Path(output_dir).iterdir())))

    @hookimpl
    def treadle_on_train_end(self):
        self.wait()

    def push(self, folder, *, commit_message, blocking=True, **options):
        self.pushes.append(commit_message)
        shutil.copytree(folder, self.remote / "root", dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoint-*"))
        return commit_message

    def wait(self, timeout=None):
        self.gate.set()
        for thread in self.threads:
            thread.join(timeout)
        return not any(thread.is_alive() for thread in self.threads)

    def summary(self):
        return [f"copied to {self.remote}"]


class HubPlugin:
    @hookimpl
    def treadle_register_hubs(self, register):
        register("folder", f"{__name__}:FolderHub", description="copies into a folder")

    @hookimpl
    def treadle_fetch_checkpoint(self, location, args):
        scheme, _, rest = location.partition(":")
        if scheme != "copy":
            return None
        target = Path(args.output_dir) / "fetched" if args is not None else Path(rest).parent / "fetched"
        shutil.copytree(rest, target, dirs_exist_ok=True)
        return str(target)


@pytest.fixture
def folder_hub():
    FolderHub.instances.clear()
    get_plugin_manager().register_module(HubPlugin(), "folderhub")
    yield FolderHub
    for hub in FolderHub.instances:
        hub.wait()


class SeesCheckpoints:
    """Lists the checkpoints that exist when each ``treadle_on_save`` runs."""

    def __init__(self):
        self.seen = {}

    @hookimpl
    def treadle_on_save(self, state, args):
        self.seen[state.global_step] = [p.name for p in list_checkpoints(args.output_dir)]


def _trainer(tmp_path, callbacks=(), **overrides):
    values = dict(max_steps=4, save_strategy="steps", save_steps=1, save_total_limit=1)
    args = make_args(tmp_path, **{**values, **overrides})
    return Trainer(model=Classifier(), args=args, train_dataset=make_data(64), callbacks=list(callbacks))


def test_on_save_runs_before_rotation_deletes(tmp_path):
    seen = SeesCheckpoints()
    _trainer(tmp_path, [seen]).train()
    assert seen.seen[2] == ["checkpoint-1", "checkpoint-2"]  # checkpoint-1 goes only after the hook
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["checkpoint-4"]


def test_held_checkpoints_outlive_rotation_until_released(tmp_path, folder_hub):
    seen = SeesCheckpoints()
    trainer = _trainer(tmp_path, [seen], push_to_hub=True)
    hub = trainer.hub
    assert isinstance(hub, FolderHub) and hub.trainer is trainer  # HubSync learns its trainer at init_end
    release_first = trainer.hold_checkpoint(tmp_path / "out" / "checkpoint-1")  # a second hold on the same one
    trainer.train()  # the uploads wait for the gate, which train_end opens
    assert seen.seen[4] == ["checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-4"]  # all held meanwhile
    assert sorted(p.name for p in hub.remote.iterdir()) == ["checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-4"]
    # released by their uploads; the end of training rotated again, but checkpoint-1 is still held once
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["checkpoint-1", "checkpoint-4"]
    release_first()
    release_first()  # idempotent
    trainer.train()  # a later rotation deletes it
    assert "checkpoint-1" not in [p.name for p in list_checkpoints(tmp_path / "out")]


def test_save_model_fires_model_saved_and_push_to_hub_uploads_once(tmp_path, folder_hub):
    trainer = _trainer(tmp_path, push_to_hub=True, save_strategy="no")
    trainer.train()
    trainer.save_model()
    out = str(tmp_path / "out")
    assert trainer.hub.model_saved == [(out, ["model.safetensors", "training_args.json"])]  # after the files exist
    assert trainer.push_to_hub(commit_message="final", blocking=True) == "final"
    assert trainer.hub.pushes == ["final"] and len(trainer.hub.model_saved) == 1  # its own save fires nothing
    assert (trainer.hub.remote / "root" / "model.safetensors").is_file()


def test_a_plugin_fetches_a_checkpoint_named_by_a_scheme(tmp_path, folder_hub):
    trainer = _trainer(tmp_path)
    trainer.train()
    source = tmp_path / "out" / "checkpoint-4"
    args = make_args(tmp_path / "second")
    fetched = resolve_resume_checkpoint(f"copy:{source}", args.output_dir, args)
    assert fetched == Path(args.output_dir) / "fetched" and (fetched / "manifest.json").is_file()
    resumed = Trainer(model=Classifier(), args=make_args(tmp_path / "second", max_steps=6), train_dataset=make_data(64))
    assert resumed.train(resume_from_checkpoint=f"copy:{source}").global_step == 6
    with pytest.raises(CheckpointError, match="no installed plugin fetches 'nowhere:' checkpoints"):
        resolve_resume_checkpoint("nowhere:thing", tmp_path)
