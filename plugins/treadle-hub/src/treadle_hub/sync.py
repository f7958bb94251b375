"""``--push_to_hub`` for the Hugging Face Hub: what is uploaded when, per ``--hub_strategy``.

==================  ============================================================================
``end``             only the final model: when ``save_model`` runs (``treadle train`` does at the
                    end), at ``Trainer.push_to_hub()``, and once more at the end of the run.
``every_save``      also, at each checkpoint, that checkpoint's model files at the repository root
``checkpoint``      ... and the whole checkpoint in ``last-checkpoint/`` (replaced each time), which
                    ``--resume_from_checkpoint hub:ORG/NAME`` resumes from
``all_checkpoints`` ... and every checkpoint in its own ``checkpoint-<step>/`` folder
==================  ============================================================================

Every upload carries a generated model card (``README.md``). Uploads run on a background thread
(see ``treadle_hub.uploader``); a checkpoint is held against rotation until its upload is over.
Training waits for the uploads in flight at ``train_end`` and the run at ``run_end``, so the
hub has the final state when ``treadle train`` exits; an exception stops hub sync (no new
uploads, no retries; what was queued is uploaded once). Only the main process uploads. A failed upload is retried, then
reported as a warning and in ``summary()``; the run itself goes on and succeeds.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional

from treadle import UsageError, hookimpl
from treadle.checkpoint import processing_files
from treadle.checkpoint.manifest import MANIFEST_NAME
from treadle.checkpoint.model_files import CONFIG_NAME, GENERATION_CONFIG_NAME, TRAINING_ARGS_NAME, WEIGHTS_NAME
from treadle.components import HubSync

from treadle_hub import settings
from treadle_hub.card import CARD_OPTIONS, card_for_trainer
from treadle_hub.repo import HubRepo, Source, folder_files
from treadle_hub.uploader import PushJob, Uploader

logger = logging.getLogger("treadle.hub")

CARD_NAME = "README.md"
MODEL_FILES = (WEIGHTS_NAME, "model.safetensors.index.json", "model-*.safetensors", CONFIG_NAME,
               GENERATION_CONFIG_NAME, TRAINING_ARGS_NAME)
"""A checkpoint's files that make up the model at the repository root (what ``from_pretrained`` reads),
with the tokenizer / processor files its manifest names (``treadle.checkpoint.processing_files``)."""

NOT_IN_MODEL_PUSH = ("checkpoint-*", settings.LAST_CHECKPOINT, "_*")
"""Top-level entries of ``output_dir`` a model upload leaves out (checkpoints go their own way)."""

PUSH_OPTIONS = ("revision", "token", "commit_description", *CARD_OPTIONS)


class HuggingFaceHub(HubSync):
    name = "huggingface"

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.repo = HubRepo(args)
        self.uploader = Uploader(
            retries=int(getattr(args, "hub_push_retries", 3)),
            delay=float(getattr(args, "hub_retry_delay", 2.0)),
            permanent=_cannot_heal,
            explain=self._explain,
            on_failure=self._failed,
        )
        self.failures: list[PushJob] = []
        self.pushed: list[PushJob] = []
        self._final_push_due = False  # save_model pushed the model: run_end pushes what the run wrote after it
        self._card_options: dict[str, Any] = {}  # from push_to_hub(license=...): every later card keeps them

    # -- lifecycle ----------------------------------------------------------------------------
    @hookimpl
    def treadle_on_save(self, trainer: Any, args: Any, state: Any, checkpoint_dir: str) -> None:
        if not state.is_world_process_zero or args.hub_strategy == "end":
            return
        folder = Path(checkpoint_dir)
        release = trainer.hold_checkpoint(folder)  # released when the upload is over, whatever its outcome
        files = self._checkpoint_files(folder, args.hub_strategy)
        card = self._card_later(state, in_progress=True)
        description = f"{folder.name} (step {state.global_step})"
        message = f"Training in progress, step {state.global_step}"
        replace = (settings.LAST_CHECKPOINT,) if args.hub_strategy == "checkpoint" else ()

        def run() -> str:
            repo_id = self.repo.ensure(args.hub_revision)
            upload = {**files(), CARD_NAME: card(repo_id).encode("utf-8")}
            return self.repo.commit(upload, message=message, replace_folders=replace, revision=args.hub_revision)

        self._submit(PushJob(description, run, kind="checkpoint", release=release), coalesce=not args.hub_always_push)

    @hookimpl
    def treadle_on_model_saved(self, state: Any, output_dir: str) -> None:
        if state.is_world_process_zero:
            self._push_folder(Path(output_dir), "Model save", {})
            self._final_push_due = True

    @hookimpl
    def treadle_on_train_end(self, state: Any) -> None:
        if state.is_world_process_zero:
            self.wait()  # the checkpoints' uploads: the hub has the last one when train() returns

    @hookimpl
    def treadle_on_run_end(self, state: Any) -> None:
        if not state.is_world_process_zero:
            return
        if self._final_push_due:  # the final model went up at save_model: now the metrics and card written since
            self._push_folder(Path(self.args.output_dir), "End of training", {})
            self._final_push_due = False
        self.wait()

    @hookimpl
    def treadle_on_exception(self, state: Any, exception: BaseException) -> None:
        """Stop: no new uploads, no retries. The checkpoints already queued are complete and verified
        and are what a resume from the hub needs, so they are still uploaded, once each; after an
        interrupt (Ctrl-C) only the upload in flight finishes."""
        if not state.is_world_process_zero:
            return
        dropped = self.uploader.stop(drop_queued=isinstance(exception, KeyboardInterrupt))
        if dropped:
            logger.warning("hub: interrupted; not uploading %s", ", ".join(job.description for job in dropped))
        if self.uploader.busy():
            logger.warning("hub: the run failed; finishing the uploads already started before exiting")
        self.uploader.wait()

    # -- the contract ---------------------------------------------------------------------------
    def push(self, folder: str, *, commit_message: str, blocking: bool = True, **options: Any) -> PushJob:
        """Upload ``folder`` (``output_dir``: the model, card, metrics; not its checkpoints).

        ``options``: ``revision``, ``token``, ``commit_description`` and the model-card fields
        ``model_name``, ``language``, ``license``, ``tags``, ``finetuned_from``, ``tasks``,
        ``dataset``, ``dataset_tags``. Returns the upload's handle (``wait()``, ``ok``, ``error``,
        ``commit_url``); with ``blocking`` it is finished already.
        """
        unknown = sorted(set(options) - set(PUSH_OPTIONS))
        if unknown:
            raise UsageError(f"push_to_hub: unknown option(s) {', '.join(unknown)}; known: {', '.join(PUSH_OPTIONS)}")
        job = self._push_folder(Path(folder), commit_message, options)
        self._final_push_due = False
        if blocking:
            job.wait()
        return job

    def _push_folder(self, directory: Path, commit_message: str, options: dict[str, Any]) -> PushJob:
        self._card_options.update((k, v) for k, v in options.items() if k in CARD_OPTIONS)
        card = self._card_later(self.trainer.state if self.trainer is not None else None)
        revision = options.get("revision") or self.args.hub_revision
        token, description = options.get("token"), options.get("commit_description")

        def run() -> str:
            text = card(self.repo.ensure(revision, token))
            if text is not None:
                directory.mkdir(parents=True, exist_ok=True)
                (directory / CARD_NAME).write_text(text, encoding="utf-8")  # the local folder matches the repository
            files: dict[str, Source] = dict(folder_files(directory, skip_top=NOT_IN_MODEL_PUSH))
            return self.repo.commit(files, message=commit_message, description=description, revision=revision, token=token)

        return self._submit(PushJob(f"{directory.name}/ ({commit_message})", run, kind=f"folder:{directory.resolve()}"),
                            coalesce=True)

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self.uploader.wait(timeout)

    def init_repo(self, token: Optional[str] = None) -> str:
        """Create (or find) the repository now, on this thread; returns its id (``Trainer.init_hf_repo``)."""
        return self.repo.ensure(self.args.hub_revision, token)

    def summary(self) -> list[str]:
        lines = []
        done = [job for job in self.pushed if job.ok]
        if done and self.repo.repo_id:
            where = settings.endpoint() or "https://huggingface.co"
            lines.append(f"pushed to {where}/{self.repo.repo_id}: {len(done)} upload(s), the last {done[-1].description}")
        if self.failures:
            lines.append(f"hub: {len(self.failures)} upload(s) FAILED (the local files are intact):")
            lines += [f"  {job.description}: {job.error}" for job in self.failures]
        return lines

    # -- helpers ----------------------------------------------------------------------------------
    def _submit(self, job: PushJob, *, coalesce: bool) -> PushJob:
        self.pushed.append(job)
        return self.uploader.submit(job, coalesce=coalesce)

    def _checkpoint_files(self, folder: Path, strategy: str) -> Any:
        """``() -> {repo path: local path}`` for a checkpoint upload (listed on the upload thread)."""
        from fnmatch import fnmatch

        def files() -> dict[str, Source]:
            everything = folder_files(folder)
            processing = set(_processing_files(folder))
            chosen: dict[str, Source] = {name: path for name, path in everything.items() if name in processing
                                         or ("/" not in name and any(fnmatch(name, p) for p in MODEL_FILES))}
            if strategy in ("checkpoint", "all_checkpoints"):
                prefix = settings.LAST_CHECKPOINT if strategy == "checkpoint" else folder.name
                chosen.update({f"{prefix}/{name}": path for name, path in everything.items()})
            return chosen

        return files

    def _card_later(self, state: Any, *, in_progress: bool = False) -> Callable[[str], Optional[str]]:
        """``(repo_id) -> card``: rendered on the upload thread, once the hub named the repository,
        from a copy of the state taken now (training moves on meanwhile)."""
        if state is None or self.trainer is None:
            return lambda repo_id: None
        trainer, snapshot, options = self.trainer, copy.deepcopy(state), dict(self._card_options)
        return lambda repo_id: card_for_trainer(trainer, repo_id=repo_id, state=snapshot, in_progress=in_progress,
                                                options=options)

    def _explain(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        return settings.mask(text, self.repo.token)

    def _failed(self, job: PushJob) -> None:
        self.failures.append(job)
        logger.warning(
            "hub: giving up on uploading %s after %d attempt(s): %s. Training goes on; the local files are intact.",
            job.description, job.attempts, job.error,
        )


def _processing_files(checkpoint: Path) -> list[str]:
    """The tokenizer / processor files of a (complete, verified) checkpoint, from its manifest."""
    try:
        manifest = json.loads((checkpoint / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return processing_files(manifest) if isinstance(manifest, dict) else []


def _cannot_heal(exc: BaseException) -> bool:
    """Errors no retry mends: no permission, no such repository or branch, offline mode, bad input."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, (OfflineModeIsEnabled, ValueError)):
        return True
    status = getattr(getattr(exc, "response", None), "status_code", None) if isinstance(exc, HfHubHTTPError) else None
    return status in (400, 401, 403, 404, 409, 413, 422)
