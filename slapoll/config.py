"""Read a TOML config file into frozen values and apply it to an engine.

``load_config`` reads and checks a file on its own: types, durations,
addresses, and each task's policy rules as far as the file states them.
``load_engine`` imports the engine the file names, and ``apply_config``
overrides that engine's knobs and its tasks' decorator options. A bad
value fails with ``ConfigError`` naming the file, the dotted key
(``tasks.feed.every``), the value as ``repr`` and what is allowed.

The format, every key optional::

    [engine]
    app = "feeds:engine"          # module:attribute of the Engine to run
    workers = 32
    min_workers = 1
    max_workers = 256
    control_period = "1s"
    shutdown_grace = "10s"
    metrics_address = "127.0.0.1:9464"

    [tasks.feed]                  # any decorator argument of task "feed"
    sla = "30s"
    every = "10s"
    priority = 2
    limits = ["github"]
    timeout = "5s"
    retries = 2
    retry_backoff = "500ms"
    overlap = "skip"
    max_concurrent = 1
    phase = "2s"                  # fixed offset within the interval
    expected_duration = "800ms"   # one run, for the capacity plan of `check`

    [limits.github]               # the budget of limit key "github"
    rate = "5000/h"               # also "10/s", "100/m", "1/30s", or per second
    burst = 100
    concurrency = 8
    reset_format = "epoch"        # auto | epoch | delta
    window = "1h"
    backoff = "250ms"
    max_backoff = "5m"
    min_pause = "250ms"
    max_wait = "1h"
    failure_threshold = 5
    circuit_cooldown = "30s"
    obey_quotas = true

    [limits."github:{account}"]   # a template: one budget per account
    rate = "5000/h"

A key that is absent leaves the declared value alone; ``0`` is a value
like any other (``retries = 0`` is kept, ``timeout = 0`` is rejected).
What is valid together passes: ``workers = 2000`` with ``max_workers =
4096`` is fine. Bounds the file leaves out are judged by ``apply_config``
against what the code declares.
"""

from __future__ import annotations

import difflib
import importlib
import ipaddress
import os
import re
import sys
import tomllib
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NewType, TypeVar

import attrs
import cattrs
from attrs import AttrsInstance
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)
from cattrs.gen import make_dict_structure_fn, override

from ._durations import MAX_DURATION_S, parse_duration
from ._engine import Engine, parse_address
from ._policy import TaskPolicy, template_fields
from ._ratelimit import LimitSpec, Rate, parse_rate
from ._task import Task
from .errors import ConfigError

__all__ = [
    "Config",
    "EngineConfig",
    "LimitConfig",
    "TaskConfig",
    "apply_config",
    "check_metrics_address",
    "declared_limits",
    "is_template",
    "load_config",
    "load_engine",
]

Seconds = NewType("Seconds", float)
Address = NewType("Address", str)

# The loosest policy there is: checking one option against it finds what is
# wrong with that option alone, whatever the task declares.
_LOOSEST_POLICY = TaskPolicy(sla_s=MAX_DURATION_S, overlap="allow")
# The pool bounds an [engine] table is judged within while the code's own
# are unknown: its workers and bounds must fit each other, not the defaults.
_LOOSEST_POOL = {"min_workers": 1, "max_workers": sys.maxsize}
_POOL_KNOBS = ("workers", "min_workers", "max_workers")
# Likewise for one [limits.NAME] table: backoff and max_backoff are judged
# against each other only when the file sets both.
_LOOSEST_LIMIT = {"backoff": sys.float_info.min, "max_backoff": MAX_DURATION_S}
# Hooks phrase their messages with this subject; the key replaces it.
_SUBJECT = "value"
# A key TOML takes without quotes; others are shown quoted.
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# One label of a host name (RFC 1123; "_" too, as container names have it).
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_MAX_HOST_NAME = 253
# Frames in these are left out of the traceback of an app that fails to
# import: the user's own code is what they need to see.
_SLAPOLL_DIR = Path(__file__).resolve().parent
_IMPORTLIB_DIR = Path(importlib.__file__).resolve().parent
# Dropping what failed to structure leaves data that structures; should a
# shape no hook covers defeat that, give up after a few rounds.
_STRUCTURE_ATTEMPTS = 4


