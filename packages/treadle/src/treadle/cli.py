"""The ``treadle`` command.

    treadle train [ARGS] [config.yaml ...]     train (the builtin demo task by default)
    treadle evaluate / predict [ARGS]          evaluate or predict with the same arguments
    treadle args [ARGS]                        the effective arguments and where each came from
    treadle plugins [--json]                   installed plugins and what they provide
    treadle env                                the block to paste into a bug report
    treadle verify-resume [ARGS] --stop_at N   check that a resumed run equals a straight one
    treadle plugin new NAME --kind KIND        write a new plugin distribution (tests included)

This module imports only the standard library and treadle's light modules: ``--help``,
``plugins`` and argument parsing never import torch or a plugin's implementation. A user
mistake prints one message and exits 2; nothing here prints a traceback for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import textwrap
from typing import Any, Callable, Iterator, Optional, Sequence

from treadle.__about__ import __version__
from treadle.errors import DEBUG_ENV, DEBUG_HINT, TreadleError, UsageError

COMMANDS: dict[str, str] = {
    "train": "train a model (the builtin demo task unless --task says otherwise)",
    "evaluate": "evaluate a model on the task's evaluation set",
    "predict": "predict on the task's test set",
    "args": "print the effective arguments and where each value came from",
    "plugins": "list installed plugins, what they provide, and whether they work",
    "env": "print versions, platform, devices and plugins for a bug report",
    "verify-resume": "train straight and with a stop + resume; report where they first differ",
    "search": "search hyperparameters: many short trainings, the best values at the end",
    "plugin": "plugin new NAME --kind KIND: write a new plugin distribution (tests included)",
    "plot": "draw a run's loss, learning rate and evaluation curves to a PNG (needs matplotlib)",
}

USAGE = f"""usage: treadle [--version] [--help] <command> [arguments] [config.yaml ...]

treadle {__version__}: a PyTorch trainer made of a small core and plugins.

commands:
{chr(10).join(f"  {name:<15}{text}" for name, text in COMMANDS.items())}

`treadle <command> --help` lists the arguments of a command (every training argument,
grouped, with the groups that installed plugins add).

examples:
  treadle train
  treadle train --task mypkg.tasks:build --max_steps 500 --eval_strategy steps --eval_steps 100
  treadle args --per_device_train_batch_size 32 run.yaml
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "").strip() not in {"", "0"}
    try:
        return _dispatch(argv)
    except TreadleError as exc:
        if debug:
            import traceback

            traceback.print_exception(exc)
        _error(_rank_prefix() + str(exc))
        return exc.exit_code
    except Exception as exc:
        if debug or not _rank_prefix():
            raise
        # One of several processes: N interleaved tracebacks help nobody; the launcher names the
        # rank that failed first, and this line says what happened here.
        from treadle.run import _where

        _error(f"{_rank_prefix()}{type(exc).__name__}: {exc}{_where(exc)}\n{DEBUG_HINT}")
        return 1
    except KeyboardInterrupt:
        print("treadle: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed: not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _rank_prefix() -> str:
    """``"rank N: "`` in a process started by a launcher with others, else empty."""
    world = os.environ.get("WORLD_SIZE", "1")
    return f"rank {os.environ.get('RANK', '?')}: " if world.isdigit() and int(world) > 1 else ""


def _error(message: str) -> None:
    first, *rest = message.splitlines() or [""]
    print(f"treadle: error: {first}", file=sys.stderr)
    for line in rest:
        print(f"  {line}", file=sys.stderr)


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE, end="")
        return 0
    if argv[0] in {"-V", "--version"}:
        print(f"treadle {__version__}")
        return 0
    argv = _local_rank_after_command(argv)
    command, rest = argv[0], argv[1:]
    handler = HANDLERS.get(command)
    if handler is None:
        import difflib

        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UsageError(f"unknown command {command!r}.{hint} Commands: {', '.join(COMMANDS)}")
    return handler(command, rest)


def _local_rank_after_command(argv: list[str]) -> list[str]:
    """The ``deepspeed`` launcher puts ``--local_rank=N`` first (``treadle --local_rank=0 train ...``):
    move it behind the command, where the ``local_rank`` argument parses."""
    moved: list[str] = []
    while argv and argv[0].startswith("--local_rank"):
        take = 1 if "=" in argv[0] or len(argv) < 2 else 2
        moved, argv = moved + argv[:take], argv[take:]
    return argv[:1] + moved + argv[1:] if moved and argv else moved + argv


# ---------------------------------------------------------------------------------------------
# train / evaluate / predict / verify-resume
# ---------------------------------------------------------------------------------------------


