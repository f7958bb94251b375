"""``treadle train --nproc_per_node N``: start the processes with torch.distributed.run.

treadle has no launcher of its own. The options below are torchrun's; when one is on the
command line, ``treadle`` takes them out and hands the rest, unchanged, to torchrun's engine as
``-m treadle <command> ...``, so each process it starts is an ordinary ``treadle <command>``
that finds RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR in its environment, exactly as under
``torchrun``, ``accelerate launch`` or the ``deepspeed`` launcher.

A single machine without an explicit address or rendezvous gets torchrun's ``--standalone``
(a free port on localhost), so two runs on one machine never fight over port 29500. When a
process fails, torchrun stops the others; the error names the rank that failed first.

Imports torch only once a launch is really asked for: ``--help`` and parsing stay light.
"""

from __future__ import annotations

import os
import signal
from typing import Optional, Sequence

from treadle.errors import TreadleError, UsageError

LAUNCH_OPTIONS: dict[str, str] = {
    "nproc_per_node": "processes to start on this machine (a number, or torchrun's auto / cpu / gpu)",
    "nnodes": "machines taking part (N, or MIN:MAX for an elastic run)",
    "node_rank": "this machine's rank among them (static rendezvous)",
    "master_addr": "address of the machine with node_rank 0 (static rendezvous)",
    "master_port": "free port on that machine (static rendezvous)",
    "rdzv_backend": "rendezvous backend, e.g. c10d (dynamic rendezvous)",
    "rdzv_endpoint": "host:port of the rendezvous (dynamic rendezvous)",
    "rdzv_id": "a job id shared by all machines of one run (dynamic rendezvous)",
    "rdzv_conf": "rendezvous settings as key=value,... (e.g. is_host=1 on the machine that serves the endpoint)",
    "local_addr": "this machine's address as the others reach it (default: its host name)",
    "max_restarts": "times torchrun restarts the whole group after a failure (default 0)",
}
"""torchrun's options that ``treadle train`` accepts and passes on (help text for ``--help``)."""

_INTEGER_OPTIONS = ("node_rank", "master_port", "max_restarts")

LAUNCHED_ENV = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK", "WORLD_SIZE")
"""Variables a launcher sets in the processes it starts."""


def split_launch_options(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """``(launcher options, the other words)``; accepts ``--name value``, ``--name=value`` and dashes."""
    options: dict[str, str] = {}
    rest: list[str] = []
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        name, has_value, value = word[2:].partition("=") if word.startswith("--") else ("", "", "")
        name = name.replace("-", "_")
        if name not in LAUNCH_OPTIONS:
            rest.append(word)
            i += 1
            continue
        if not has_value:
            if i + 1 >= len(words) or words[i + 1].startswith("--"):
                raise UsageError(f"--{name} needs a value ({LAUNCH_OPTIONS[name]})")
            value = words[i + 1]
            i += 1
        options[name] = value
        i += 1
    return options, rest


def check_launch_options(options: dict[str, str], environ: Optional[dict[str, str]] = None) -> None:
    """A clear error for a value torchrun would reject, or for a launch from inside a launched process."""
    environ = os.environ if environ is None else environ
    launched = [f"{name}={environ[name]}" for name in LAUNCHED_ENV if name in environ]
    if launched:
        given = " ".join(f"--{name}" for name in options)
        raise UsageError(
            f"{given}: this process was itself started by a launcher ({', '.join(launched)}), so it cannot "
            "start processes of its own. Give the launcher options to the launcher (torchrun --nproc_per_node N "
            "-m treadle train ...), or run `treadle train --nproc_per_node N ...` from a plain shell"
        )
    for name in _INTEGER_OPTIONS:
        if name in options and not options[name].isdigit():
            raise UsageError(f"--{name} {options[name]!r}: expected a whole number ({LAUNCH_OPTIONS[name]})")
    nproc = options.get("nproc_per_node")
    if nproc is not None and not (nproc in ("auto", "cpu", "gpu", "xpu") or (nproc.isdigit() and int(nproc) > 0)):
        raise UsageError(f"--nproc_per_node {nproc!r}: expected a number of processes (1 or more), or auto / cpu / gpu")
    nnodes = options.get("nnodes")
    if nnodes is not None and not all(part.isdigit() and int(part) > 0 for part in nnodes.split(":", 1)):
        raise UsageError(f"--nnodes {nnodes!r}: expected a number of machines, or MIN:MAX")
    multi_node = nnodes is not None and nnodes not in ("1", "1:1")
    if multi_node and not ({"master_addr", "rdzv_endpoint"} & set(options)):
        raise UsageError(
            f"--nnodes {nnodes}: the machines need a meeting point: give --rdzv_backend c10d --rdzv_endpoint HOST:PORT "
            "(and the same --rdzv_id on every machine), or --master_addr / --master_port with --node_rank"
        )


def torchrun_argv(options: dict[str, str], command: str, rest: Sequence[str]) -> list[str]:
    """torchrun's command line for ``treadle <command> <rest>`` with these launcher options."""
    argv = [f"--{name}={value}" for name, value in options.items()]
    rendezvous = {"master_addr", "master_port", "rdzv_backend", "rdzv_endpoint", "rdzv_id", "rdzv_conf"} & set(options)
    if options.get("nnodes", "1") in ("1", "1:1") and not rendezvous:
        argv.append("--standalone")  # a free port on localhost: concurrent runs do not collide
    return [*argv, "--module", "treadle", command, *rest]


def launch(options: dict[str, str], command: str, rest: Sequence[str]) -> int:
    """Run ``treadle <command> <rest>`` in the processes torch.distributed.run starts; their exit status."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    parsed = get_args_parser().parse_args(torchrun_argv(options, command, rest))
    try:
        run(parsed)
    except ChildFailedError as exc:
        raise _failure(exc) from None
    return 0


def _failure(exc: BaseException) -> TreadleError:
    """The rank that failed first, and how (exit status or signal): the others were stopped because of it."""
    rank, failure = exc.get_first_failure()  # type: ignore[attr-defined]
    code = failure.exitcode
    if code is not None and code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with status {code}"
    others = len(exc.failures) - 1  # type: ignore[attr-defined]
    stopped = f"; {others} other process(es) stopped with it" if others > 0 else ""
    error = TreadleError(
        f"the run failed: rank {rank} (local rank {failure.local_rank}, pid {failure.pid}) {how}"
        f"{stopped}. Its own message is above. Checkpoints written before the failure are intact: "
        "resume with --resume_from_checkpoint true"
    )
    error.exit_code = code if code is not None and 0 < code < 126 else 1
    return error