@attrs.frozen
class EngineConfig:
    """The ``[engine]`` table; ``None`` means "not in the file".

    Durations are in seconds. ``app`` is ``"module:attribute"``.
    """

    app: str | None = None
    workers: int | None = None
    min_workers: int | None = None
    max_workers: int | None = None
    control_period_s: Seconds | None = None
    shutdown_grace_s: Seconds | None = None
    metrics_address: Address | None = None

    def knobs(self) -> dict[str, object]:
        """The values the file sets, spelled as ``Engine.configure`` takes them."""
        return _set_options(self, skip=("app",))


@attrs.frozen
class TaskConfig:
    """One ``[tasks.NAME]`` table; ``None`` means "keep what the code declares".

    Durations are in seconds. ``expected_duration_s`` is not a task option:
    it only feeds the capacity plan ``slapoll check`` prints, before any
    duration has been measured.
    """

    sla_s: Seconds | None = None
    every_s: Seconds | None = None
    priority: int | None = None
    limits: tuple[str, ...] | None = None
    timeout_s: Seconds | None = None
    retries: int | None = None
    retry_backoff_s: Seconds | None = None
    overlap: str | None = None
    max_concurrent: int | None = None
    phase_s: Seconds | None = None
    expected_duration_s: Seconds | None = None

    def options(self) -> dict[str, object]:
        """The values the file sets, spelled as ``@engine.task`` takes them."""
        return _set_options(self, skip=("expected_duration_s",))


@attrs.frozen
class LimitConfig:
    """One ``[limits.NAME]`` table; ``None`` means "keep what is declared".

    NAME is a limit key or a template over target arguments
    (``"github:{account}"``: one budget per account). The keys are the
    options of ``Engine.limit``; durations are in seconds, ``rate`` is read.
    """

    rate: Rate | None = None
    burst: int | None = None
    concurrency: int | None = None
    window_s: Seconds | None = None
    reset_format: str | None = None
    backoff_s: Seconds | None = None
    max_backoff_s: Seconds | None = None
    min_pause_s: Seconds | None = None
    max_wait_s: Seconds | None = None
    failure_threshold: int | None = None
    circuit_cooldown_s: Seconds | None = None
    obey_quotas: bool | None = None

    def options(self) -> dict[str, object]:
        """The values the file sets, spelled as ``Engine.limit`` takes them."""
        return _set_options(self)


@attrs.frozen
class Config:
    """A config file, read and checked; ``path`` is where it came from."""

    path: Path
    engine: EngineConfig = EngineConfig()
    tasks: Mapping[str, TaskConfig] = attrs.field(factory=dict)
    limits: Mapping[str, LimitConfig] = attrs.field(factory=dict)

    def expected_durations(self) -> dict[str, float]:
        """Each task's ``expected_duration`` in seconds, where the file sets one."""
        return {
            name: task.expected_duration_s
            for name, task in self.tasks.items()
            if task.expected_duration_s is not None
        }


@attrs.frozen
class _Document:
    engine: EngineConfig = EngineConfig()
    tasks: dict[str, TaskConfig] = attrs.field(factory=dict)
    limits: dict[str, LimitConfig] = attrs.field(factory=dict)


def _toml_key(field_name: str) -> str:
    return field_name.removesuffix("_s")


def _dotted(*path: str) -> str:
    """A dotted key as TOML spells it: ``limits."github:{account}".rate``."""
    return ".".join(
        step if _BARE_KEY.fullmatch(step) else '"' + _escape(step) + '"'
        for step in path
    )


def _escape(step: str) -> str:
    return step.replace("\\", "\\\\").replace('"', '\\"')


def _set_options(
    instance: AttrsInstance, skip: tuple[str, ...] = ()
) -> dict[str, object]:
    return {
        _toml_key(field.name): value
        for field in attrs.fields(type(instance))
        if field.name not in skip
        and (value := getattr(instance, field.name)) is not None
    }


