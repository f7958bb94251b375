"""From command line and config files to ``TrainingArguments``, remembering where each value came from.

Sources, lowest precedence first:

1. the schema default;
2. defaults declared by the selected task (``register(..., defaults=...)``);
3. config files (JSON or YAML), positional or ``--config``, later files over earlier ones;
4. the command line;

and finally values that ``TrainingArguments`` itself derives (``--bf16`` implies the precision,
``eval_steps`` follows ``logging_steps``, ...), reported as *implied*.

The command-line grammar: ``--name value``, ``--name=value``, dashes or underscores, booleans
as ``--flag`` / ``--flag false`` / ``--no_flag``, lists as several words or a comma-separated
word. Unknown names and values are errors with a did-you-mean suggestion.

Only the standard library, PyYAML and the (torch-free) schema are imported here.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import json
import os
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence, Union

from treadle.args.rules import format_value, is_secret
from treadle.errors import UsageError

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
TRUE_WORDS = {"true", "yes", "y", "1", "on"}
FALSE_WORDS = {"false", "no", "n", "0", "off"}
NONE_WORDS = {"none", "null"}


# ---------------------------------------------------------------------------------------------
# Field descriptions: one shape for core fields, deprecated aliases and plugin fields
# ---------------------------------------------------------------------------------------------


@dataclass
class FieldInfo:
    """What the parser needs to know about one argument."""

    name: str
    type: Any
    default: Any
    help: str = ""
    group: str = "Misc"
    choices: Optional[tuple[Any, ...]] = None
    deprecated_for: Optional[str] = None
    plugin: Optional[str] = None  # the plugin that added it (plugin fields live in plugin_options)
    aliases: tuple[str, ...] = ()  # other spellings a plugin accepts for it

    @property
    def shape(self) -> str:
        return _shape(self.type)

    @property
    def metavar(self) -> str:
        return {"bool": "[BOOL]", "int": "INT", "float": "FLOAT", "number": "NUM", "list": "VALUE [VALUE ...]", "dict": "JSON|PATH"}.get(
            self.shape, "STR"
        )


def _strip_optional(tp: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return tuple(a for a in typing.get_args(tp) if a is not type(None))
    return (tp,)


def _shape(tp: Any) -> str:
    """Reduce a type annotation to how its text is parsed."""
    members = _strip_optional(tp)
    names = set()
    for member in members:
        origin = typing.get_origin(member) or member
        if origin in (list, tuple, Sequence, set):
            names.add("list")
        elif origin in (dict, typing.Mapping):
            names.add("dict")
        elif member is bool:
            names.add("bool")
        elif member is int:
            names.add("int")
        elif member is float:
            names.add("float")
        else:
            names.add("str")
    if names == {"bool"}:
        return "bool"
    if names == {"int"}:
        return "int"
    if names == {"float"}:
        return "float"
    if names == {"int", "float"}:
        return "number"
    if "list" in names:
        return "list"
    if "dict" in names:
        return "dict"
    if names == {"bool", "str"}:
        return "bool_or_str"
    return "str"


def core_fields() -> dict[str, FieldInfo]:
    """The ``TrainingArguments`` fields (including deprecated aliases), by name."""
    from treadle.args import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    infos = {}
    for f in dataclasses.fields(TrainingArguments):
        if not f.init or f.name == "plugin_options":
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        )
        meta = f.metadata or {}
        infos[f.name] = FieldInfo(
            name=f.name,
            type=hints.get(f.name, str),
            default=default,
            help=meta.get("help", ""),
            group=meta.get("group", "Misc"),
            choices=tuple(meta["choices"]) if meta.get("choices") else None,
            deprecated_for=meta.get("deprecated_for"),
        )
    return infos


def plugin_fields(pm: Any) -> dict[str, FieldInfo]:
    """The fields plugins added through ``treadle_add_arguments``, by name."""
    return {
        name: FieldInfo(
            name=name,
            type=pf.type,
            default=pf.default,
            help=pf.help,
            group=f"Plugin {pf.plugin.name} ({pf.plugin.label})",
            choices=pf.choices,
            plugin=pf.plugin.name,
            aliases=pf.aliases,
        )
        for name, pf in pm.argument_fields().items()
    }


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


def convert(info: FieldInfo, raw: Any, *, where: str) -> Any:
    """Turn ``raw`` (text from argv, or a value from a file) into the field's type."""
    shape = info.shape
    if isinstance(raw, str) and raw.strip().lower() in NONE_WORDS and shape not in {"str", "list"}:
        return None
    try:
        if shape == "bool":
            return _to_bool(raw)
        if shape == "bool_or_str":
            if isinstance(raw, bool):
                return raw
            low = str(raw).strip().lower()
            return True if low in TRUE_WORDS else False if low in FALSE_WORDS else raw
        if shape == "int":
            return _to_int(raw)
        if shape == "float":
            return float(raw)
        if shape == "number":
            number = float(raw)
            return int(number) if number.is_integer() else number
        if shape == "list":
            return _to_list(raw)
        if shape == "dict":
            return _to_dict(raw)
        return raw if isinstance(raw, str) or raw is None else str(raw)
    except (TypeError, ValueError) as exc:
        cause = "" if is_secret(info.name) else f" ({exc})"  # the cause may quote the value
        raise UsageError(f"{where}: --{info.name} expects {info.metavar}, got {format_value(raw, info.name)}{cause}") from None