def _run(command: str, rest: list[str]) -> int:
    if _wants_help(rest):
        print(training_help(command), end="")
        return 0
    from treadle.config import parse_arguments
    from treadle.launch import check_launch_options, split_launch_options

    launch_options, rest = split_launch_options(rest)
    extra = {"stop_at": "str", "verbose": "bool"} if command == "verify-resume" else None
    if launch_options:
        check_launch_options(launch_options)
        with _as_launched(launch_options):  # a wrong argument fails once here, not in every process
            parse_arguments(rest, extra_flags=extra)
        from treadle.launch import launch

        return launch(launch_options, command, rest)
    parsed = parse_arguments(rest, extra_flags=extra)
    if command == "verify-resume":
        return _verify_resume(parsed)
    from treadle.run import run_command

    return run_command(command, parsed.args)


@contextlib.contextmanager
def _as_launched(options: dict[str, str]) -> Iterator[None]:
    """WORLD_SIZE as the launched processes will see it, while their arguments are checked here
    (so the strategy several processes imply is resolved, and a missing plugin reported, once)."""
    nproc, nnodes = options.get("nproc_per_node", "1"), options.get("nnodes", "1")
    if not (nproc.isdigit() and nnodes.isdigit()):
        yield
        return
    saved = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = str(int(nproc) * int(nnodes))
    try:
        yield
    finally:
        if saved is None:
            del os.environ["WORLD_SIZE"]
        else:
            os.environ["WORLD_SIZE"] = saved


def _search(command: str, rest: list[str]) -> int:
    from treadle.search import SEARCH_FLAGS, SEARCH_HELP, run_search_command

    if _wants_help(rest):
        print(SEARCH_HELP + "\n" + training_help(command), end="")
        return 0
    from treadle.config import parse_arguments

    parsed = parse_arguments(rest, extra_flags=SEARCH_FLAGS)
    return run_search_command(parsed.args, parsed.extras)


def _verify_resume(parsed: Any) -> int:
    stop_at = parsed.extras.get("stop_at")
    if stop_at is None or not str(stop_at).isdigit():
        raise UsageError("verify-resume needs --stop_at N (the optimizer step at which to stop and resume)")
    from treadle.verify_resume import run_cli

    return run_cli(parsed.args, int(stop_at), verbose=bool(parsed.extras.get("verbose")))


def _wants_help(rest: list[str]) -> bool:
    return any(word in {"-h", "--help"} for word in rest)


def training_help(command: str) -> str:
    """Every argument, grouped: the core groups first, then one group per plugin."""
    from treadle.config import core_fields, plugin_fields
    from treadle.plugins import get_plugin_manager

    pm = get_plugin_manager()
    fields = {**core_fields(), **plugin_fields(pm)}
    selectors = {
        "backend": "backend",
        "precision": "precision",
        "strategy": "strategy",
        "optim": "optimizer",
        "lr_scheduler_type": "scheduler",
        "report_to": "reporter",
        "task": "task",
    }
    width = min(100, max(60, _terminal_width()))
    lines = [
        f"usage: treadle {command} [--name value ...] [config.json|config.yaml ...]",
        "",
        COMMANDS.get(command, ""),
        "Booleans take --flag, --flag false or --no_flag; lists take several words or a,b,c;",
        "config files (positional or --config) are overridden by the command line.",
    ]
    if command == "verify-resume":
        lines.append("--stop_at N: the optimizer step at which the second run stops and resumes.")
        lines.append("--verbose: show the progress bars and log lines of the three runs (hidden by default).")
    groups: dict[str, list[Any]] = {}
    for info in fields.values():
        groups.setdefault("Deprecated aliases" if info.deprecated_for else info.group, []).append(info)
    order = [g for g in groups if not g.startswith(("Plugin ", "Deprecated"))]
    order += sorted(g for g in groups if g.startswith("Plugin ")) + [g for g in groups if g == "Deprecated aliases"]
    for group in order:
        lines += ["", f"{group}:"]
        for info in groups[group]:
            lines.append(f"  --{info.name} {info.metavar}" + "".join(f", --{alias}" for alias in info.aliases))
            text = info.help.strip()
            if info.deprecated_for:  # the field's own help starts with the same advice: say it once, as a flag
                own = f"Deprecated: use {info.deprecated_for}."
                text = f"deprecated: use --{info.deprecated_for}. {text.removeprefix(own).strip()}".strip()
            choices = info.choices
            if info.name in selectors:
                names = pm.names(selectors[info.name])
                choices = tuple(names) + (("auto",) if info.name == "backend" else ())
            if choices:
                text += f" Choices: {', '.join(map(str, choices))}."
            if not info.deprecated_for:
                text += f" (default: {_show_default(info.default)})"
            lines += textwrap.wrap(text, width=width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines + _launch_help(width)) + "\n"