# -- loading ---------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read the TOML file at *path* and check every value in it.

    Raises ``ConfigError`` listing each problem with its dotted key. What
    depends on the code (unknown task names, options combined with the
    declared ones) is checked by ``apply_config``.
    """
    path = Path(path)
    data = _read_toml(path)
    document, problems = _structure(data)
    problems += [
        *_engine_problems(document.engine),
        *_task_problems(document.tasks),
        *_limit_problems(document.limits),
    ]
    if problems:
        raise _problems_error(path, problems)
    return Config(
        path=path, engine=document.engine, tasks=document.tasks, limits=document.limits
    )


def _structure(data: dict[str, Any]) -> tuple[_Document, list[str]]:
    """Structure *data*, and what is wrong with its types and keys.

    A value of the wrong type or an unknown key is left out and the rest
    structured again, so the rules between values are checked on all that
    can be read: every problem in the file is listed at once.
    """
    problems: list[str] = []
    for _ in range(_STRUCTURE_ATTEMPTS):
        try:
            return _CONVERTER.structure(data, _Document), problems
        except (ClassValidationError, IterableValidationError) as group:
            problems.extend(_structure_problems(group, data))
            failed = set(_failed_paths(group))
            if () in failed:
                break
            data = _without(data, failed)
    return _Document(), problems


def _failed_paths(
    error: BaseException, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """The keys whose values failed to structure (as ``_structure_problems``)."""
    if isinstance(error, ClassValidationError | IterableValidationError):
        noted, bare = error.group_exceptions()
        for sub, note in noted:
            if isinstance(note, AttributeValidationNote):
                step = _toml_key(note.name)
            else:
                step = str(note.index)
            yield from _failed_paths(sub, (*path, step))
        for sub in bare:
            yield from _failed_paths(sub, path)
    elif isinstance(error, ForbiddenExtraKeysError):
        yield from ((*path, extra) for extra in error.extra_fields)
    else:
        yield path


def _without(data: object, paths: set[tuple[str, ...]]) -> Any:
    """A copy of the tables in *data* without the values at *paths* (none empty)."""
    if not isinstance(data, dict):
        return data
    return {
        key: _without(value, {p[1:] for p in paths if len(p) > 1 and p[0] == key})
        for key, value in data.items()
        if (key,) not in paths
    }


def _read_toml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a config file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The decoder's message ends with "(at line L, column C)".
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _problems_error(path: Path, problems: list[str]) -> ConfigError:
    if len(problems) == 1:
        return ConfigError(f"{path}: {problems[0]}")
    listed = "".join(f"\n  - {problem}" for problem in problems)
    return ConfigError(f"{path}: {len(problems)} problems:{listed}")


def _name_key(key: str, message: str, subject: str = _SUBJECT) -> str:
    """Put the dotted *key* in front of *message*, in place of its subject.

    ``TaskPolicy`` and the structuring hooks phrase messages as
    "<subject> must be ..."; with the key in place they read
    "tasks.feed.every must be ...".
    """
    if message.startswith(subject + " "):
        return key + message[len(subject) :]
    return f"{key}: {message}"


# -- structuring: types and shapes -----------------------------------------


def _strict_int(value: object, _: type) -> int:
    # cattrs would call int() and quietly accept "2", 2.7 and true.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{_SUBJECT} must be an integer, got {value!r}")
    return value


def _strict_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{_SUBJECT} must be a string, got {value!r}")
    return value


def _strict_bool(value: object, _: type) -> bool:
    # cattrs would call bool() and quietly accept "no" as true.
    if not isinstance(value, bool):
        raise ConfigError(f"{_SUBJECT} must be true or false, got {value!r}")
    return value


def _rate(value: object, _: type) -> Rate:
    try:
        # parse_rate names any type it cannot read, so *value* goes in as is.
        return parse_rate(value, name=_SUBJECT)  # type: ignore[arg-type]
    except ConfigError as exc:
        if str(exc).startswith(_SUBJECT + " "):
            raise
        # The period is neither a unit nor a duration: "5/fortnight".
        raise ConfigError(
            f"{_SUBJECT} must be a rate such as '5000/h', '10/s', '100/m' or "
            f"'1/30s' (per s, m, h, d or a duration), got {value!r}"
        ) from None


def _strings(value: object, _: type) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f'{_SUBJECT} must be a list of strings such as ["github"], got {value!r}'
        )
    return tuple(value)


def _seconds(value: object, _: type) -> Seconds:
    # parse_duration names any type it cannot read, so *value* goes in as is.
    return Seconds(parse_duration(value, name=_SUBJECT))  # type: ignore[arg-type]


def _address(value: object, _: type) -> Address:
    text = _strict_str(value, str)
    try:
        check_metrics_address(text)
    except ConfigError as exc:
        raise ConfigError(_SUBJECT + str(exc).removeprefix("metrics_address")) from None
    return Address(text)


def check_metrics_address(address: str) -> tuple[str, int]:
    """Split ``"HOST:PORT"`` as the engine does, and check that HOST can be one.

    HOST must be an IP address or a host name; whether a name resolves is
    not asked here (that needs the network). Raises ``ConfigError``
    phrased for the key ``metrics_address``.
    """
    host, port = parse_address(address)
    if not _is_host(host):
        raise ConfigError(
            "metrics_address must be HOST:PORT where HOST is an IP address or a "
            f"host name, got {address!r}"
        )
    return host, port


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    name = host.removesuffix(".")
    labels = name.split(".")
    # A name whose last label is a number is a malformed IP address
    # ("999.999.0.1"): no top-level domain is numeric.
    return (
        len(name) <= _MAX_HOST_NAME
        and all(_HOST_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )


_T = TypeVar("_T", bound=AttrsInstance)


def _table_hook(
    cls: type[_T], converter: cattrs.Converter
) -> Callable[[object, type], _T]:
    renames = {
        field.name: override(rename=_toml_key(field.name))
        for field in attrs.fields(cls)
        if _toml_key(field.name) != field.name
    }
    # The renames are keyed by field names, never by this function's own
    # parameters, which is what mypy cannot tell.
    structure = make_dict_structure_fn(
        cls,
        converter,
        _cattrs_forbid_extra_keys=True,
        **renames,  # type: ignore[arg-type]
    )

    def hook(value: object, _: type) -> _T:
        if not isinstance(value, dict):
            raise ConfigError(f"{_SUBJECT} must be a table, got {value!r}")
        return structure(value, cls)

    return hook


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_structure_hook_func(lambda cls: cls == tuple[str, ...], _strings)
    converter.register_structure_hook(Seconds, _seconds)
    converter.register_structure_hook(Address, _address)
    converter.register_structure_hook(Rate, _rate)
    # Inner tables first: a table's structuring function is generated with
    # the hooks of its fields as they are registered at that moment.
    for cls in (EngineConfig, TaskConfig, LimitConfig):
        converter.register_structure_hook(cls, _table_hook(cls, converter))
    converter.register_structure_hook_func(
        lambda cls: cls == dict[str, TaskConfig],
        _tables_hook(converter, dict[str, TaskConfig]),
    )
    converter.register_structure_hook_func(
        lambda cls: cls == dict[str, LimitConfig],
        _tables_hook(converter, dict[str, LimitConfig]),
    )
    converter.register_structure_hook(_Document, _table_hook(_Document, converter))
    return converter


def _tables_hook(
    converter: cattrs.Converter, mapping: Any
) -> Callable[[object, type], object]:
    structure = converter.gen_structure_mapping(mapping)

    def hook(value: object, cls: type) -> object:
        if not isinstance(value, dict):
            raise ConfigError(f"{_SUBJECT} must be a table of tables, got {value!r}")
        return structure(value, cls)

    return hook


_CONVERTER = _make_converter()


def _structure_problems(
    error: BaseException, data: object, path: tuple[str, ...] = ()
) -> Iterator[str]:
    """Walk cattrs' tree of errors, naming each problem by its dotted key."""
    if isinstance(error, ClassValidationError | IterableValidationError):
        noted, bare = error.group_exceptions()
        for sub, note in noted:
            if isinstance(note, AttributeValidationNote):
                step = _toml_key(note.name)
            else:
                step = str(note.index)
            yield from _structure_problems(sub, data, (*path, step))
        for sub in bare:
            yield from _structure_problems(sub, data, path)
    elif isinstance(error, ForbiddenExtraKeysError):
        yield from _unknown_keys(error, path)
    elif isinstance(error, ConfigError):
        yield _name_key(_dotted(*path), str(error))
    else:
        value = _lookup(data, path)
        # Hooks raise ConfigError; anything else is cattrs meeting a shape
        # no hook covers.
        yield f"{_dotted(*path)} = {value!r} is not allowed here: {error}"