def _to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    low = str(raw).strip().lower()
    if low in TRUE_WORDS:
        return True
    if low in FALSE_WORDS:
        return False
    raise ValueError("use true or false")


def _to_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError("not an integer")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().lstrip("+-").isdigit():
        return int(raw)  # exact, however long (float() would round 99999999999999999999)
    number = float(raw)
    if not number.is_integer():
        raise ValueError("not a whole number")
    return int(number)


def _to_list(raw: Any) -> list[Any]:
    if isinstance(raw, (list, tuple)):
        items: list[Any] = []
        for item in raw:
            items.extend(_to_list(item) if isinstance(item, str) else [item])
        return items
    if isinstance(raw, str):
        return [part for chunk in raw.split(",") for part in [chunk.strip()] if part]
    return [raw]


def _to_dict(raw: Any) -> Any:
    if isinstance(raw, dict):
        return raw
    text = str(raw).strip()
    if text.startswith("{"):
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value
    return text  # a path (e.g. a DeepSpeed config file): the owning plugin reads it


# ---------------------------------------------------------------------------------------------
# Config files
# ---------------------------------------------------------------------------------------------


def load_config_file(path: str) -> dict[str, Any]:
    """Read a JSON or YAML mapping of argument names to values."""
    if not os.path.exists(path):
        raise UsageError(f"config file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # JSON / YAML syntax errors: say where, not a traceback
        raise UsageError(f"config file {path!r} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path!r} must hold a mapping of argument names to values, not {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------
# The parse
# ---------------------------------------------------------------------------------------------


@dataclass
class ParsedArguments:
    """The result of a parse: the arguments and where each value came from."""

    args: Any
    sources: dict[str, str]
    explicit: frozenset[str]
    extras: dict[str, Any] = field(default_factory=dict)  # values of non-TrainingArguments flags
    unavailable: list[str] = field(default_factory=list)  # selected components no plugin provides


def field_aliases(fields: dict[str, FieldInfo]) -> dict[str, str]:
    """Alias -> field name, for the plugin fields that declare aliases."""
    return {alias: name for name, info in fields.items() for alias in info.aliases}


def _suggest(name: str, candidates: Iterable[str]) -> str:
    owner = _missing_owner(name)
    if owner is not None:
        return owner
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean --{close[0]}?" if close else ""


def _missing_owner(name: str) -> Optional[str]:
    """``"; it belongs to ..."`` when ``name`` is in the namespace of a plugin that is not loaded.

    A removed (or blocked, or broken) plugin's option is not a typo: suggesting the closest core
    argument would send the user the wrong way.
    """
    import importlib.metadata

    from treadle.catalog import get_catalog
    from treadle.install_hints import install_command
    from treadle.plugins import get_plugin_manager

    records = get_plugin_manager().records
    for record in records.values():
        if record.status != "ok" and name.startswith(record.name.replace("-", "_") + "_"):
            return f"; it belongs to the plugin {record.name} ({record.distribution}), which is {record.status} (see `treadle plugins`)"
    distributions = {d for d in get_catalog().install_hints.values() if d.startswith("treadle-")}
    for distribution in sorted(distributions, key=len, reverse=True):
        namespace = distribution[len("treadle-"):].replace("-", "_")
        if namespace not in records and name.startswith(namespace + "_"):
            try:
                importlib.metadata.distribution(distribution)
            except importlib.metadata.PackageNotFoundError:
                return f"; it belongs to the plugin {distribution}, which is not installed. To add it: {install_command(distribution)}"
            return f"; it belongs to the plugin {distribution}, which is installed but not loaded (TREADLE_PLUGINS / TREADLE_DISABLE_PLUGIN_AUTOLOAD)"
    return None


class ArgvReader:
    """Split argv into (name, raw value) pairs and positional words, knowing each field's shape."""

    def __init__(self, fields: dict[str, FieldInfo], extra_flags: dict[str, str]) -> None:
        self.fields = fields
        self.extra_flags = extra_flags  # name -> shape ("bool" or "str"), e.g. {"config": "str"}
        self.aliases = field_aliases(fields)

    def _lookup(self, name: str) -> tuple[str, str]:
        """Return (field name, shape); ``no_<flag>`` is the negation of a boolean."""
        name = self.aliases.get(name, name)
        if name in self.fields:
            return name, self.fields[name].shape
        if name in self.extra_flags:
            return name, self.extra_flags[name]
        if name.startswith("no_") and self.fields.get(name[3:]) and self.fields[name[3:]].shape == "bool":
            return name, "negated"
        raise UsageError(f"unknown argument --{name}{_suggest(name, list(self.fields) + list(self.extra_flags))}")

    def read(self, argv: Sequence[str]) -> tuple[list[tuple[str, Any]], list[str]]:
        pairs: list[tuple[str, Any]] = []
        positional: list[str] = []
        i = 0
        while i < len(argv):
            token = argv[i]
            i += 1
            if token == "--":
                positional.extend(argv[i:])
                break
            if not token.startswith("--"):
                positional.append(token)
                continue
            raw_name, has_value, inline = token[2:].partition("=")
            name, shape = self._lookup(raw_name.replace("-", "_"))
            if shape == "negated":
                if has_value:
                    raise UsageError(f"--{raw_name} takes no value")
                pairs.append((name[3:], False))
                continue
            if has_value:
                pairs.append((name, inline))
                continue
            following = argv[i] if i < len(argv) else None
            if shape in {"bool", "bool_or_str"}:
                if following is not None and following.strip().lower() in TRUE_WORDS | FALSE_WORDS:
                    pairs.append((name, following))
                    i += 1
                elif shape == "bool_or_str" and following is not None and not following.startswith("--") and not _is_config(following):
                    pairs.append((name, following))
                    i += 1
                elif following is not None and not following.startswith("--") and not _is_config(following):
                    raise UsageError(f"--{name} takes true or false (or nothing, meaning true), got {following!r}")
                else:
                    pairs.append((name, True))
                continue
            if shape in {"list", "paths"}:
                values = []
                while i < len(argv) and not argv[i].startswith("--") and (shape == "paths" or not _is_config(argv[i])):
                    values.append(argv[i])
                    i += 1
                if not values:
                    raise UsageError(f"--{name} expects at least one value")
                pairs.append((name, values))
                continue
            if following is None or (following.startswith("--") and not _looks_negative(following)):
                raise UsageError(f"--{name} expects a value")
            pairs.append((name, following))
            i += 1
        return pairs, positional


def _is_config(word: str) -> bool:
    return word.endswith(CONFIG_SUFFIXES)


def _looks_negative(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


def _check_choice(info: FieldInfo, value: Any, where: str) -> None:
    if info.choices is None or value is None:
        return
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list):  # one word may hold several, as the seeds write them: --fsdp "full_shard auto_wrap"
        values = [w for item in value for w in (re.split(r"[\s,]+", item) if isinstance(item, str) else [item]) if w != ""]
    for item in values:
        if item not in info.choices:
            close = difflib.get_close_matches(str(item), [str(c) for c in info.choices], n=1)
            hint = f"; did you mean {close[0]!r}?" if close and not is_secret(info.name) else ""
            raise UsageError(f"{where}: --{info.name} {format_value(item, info.name)} is not one of {', '.join(map(str, info.choices))}{hint}")


def parse_arguments(
    argv: Sequence[str],
    pm: Any = None,
    *,
    extra_flags: Optional[dict[str, str]] = None,
    apply_task_defaults: bool = True,
    check_selections: bool = True,
) -> ParsedArguments:
    """Parse a ``treadle train``-style command line into ``TrainingArguments`` with provenance.

    ``extra_flags`` names flags of the calling command that are not training arguments
    (``{"json": "bool"}``); their values come back in ``ParsedArguments.extras``. With
    ``check_selections=False`` a selected component that no plugin provides is listed in
    ``ParsedArguments.unavailable`` instead of being an error (``treadle args`` shows it).
    """
    from treadle.args import TrainingArguments
    from treadle.plugins import get_plugin_manager

    pm = pm or get_plugin_manager()
    core = core_fields()
    plugin = plugin_fields(pm)
    fields = {**core, **plugin}
    flags = {"config": "paths", **(extra_flags or {})}
    pairs, positional = ArgvReader(fields, flags).read(argv)

    extras: dict[str, Any] = {}
    files: list[str] = []
    for word in positional:
        if not _is_config(word):
            raise UsageError(f"unexpected word {word!r}: options start with --, config files end with .json, .yaml or .yml")
        files.append(word)
    cli_values: dict[str, Any] = {}
    for name, raw in pairs:
        if name == "config":
            files.extend(raw)
        elif name in flags:
            extras[name] = convert(FieldInfo(name, bool if flags[name] == "bool" else str, None), raw, where="command line")
        else:
            cli_values[name] = convert(fields[name], raw, where="command line")

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for path in files:
        aliases = field_aliases(fields)
        for key, raw in load_config_file(path).items():
            name = str(key).replace("-", "_")
            name = aliases.get(name, name)
            if name not in fields:
                raise UsageError(f"config file {path!r}: unknown argument {key!r}{_suggest(name, fields)}")
            values[name] = convert(fields[name], raw, where=f"config file {path!r}")
            sources[name] = f"config file {path}"
    for name, value in cli_values.items():
        values[name] = value
        sources[name] = "command line"
    for name, value in values.items():
        _check_choice(fields[name], value, sources[name])

    explicit = set(values)
    for name, value in list(values.items()):
        target = fields[name].deprecated_for
        if target:
            explicit.add(target)
            sources.setdefault(target, f"{sources[name]} (as --{name})")

    if apply_task_defaults:
        task = values.get("task", core["task"].default)
        _apply_component_defaults(pm, "task", task, values, sources, fields)

    core_values = {k: v for k, v in values.items() if k in core}
    plugin_values = {k: v for k, v in values.items() if k in plugin}
    for name, info in plugin.items():
        plugin_values.setdefault(name, info.default)
    args = build_training_arguments(TrainingArguments, core_values, plugin_values, pm=pm, check=False)

    unavailable = check_arguments(args, pm, frozenset(explicit), check_selections=check_selections)
    for name, reason in getattr(args, "derived_fields", lambda: {})().items():  # after the plugins' adjust hooks
        if name not in explicit:
            sources[name] = reason if reason.startswith("implied") else f"implied: {reason}"
    for name in fields:
        sources.setdefault(name, "default")
    return ParsedArguments(args=args, sources=sources, explicit=frozenset(explicit), extras=extras, unavailable=unavailable)


def _apply_component_defaults(pm: Any, kind: str, name: Any, values: dict, sources: dict, fields: dict) -> None:
    """Fill unset arguments with the defaults the selected component declares.

    A value the user gave under a deprecated name (``--evaluation_strategy``) counts as given:
    the default does not fill the field it stands for, so the two never conflict.
    """
    if not isinstance(name, str):
        return
    try:
        spec = pm.resolve(kind, name)
    except UsageError:
        return  # reported with the other selection problems
    given = set(values) | {fields[key].deprecated_for for key in values if key in fields and fields[key].deprecated_for}
    for key, value in spec.defaults.items():
        if key not in given and key in fields:
            values[key] = value
            sources[key] = f"default of {kind} '{name}'"


def build_training_arguments(
    cls: Any, core_values: dict[str, Any], plugin_values: dict[str, Any], *, pm: Any = None, check: bool = True
) -> Any:
    """Construct the dataclass, turning its validation error into a usage error.

    With ``check`` (the default) the plugins' adjust / validate hooks and the selection checks
    run too (``check_arguments``), with the given values as the explicit ones.
    """
    with warnings.catch_warnings(record=True) as caught, _constructing_with(pm):
        warnings.simplefilter("always", FutureWarning)
        try:
            args = cls(**core_values, plugin_options=plugin_values)
        except ValueError as exc:  # TrainingArgumentsError carries every problem in .messages
            messages = getattr(exc, "messages", None) or [str(exc)]
            raise UsageError("invalid arguments:\n" + "\n".join(f"  - {m}" for m in messages)) from None
    for warning in caught:
        print(f"treadle: warning: {warning.message}", file=_stderr())
    if check:
        check_arguments(args, pm, _given_names(cls, {**core_values, **plugin_values}))
    return args


_CONSTRUCTION_PM: contextvars.ContextVar[Any] = contextvars.ContextVar("treadle_construction_pm", default=None)
"""The plugin manager a parser builds ``TrainingArguments`` with (else the process-wide one)."""


@contextlib.contextmanager
def _constructing_with(pm: Any) -> Any:
    token = _CONSTRUCTION_PM.set(pm)
    try:
        yield
    finally:
        _CONSTRUCTION_PM.reset(token)


def settle_plugin_options(args: Any) -> list[str]:
    """Give plugin fields what core fields get at construction: defaults, types, choices.

    Called by ``TrainingArguments`` while it is built (plugins are loaded by then): the options
    become a new dict (the caller's stays as it was), every installed plugin field gets its
    default, given values are converted to the field's type and checked against its choices. A
    key in the namespace of an installed plugin that the plugin does not declare is a misspelling
    and an error; a key of a plugin that is not installed here is kept, with a warning (a config
    written for another machine), since nothing will read it. Returns the problems found.
    """
    from treadle.plugins import get_plugin_manager

    options = args.__dict__.get("plugin_options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        return []  # normalise() reports the wrong type
    pm = _CONSTRUCTION_PM.get() or get_plugin_manager()
    fields = plugin_fields(pm)
    namespaces = {record.name.replace("-", "_") for record in pm.records.values() if record.status == "ok"}
    core = set(core_fields()) | {"plugin_options"}
    settled: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in options.items():
        info = fields.get(key)
        if info is not None:
            try:
                if value is not None:
                    value = convert(info, value, where="plugin_options")
                    _check_choice(info, value, "plugin_options")
            except UsageError as exc:
                problems.append(str(exc))
        elif isinstance(key, str) and key.isidentifier() and key not in core:  # other keys: the schema's rules
            owner = next((ns for ns in namespaces if key.startswith(ns + "_")), None)
            if owner is not None:
                declared = sorted(name for name in fields if name.startswith(owner + "_"))
                problems.append(
                    f"plugin_options: plugin {owner} has no option {key!r}{_suggest(key, declared).replace('--', '')}"
                    f" (its options: {', '.join(declared) or 'none'})"
                )
            else:
                warnings.warn(
                    f"plugin_options: no installed plugin declares {key!r}; it is kept, but nothing reads it "
                    "(is the plugin that adds it installed? `treadle plugins` lists them)",
                    UserWarning,
                    stacklevel=6,  # the caller of TrainingArguments(...)
                )
        settled[key] = value
    for name, info in fields.items():
        settled.setdefault(name, info.default)
    object.__setattr__(args, "plugin_options", settled)
    return problems


CHECKED_MARK = "_treadle_arguments_checked"
"""Set on an arguments object once ``check_arguments`` accepted it, so no path checks it twice."""


def check_arguments(args: Any, pm: Any = None, explicit: Optional[frozenset[str]] = None, *, check_selections: bool = True) -> list[str]:
    """Let plugins adjust and validate ``args``, check that every selected component is usable.

    Every path to a run goes through here once (``treadle train``, ``TreadleArgumentParser``,
    ``Trainer``): all messages are reported together in one ``UsageError``. Returns the
    selection problems (with ``check_selections=False`` they are returned, not raised, for
    ``treadle args``). ``explicit`` defaults to the fields that differ from their defaults.
    """
    from treadle.plugins import get_plugin_manager

    if args.__dict__.get(CHECKED_MARK):
        return []
    pm = pm or get_plugin_manager()
    if explicit is None:
        explicit = non_default_names(args, pm)
    options = args.__dict__.get("plugin_options")
    if isinstance(options, dict):  # hooks read every plugin field, set or not
        for name, info in plugin_fields(pm).items():
            options.setdefault(name, info.default)
    messages = pm.adjust_and_validate(args, explicit)
    unavailable = selection_problems(args, pm)
    if check_selections:
        messages += unavailable
    if messages:
        raise UsageError("invalid arguments:\n" + "\n".join(f"  - {m}" for m in messages))
    args.__dict__[CHECKED_MARK] = True
    return unavailable


def _given_names(cls: Any, values: dict[str, Any]) -> frozenset[str]:
    """The names given, plus the fields deprecated aliases among them stand for."""
    targets = {
        f.metadata.get("deprecated_for") for f in dataclasses.fields(cls) if f.name in values and f.metadata
    }
    return frozenset(values) | frozenset(t for t in targets if t)


def non_default_names(args: Any, pm: Any) -> frozenset[str]:
    """The fields (plugin options included) whose value differs from the default: what a Python user set."""
    names = {
        name for name, info in core_fields().items()
        if info.deprecated_for is None and getattr(args, name, info.default) != info.default
    }
    options = getattr(args, "plugin_options", None) or {}
    for name, info in plugin_fields(pm).items():
        if name in options and options[name] != info.default:
            names.add(name)
    return frozenset(names)


def _stderr() -> Any:
    import sys

    return sys.stderr


_SELECTOR_FIELDS = {"backend": "backend", "precision": "precision", "strategy": "strategy"}


def _typed_flag(args: Any, kind: str) -> Optional[str]:
    """The flag the user typed when a selector was implied by it (``--fp16`` for precision fp16), else None."""
    field_name = _SELECTOR_FIELDS.get(kind)
    derived = getattr(args, "derived_fields", None)
    if field_name is None or derived is None:
        return None
    reason = derived().get(field_name, "")
    match = re.match(r"implied by (\w+)", reason)
    return f"--{match.group(1)}" if match else None


_SELECTED_BY = {"optimizer": "optim", "scheduler": "lr_scheduler_type"}
"""The argument that selects a kind, where it is not named after the kind."""


def selection_problems(args: Any, pm: Any) -> list[str]:
    """Check that every component the arguments select is provided by an installed plugin."""
    from treadle.errors import PluginError
    from treadle.plugins import SELECTOR_OPTION
    from treadle.selection import kernel_problem, kernel_selections, resolve_eval_precision

    wanted: list[tuple[str, Any]] = [
        ("backend", args.backend if args.backend != "auto" else None),
        ("precision", args.precision),
        ("strategy", args.strategy),
        ("optimizer", args.optim),
        ("scheduler", args.lr_scheduler_type),
        ("task", args.task),
    ]
    report_to = [r for r in (args.report_to or []) if r not in {"all", "none"}]
    wanted += [("reporter", name) for name in report_to]
    problems = []
    for kind, name in wanted:
        if name is None:
            continue
        option = f"{SELECTOR_OPTION.get(kind, kind)} {name}"
        typed = _typed_flag(args, kind)  # --fp16 rather than the --precision fp16 it implies
        try:
            spec = pm.resolve(kind, str(name), args)
        except PluginError as exc:
            message = str(exc)
            if typed and message.startswith(option + ":"):
                message = typed + message[len(option):]
            reason = vars(args).get("_derived", {}).get(_SELECTED_BY.get(kind, kind)) if not typed else None
            if reason and message.startswith(option + ":"):  # the user never typed it: say where it came from
                message = f"{option} ({reason}){message[len(option):]}"
            problems.append(message.replace("\n", "\n    "))
            continue
        missing = spec.requirements_problem()
        if missing:
            problems.append(f"{typed or option}: {missing}")
    try:
        resolve_eval_precision(args, pm)
    except PluginError as exc:
        problems.append(str(exc).replace("\n", "\n    "))
    for name, flag in kernel_selections(args):
        problem = kernel_problem(args, pm, name, flag)
        if problem:
            problems.append(problem)
    return problems


# ---------------------------------------------------------------------------------------------
# The Python API: HfArgumentParser-style parsing of several dataclasses
# ---------------------------------------------------------------------------------------------


class TreadleArgumentParser:
    """Parse command lines and config files into one or more dataclasses.

    Give it ``TrainingArguments`` plus your script's own dataclasses; each flag goes to the
    dataclass that declares it (``TrainingArguments`` gets plugin fields too)::

        parser = TreadleArgumentParser((ModelArguments, TrainingArguments))
        model_args, training_args = parser.parse_args_into_dataclasses()
    """

    def __init__(self, dataclass_types: Union[type, Iterable[type]], pm: Any = None) -> None:
        self.dataclass_types = [dataclass_types] if isinstance(dataclass_types, type) else list(dataclass_types)
        self._pm = pm

    @property
    def pm(self) -> Any:
        from treadle.plugins import get_plugin_manager

        return self._pm or get_plugin_manager()

    def _owner_fields(self) -> list[tuple[type, dict[str, FieldInfo]]]:
        from treadle.args import TrainingArguments

        owners = []
        for cls in self.dataclass_types:
            if cls is TrainingArguments:
                owners.append((cls, {**core_fields(), **plugin_fields(self.pm)}))
            else:
                hints = typing.get_type_hints(cls)
                owners.append(
                    (
                        cls,
                        {
                            f.name: FieldInfo(
                                f.name,
                                hints.get(f.name, str),
                                f.default,
                                (f.metadata or {}).get("help", ""),
                                cls.__name__,
                                tuple((f.metadata or {})["choices"]) if (f.metadata or {}).get("choices") else None,
                            )
                            for f in dataclasses.fields(cls)
                            if f.init
                        },
                    )
                )
        return owners

    def parse_dict(self, values: dict[str, Any], allow_extra_keys: bool = False) -> tuple[Any, ...]:
        owners = self._owner_fields()
        known = {name for _, infos in owners for name in infos}
        unknown = [k for k in values if k not in known]
        if unknown and not allow_extra_keys:
            raise UsageError(f"unknown argument {unknown[0]!r}{_suggest(unknown[0], known)}")
        return tuple(self._build(cls, infos, values, "values") for cls, infos in owners)

    def parse_json_file(self, path: str, allow_extra_keys: bool = False) -> tuple[Any, ...]:
        return self.parse_dict(load_config_file(path), allow_extra_keys)

    parse_yaml_file = parse_json_file

    def parse_args_into_dataclasses(
        self, args: Optional[Sequence[str]] = None, return_remaining_strings: bool = False
    ) -> tuple[Any, ...]:
        import sys

        argv = list(sys.argv[1:] if args is None else args)
        owners = self._owner_fields()
        merged = {name: info for _, infos in owners for name, info in infos.items()}
        reader = ArgvReader(merged, {"config": "paths"})
        remaining: list[str] = []
        if return_remaining_strings:
            argv, remaining = _split_unknown(argv, reader)
        pairs, positional = reader.read(argv)
        values: dict[str, Any] = {}
        files = [p for p in positional if _is_config(p)]
        remaining += [p for p in positional if not _is_config(p)]
        for name, raw in pairs:
            if name == "config":
                files.extend(raw)
            else:
                values[name] = raw
        merged_values: dict[str, Any] = {}
        for path in files:
            merged_values.update({str(k).replace("-", "_"): v for k, v in load_config_file(path).items()})
        merged_values.update(values)
        if remaining and not return_remaining_strings:
            raise UsageError(f"unexpected arguments: {' '.join(remaining)}")
        result = tuple(self._build(cls, infos, merged_values, "command line") for cls, infos in owners)
        return (*result, remaining) if return_remaining_strings else result

    def _build(self, cls: type, infos: dict[str, FieldInfo], values: dict[str, Any], where: str) -> Any:
        from treadle.args import TrainingArguments

        mine = {k: convert(infos[k], v, where=where) for k, v in values.items() if k in infos}
        for name, value in mine.items():
            _check_choice(infos[name], value, where)
        if cls is TrainingArguments:
            core = {k: v for k, v in mine.items() if infos[k].plugin is None}
            plugin = {k: v for k, v in mine.items() if infos[k].plugin is not None}
            return build_training_arguments(cls, core, plugin, pm=self._pm)
        try:
            return cls(**mine)
        except TypeError as exc:
            raise UsageError(f"{cls.__name__}: {exc}") from None


def _split_unknown(argv: list[str], reader: ArgvReader) -> tuple[list[str], list[str]]:
    """Separate flags no dataclass declares (with their values) for ``return_remaining_strings``."""
    known: list[str] = []
    unknown: list[str] = []
    current = known
    for token in argv:
        if token.startswith("--"):
            name = token[2:].partition("=")[0].replace("-", "_")
            try:
                reader._lookup(name)
                current = known
            except UsageError:
                current = unknown
        current.append(token)
    return known, unknown
