"""treadle-hub's registration and configuration hooks: light, no ``huggingface_hub`` import here.

The hub synchroniser lives in ``treadle_hub.sync`` and is imported only when ``--push_to_hub``
selects it; the checkpoint download in ``treadle_hub.resume``, imported only for a
``hub:`` location.
"""

from __future__ import annotations

import importlib
from typing import Any, Optional

from treadle import hookimpl

from treadle_hub import settings


@hookimpl
def treadle_register_hubs(register: Any) -> None:
    register(
        "huggingface",
        "treadle_hub.sync:HuggingFaceHub",
        requires=("huggingface_hub",),
        description="the Hugging Face Hub, or a self-hosted hub at HF_ENDPOINT",
    )


@hookimpl
def treadle_add_arguments(schema: Any) -> None:
    schema.add(
        "hub_push_retries", type=int, default=3,
        help="How many times a failed upload is tried again (waiting longer each time) before it is given up with a warning.",
    )
    schema.add(
        "hub_retry_delay", type=float, default=2.0,
        help="Seconds to wait before the first retry of a failed upload; each further retry waits twice as long.",
    )


@hookimpl
def treadle_adjust_arguments(args: Any, explicit: frozenset[str]) -> None:
    """A run resumed from ``hub:ORG/NAME`` pushes back to that repository unless told otherwise."""
    resume = getattr(args, "resume_from_checkpoint", None)
    if not getattr(args, "push_to_hub", False) or "hub_model_id" in explicit or getattr(args, "hub_model_id", None):
        return
    if isinstance(resume, str) and resume.strip().startswith(f"{settings.SCHEME}:"):
        try:
            location = settings.parse_location(resume.strip())
        except ValueError:
            return  # validation below reports it
        object.__setattr__(args, "hub_model_id", location.repo_id)


@hookimpl
def treadle_validate_arguments(args: Any) -> Optional[list[str]]:
    problems = []
    resume = getattr(args, "resume_from_checkpoint", None)
    if isinstance(resume, str) and resume.strip().startswith(f"{settings.SCHEME}:"):
        try:
            settings.parse_location(resume.strip())
        except ValueError as exc:
            problems.append(f"resume_from_checkpoint: {exc}")
    if not getattr(args, "push_to_hub", False):
        return problems or None
    if settings.token_source(args) is None:
        problems.append(
            "push_to_hub: no Hub token found; pass --hub_token, set HF_TOKEN, or log in once with `hf auth login`"
        )
    if settings.offline():
        problems.append("push_to_hub: HF_HUB_OFFLINE is set, which forbids uploads; unset it to push")
    if getattr(args, "hub_push_retries", 0) < 0:
        problems.append("hub_push_retries: must be 0 or more")
    if getattr(args, "hub_retry_delay", 0.0) < 0:
        problems.append("hub_retry_delay: must be 0 or more seconds")
    return problems or None


@hookimpl
def treadle_fetch_checkpoint(location: str, args: Any) -> Optional[str]:
    """``hub:ORG/NAME[/FOLDER][@REVISION]``: download the folder (``last-checkpoint`` by default)."""
    if not location.startswith(f"{settings.SCHEME}:"):
        return None
    return importlib.import_module("treadle_hub.resume").fetch_checkpoint(location, args)


@hookimpl
def treadle_render_model_card(trainer: Any, details: dict[str, Any]) -> Optional[str]:
    """``Trainer.create_model_card``: the same card the uploads carry."""
    card = importlib.import_module("treadle_hub.card")
    hub = getattr(trainer, "hub", None)
    repo_id = getattr(getattr(hub, "repo", None), "repo_id", None)
    return card.card_for_trainer(trainer, repo_id=repo_id, options=details)


@hookimpl
def treadle_report_env() -> list[tuple[str, str]]:
    import huggingface_hub

    source = settings.token_source(None) or "none (pass --hub_token, set HF_TOKEN or `hf auth login`)"
    return [
        ("huggingface_hub", huggingface_hub.__version__),
        ("hub endpoint", settings.endpoint() or "https://huggingface.co (set HF_ENDPOINT for another hub)"),
        ("hub token", source),
    ]