def _launch_help(width: int) -> list[str]:
    """torchrun's options that start the command in several processes (treadle.launch)."""
    from treadle.launch import LAUNCH_OPTIONS

    lines = ["", "Launching several processes (any of these starts torch.distributed.run, torchrun's engine):"]
    for name, text in LAUNCH_OPTIONS.items():
        lines.append(f"  --{name} VALUE")
        lines += textwrap.wrap(text + ".", width=width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return lines


def _show_default(value: Any) -> str:
    return "unset" if value is None else repr(value) if isinstance(value, str) else str(value)


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 100


# ---------------------------------------------------------------------------------------------
# args
# ---------------------------------------------------------------------------------------------


def _args(command: str, rest: list[str]) -> int:
    if _wants_help(rest):
        print("usage: treadle args [--json] [--changed] [training arguments] [config files]\n")
        print("Print the effective arguments and the source of each value: default, a task's")
        print("default, a config file, the command line, or implied by another value.")
        print("--changed shows only values that do not come from the schema default.")
        return 0
    from treadle.config import parse_arguments

    parsed = parse_arguments(rest, extra_flags={"json": "bool", "changed": "bool"}, check_selections=False)
    for problem in parsed.unavailable:
        print(f"treadle: warning: {problem}", file=sys.stderr)
    effective = parsed.args.to_dict()
    effective.update(effective.pop("plugin_options", {}) or {})
    rows = [
        (name, value, parsed.sources.get(name, "default"))
        for name, value in effective.items()
        if not parsed.extras.get("changed") or parsed.sources.get(name, "default") != "default"
    ]
    if parsed.extras.get("json"):
        print(json.dumps({name: {"value": value, "source": source} for name, value, source in rows}, indent=2, default=str))
        return 0
    width = max((len(name) for name, _, _ in rows), default=10)
    for name, value, source in rows:
        print(f"{name:<{width}}  {json.dumps(value, default=str):<30}  {source}")
    return 0


# ---------------------------------------------------------------------------------------------
# plugins / env
# ---------------------------------------------------------------------------------------------


def _plugins(command: str, rest: list[str]) -> int:
    unknown = [w for w in rest if w not in {"--json", "-h", "--help"}]
    if unknown:
        raise UsageError(f"treadle plugins: unknown argument {unknown[0]!r} (it takes only --json)")
    if _wants_help(rest):
        print("usage: treadle plugins [--json]\n\nList installed plugins: distribution, version, status and what each provides.")
        return 0
    from treadle.plugins import get_plugin_manager

    records = get_plugin_manager().collect_all()
    if "--json" in rest:
        print(json.dumps([r.to_json() for r in records], indent=2))
        return 0
    for record in records:
        print(f"{record.name}  ({record.distribution} {record.version})  [{record.status}]")
        if record.error:
            print(f"    error: {record.error}")
        for kind, names in record.provides.items():
            print(textwrap.fill(", ".join(names), width=100, initial_indent=f"    {kind}: ", subsequent_indent=" " * 8))
        if record.arguments:
            print(f"    arguments: {', '.join('--' + a for a in record.arguments)}")
        if record.hooks:  # all of them, as --json lists them
            print(textwrap.fill(", ".join(record.hooks), width=100, initial_indent="    hooks: ", subsequent_indent=" " * 8))
    from treadle.install_hints import not_installed_first_party

    available = not_installed_first_party()
    if available:
        print("\nfirst-party plugins in this treadle checkout, not installed:")
        for distribution, command in available:
            print(f"    {distribution}: {command}")
    return 0


def _env(command: str, rest: list[str]) -> int:
    if rest:
        raise UsageError("treadle env takes no arguments")
    from treadle.plugins import get_plugin_manager

    pm = get_plugin_manager()
    records = pm.collect_all()
    from treadle.selection import backend_availability

    backends = backend_availability(pm)  # before the plugins' env lines, which may import their libraries
    print(f"- treadle version: {__version__}")
    for plugin, label, value in pm.report_env():
        prefix = "" if plugin == "treadle" else f"{plugin}: "
        print(f"- {prefix}{label}: {value}")
    print("- backends (--backend auto takes the first available):")
    for name, distribution, status in backends:
        print(f"    - {name} ({distribution}): {status}")
    print("- plugins:")
    for record in records:
        status = "" if record.status == "ok" else f" [{record.status}: {record.error}]"
        print(f"    - {record.name}: {record.distribution} {record.version}{status}")
    for var in ("TREADLE_PLUGINS", "TREADLE_DISABLE_PLUGIN_AUTOLOAD", "TREADLE_STRICT_PLUGINS", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        if var in os.environ:
            print(f"- {var}={os.environ[var]}")
    return 0


def _plot(command: str, rest: list[str]) -> int:
    from treadle.plot import main as plot_main

    return plot_main(rest)


def _plugin(command: str, rest: list[str]) -> int:
    from treadle.template import run_cli

    return run_cli(rest)


HANDLERS: dict[str, Callable[[str, list[str]], int]] = {
    "train": _run,
    "evaluate": _run,
    "predict": _run,
    "verify-resume": _run,
    "search": _search,
    "args": _args,
    "plugins": _plugins,
    "env": _env,
    "plugin": _plugin,
    "plot": _plot,
}

if __name__ == "__main__":  # python -m treadle.cli
    sys.exit(main())