def _unknown_keys(
    error: ForbiddenExtraKeysError, path: tuple[str, ...]
) -> Iterator[str]:
    allowed = [_toml_key(f.name) for f in attrs.fields(error.cl)]
    where = f"in [{_dotted(*path)}]" if path else "at the top level"
    for extra in sorted(error.extra_fields):
        close = difflib.get_close_matches(extra, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        yield (
            f"unknown key {_dotted(*path, extra)!r}{hint}; "
            f"allowed {where}: {', '.join(allowed)}"
        )


def _lookup(data: object, path: tuple[str, ...]) -> object:
    for step in path:
        if not isinstance(data, dict):
            break
        data = data.get(step)
    return data


# -- checking: rules between values ----------------------------------------


def _engine_problems(engine: EngineConfig) -> Iterator[str]:
    knobs = engine.knobs()
    # Each knob alone first, so the problem is pinned to its own key. The
    # pool bounds the file leaves out are the code's to declare, so a knob
    # is judged within the loosest ones, not within the defaults.
    alone = [
        problem
        for knob, value in knobs.items()
        if (problem := _knob_problem({**_LOOSEST_POOL, knob: value}, blame=[knob]))
    ]
    yield from alone
    between = list(_pool_problems(knobs, in_force={}))
    yield from between
    if not (alone or between) and (
        problem := _knob_problem({**_LOOSEST_POOL, **knobs}, blame=knobs)
    ):
        yield problem

    if engine.app is not None:
        module, sep, attribute = engine.app.partition(":")
        if not (sep and module and attribute):
            yield (
                f"engine.app must be 'module:attribute' naming the Engine to "
                f"run, such as 'feeds:engine', got {engine.app!r}"
            )


def _knob_problem(knobs: Mapping[str, object], blame: Iterable[str]) -> str | None:
    try:
        Engine().configure(**knobs)
    except ConfigError as exc:
        return _name_option("engine", str(exc), blame)
    return None


def _pool_problems(
    knobs: Mapping[str, object], in_force: Mapping[str, int]
) -> Iterator[str]:
    """What is wrong between the pool knobs *knobs* sets.

    Knobs it leaves out count with their value *in_force* (the engine's,
    when applying), or not at all. Values that are no whole number >= 1
    were reported on their own and are left out.
    """
    given = {
        knob: value
        for knob in _POOL_KNOBS
        if isinstance(value := knobs.get(knob), int)
        and not isinstance(value, bool)
        and value >= 1
    }
    low = given.get("min_workers", in_force.get("min_workers"))
    high = given.get("max_workers", in_force.get("max_workers"))
    if low is not None and high is not None and low > high:
        if "min_workers" in given:
            yield f"engine.min_workers ({low!r}) must not exceed max_workers ({high!r})"
        elif "max_workers" in given:
            yield (
                f"engine.max_workers ({high!r}) must not be below min_workers ({low!r})"
            )
        # Within an empty range no pool size fits: nothing more to say.
        return

    workers = given.get("workers")
    if workers is None:
        return
    if low is not None and high is not None and not low <= workers <= high:
        yield (
            f"engine.workers ({workers!r}) must lie between min_workers ({low!r}) "
            f"and max_workers ({high!r})"
        )
    elif low is not None and workers < low:
        yield f"engine.workers ({workers!r}) must not be below min_workers ({low!r})"
    elif high is not None and workers > high:
        yield f"engine.workers ({workers!r}) must not exceed max_workers ({high!r})"


def _task_problems(tasks: Mapping[str, TaskConfig]) -> Iterator[str]:
    for name, task in tasks.items():
        options = task.options()
        # Each option alone first, so the problem is pinned to its own key.
        alone = [
            problem
            for option, value in options.items()
            if (problem := _policy_problem(_LOOSEST_POLICY, name, {option: value}))
        ]
        yield from alone
        if not alone and (problem := _policy_problem(_LOOSEST_POLICY, name, options)):
            yield problem


def _policy_problem(
    policy: TaskPolicy, task: str, options: Mapping[str, object]
) -> str | None:
    """Say what is wrong with *options* applied to *policy*, if anything."""
    try:
        policy.with_options(**options)
    except ConfigError as exc:
        return _name_option(_dotted("tasks", task), str(exc), options)
    return None


def _task_problem(task: Task, table: TaskConfig) -> str | None:
    """Say what is wrong with *table* applied to *task*, if anything.

    Besides the policy's own rules, the limit key templates the table lists
    must be ones that the task's function and targets can fill.
    """
    problem = _policy_problem(task.policy, task.name, table.options())
    if problem is not None or table.limits is None:
        return problem
    try:
        task.check_limits(table.limits)
    except ConfigError as exc:
        return _name_option(_dotted("tasks", task.name), f"limits: {exc}", ["limits"])
    return None


def _limit_problems(limits: Mapping[str, LimitConfig]) -> Iterator[str]:
    for name, limit in limits.items():
        table = _dotted("limits", name)
        if (problem := _limit_name_problem(name)) is not None:
            yield f"{table}: {problem}"
        options = limit.options()
        # Each option alone first, so the problem is pinned to its own key.
        alone = [
            problem
            for option, value in options.items()
            if (
                problem := _limit_problem(
                    table, {**_LOOSEST_LIMIT, option: value}, blame=[option]
                )
            )
        ]
        yield from alone
        if not alone and (
            problem := _limit_problem(
                table, {**_LOOSEST_LIMIT, **options}, blame=options
            )
        ):
            yield problem


def _limit_name_problem(name: str) -> str | None:
    if not name:
        return "a limit name must not be empty"
    try:
        template_fields(name)
    except ConfigError as exc:
        return str(exc)
    return None


def _limit_problem(
    table: str, options: Mapping[str, object], blame: Iterable[str]
) -> str | None:
    """Say what is wrong with *options* as a limit's, if anything."""
    try:
        LimitSpec.from_options(**options)  # type: ignore[arg-type]
    except ConfigError as exc:
        return _name_option(table, str(exc), blame)
    return None


def _name_option(table: str, message: str, options: Iterable[str]) -> str:
    # The option the message opens with is the one to blame; the longest
    # name first, so "retry_backoff" is not mistaken for "retries". A
    # message may open with the option and a colon, then say what of its
    # value is wrong ("limits: limit key template ...").
    for option in sorted(options, key=len, reverse=True):
        if message.startswith(option + " "):
            return _name_key(f"{table}.{option}", message, subject=option)
        if message.startswith(option + ": "):
            return f"{table}.{message}"
    return f"{table}: {message}"


def is_template(name: str) -> bool:
    """Whether limit *name* is a template, one budget per filled-in key.

    Judged as the engine does when it plans: by a brace in the name.
    """
    return "{" in name


def declared_limits(engine: Engine) -> Mapping[str, LimitSpec]:
    """The limit names and templates *engine* has a declared budget for."""
    # Engine offers no public view of its declarations yet; this is the
    # one place that reads them.
    return dict(engine.limits)


def _spec_options(spec: LimitSpec) -> dict[str, object]:
    """*spec* spelled as ``Engine.limit`` takes it."""
    return {
        _toml_key(field.name): getattr(spec, field.name)
        for field in attrs.fields(LimitSpec)
    }


# -- applying --------------------------------------------------------------


def _unknown_names(config: Config, engine: Engine) -> Iterator[str]:
    """A ``[tasks.NAME]`` the engine does not declare, and a
    ``[limits.NAME]`` that neither the code declares nor any task lists:
    both are typos, which would otherwise change nothing, silently."""
    tasks = sorted(engine.tasks)
    for name in config.tasks:
        if name not in engine.tasks:
            yield (
                f"[{_dotted('tasks', name)}] names a task the engine does not "
                f"declare; known tasks: {', '.join(tasks) or '(none)'}"
            )
    listed = {key for task in engine.tasks.values() for key in task.policy.limits}
    for task in config.tasks.values():
        listed.update(task.limits or ())
    known = sorted(listed | set(declared_limits(engine)))
    for name in config.limits:
        if name not in known:
            yield (
                f"[{_dotted('limits', name)}] names a limit key that no task "
                f"lists and the code does not declare; known keys: "
                f"{', '.join(known) or '(none)'}"
            )


def apply_config(config: Config, engine: Engine) -> None:
    """Override *engine*'s knobs, its tasks' options and its limits' budgets
    with *config*'s values.

    A ``[limits.NAME]`` table changes only the options it sets of what the
    code declares for NAME (or of the defaults). Everything is checked
    before anything changes, so a ``ConfigError`` leaves the engine as it
    was. Must be called before the engine runs.
    """
    knobs = config.engine.knobs()
    in_force = {"min_workers": engine.min_workers, "max_workers": engine.max_workers}
    declared = declared_limits(engine)
    limits = {
        name: {**_spec_options(declared.get(name, LimitSpec())), **limit.options()}
        for name, limit in config.limits.items()
    }
    problems = [
        *_unknown_names(config, engine),
        *(
            problem
            for name, task in config.tasks.items()
            if name in engine.tasks
            and (problem := _task_problem(engine.tasks[name], task))
        ),
        *_pool_problems(knobs, in_force),
        *(
            problem
            for name, options in limits.items()
            if (
                problem := _limit_problem(
                    _dotted("limits", name),
                    options,
                    blame=config.limits[name].options(),
                )
            )
        ),
    ]
    if problems:
        raise _problems_error(config.path, problems)

    try:
        engine.configure(**knobs)
    except ConfigError as exc:
        raise _problems_error(
            config.path, [_name_option("engine", str(exc), knobs)]
        ) from None
    for name, task in config.tasks.items():
        engine.tasks[name].configure(**task.options())
    for name, options in limits.items():
        engine.limit(name, **options)


def load_engine(config: Config) -> Engine:
    """Import the engine that ``engine.app`` names and return it.

    The module is looked up in the config file's directory first, then in
    the current directory; both stay on ``sys.path`` so that the module's
    own imports keep working while the engine runs. Raises ``ConfigError``
    when the module is missing or lacks the attribute, and when importing
    it fails: a missing import of its own is named in one line; any other
    error (a syntax error, an exception raised at import, a ``ConfigError``
    of a task it declares) comes with the traceback through the user's
    code, slapoll's and the import machinery's frames left out.
    """
    app = config.engine.app
    if app is None:
        raise ConfigError(
            f'{config.path}: engine.app is not set; add app = "module:attribute" '
            "to [engine], naming the Engine to run"
        )
    module_name, _, attribute = app.partition(":")
    module = _import_app_module(config.path, module_name, app)

    found: object = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ConfigError(
                f"{config.path}: engine.app = {app!r}: module {module_name!r} "
                f"has no attribute {attribute!r}"
            )
        found = getattr(found, part)
    if not isinstance(found, Engine):
        raise ConfigError(
            f"{config.path}: engine.app = {app!r} must name a slapoll.Engine, "
            f"got {type(found).__name__} {found!r}"
        )
    return found


def _import_app_module(config_path: Path, module_name: str, app: str) -> object:
    # Run from the config's own directory, both places are one.
    search = list(dict.fromkeys([str(config_path.parent.resolve()), os.getcwd()]))
    for entry in reversed(search):
        if entry not in sys.path:
            sys.path.insert(0, entry)

    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not _is_prefix(exc.name, module_name):
            # The module exists but one of its own imports is missing.
            raise ConfigError(
                f"{config_path}: engine.app = {app!r}: importing {module_name!r} "
                f"failed: {exc}"
            ) from exc
        raise ConfigError(
            f"{config_path}: engine.app = {app!r}: no module {module_name!r} in "
            f"{' or '.join(search)}"
        ) from None
    except Exception as exc:
        # The bug is in the user's module, so they need to see where; what
        # led there from the command line is of no help to them.
        raise ConfigError(
            f"importing app {app!r} failed:\n{_user_traceback(exc)}"
        ) from exc


def _user_traceback(error: BaseException) -> str:
    """*error*'s traceback without the frames of slapoll and of importing.

    What is left are the frames of the user's code (and of what it
    called), then the error itself; for a syntax error, its file, line
    and caret. Chained errors are shown as Python shows them.
    """
    trace = traceback.TracebackException.from_exception(error)
    pending = [trace]
    while pending:
        current = pending.pop()
        current.stack = traceback.StackSummary.from_list(
            [frame for frame in current.stack if not _is_machinery(frame.filename)]
        )
        pending.extend(
            chained
            for chained in (current.__cause__, current.__context__)
            if chained is not None
        )
    return "".join(trace.format()).rstrip("\n")


def _is_machinery(filename: str) -> bool:
    """Whether code in *filename* is slapoll's or Python's import system."""
    if filename.startswith("<frozen importlib"):
        return True
    path = Path(filename)
    return path.is_relative_to(_SLAPOLL_DIR) or path.is_relative_to(_IMPORTLIB_DIR)


def _is_prefix(package: str, module_name: str) -> bool:
    return module_name == package or module_name.startswith(package + ".")
