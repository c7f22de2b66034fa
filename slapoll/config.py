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

A key that is absent leaves the declared value alone; ``0`` is a value
like any other (``retries = 0`` is kept, ``timeout = 0`` is rejected).
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
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

from ._durations import parse_duration
from ._engine import Engine, parse_address
from ._policy import TaskPolicy
from .errors import ConfigError

__all__ = [
    "Config",
    "EngineConfig",
    "TaskConfig",
    "apply_config",
    "load_config",
    "load_engine",
]

Seconds = NewType("Seconds", float)
Address = NewType("Address", str)

# The loosest policy there is: checking one option against it finds what is
# wrong with that option alone, whatever the task declares.
_LOOSEST_POLICY = TaskPolicy(sla_s=sys.float_info.max, overlap="allow")
# Hooks phrase their messages with this subject; the key replaces it.
_SUBJECT = "value"


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
class Config:
    """A config file, read and checked; ``path`` is where it came from."""

    path: Path
    engine: EngineConfig = EngineConfig()
    tasks: Mapping[str, TaskConfig] = attrs.field(factory=dict)

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


def _toml_key(field_name: str) -> str:
    return field_name.removesuffix("_s")


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

    try:
        document = _CONVERTER.structure(data, _Document)
    except (ClassValidationError, IterableValidationError) as group:
        raise _problems_error(path, list(_structure_problems(group, data))) from None

    problems = [*_engine_problems(document.engine), *_task_problems(document.tasks)]
    if problems:
        raise _problems_error(path, problems)
    return Config(path=path, engine=document.engine, tasks=document.tasks)


def _read_toml(path: Path) -> dict[str, Any]:
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
        parse_address(text)
    except ConfigError as exc:
        raise ConfigError(_SUBJECT + str(exc).removeprefix("metrics_address")) from None
    return Address(text)


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
    converter.register_structure_hook_func(lambda cls: cls == tuple[str, ...], _strings)
    converter.register_structure_hook(Seconds, _seconds)
    converter.register_structure_hook(Address, _address)
    # Inner tables first: a table's structuring function is generated with
    # the hooks of its fields as they are registered at that moment.
    for cls in (EngineConfig, TaskConfig):
        converter.register_structure_hook(cls, _table_hook(cls, converter))
    converter.register_structure_hook_func(
        lambda cls: cls == dict[str, TaskConfig], _tables_hook(converter)
    )
    converter.register_structure_hook(_Document, _table_hook(_Document, converter))
    return converter


def _tables_hook(converter: cattrs.Converter) -> Callable[[object, type], object]:
    structure = converter.gen_structure_mapping(dict[str, TaskConfig])

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
        yield _name_key(".".join(path), str(error))
    else:
        value = _lookup(data, path)
        # Hooks raise ConfigError; anything else is cattrs meeting a shape
        # no hook covers.
        yield f"{'.'.join(path)} = {value!r} is not allowed here: {error}"


def _unknown_keys(
    error: ForbiddenExtraKeysError, path: tuple[str, ...]
) -> Iterator[str]:
    allowed = [_toml_key(f.name) for f in attrs.fields(error.cl)]
    where = f"in [{'.'.join(path)}]" if path else "at the top level"
    for extra in sorted(error.extra_fields):
        close = difflib.get_close_matches(extra, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        yield (
            f"unknown key {'.'.join((*path, extra))!r}{hint}; "
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
    # Each knob alone first, so the problem is pinned to its own key; an
    # engine fresh from its defaults judges them as Engine.configure will.
    alone = [
        problem
        for knob, value in knobs.items()
        if (problem := _knob_problem({knob: value}))
    ]
    yield from alone
    if not alone and (problem := _knob_problem(knobs)):
        yield problem

    if engine.app is not None:
        module, sep, attribute = engine.app.partition(":")
        if not (sep and module and attribute):
            yield (
                f"engine.app must be 'module:attribute' naming the Engine to "
                f"run, such as 'feeds:engine', got {engine.app!r}"
            )


def _knob_problem(knobs: Mapping[str, object]) -> str | None:
    try:
        Engine().configure(**knobs)
    except ConfigError as exc:
        return _name_option("engine", str(exc), knobs)
    return None


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
        return _name_option(f"tasks.{task}", str(exc), options)
    return None


def _name_option(table: str, message: str, options: Mapping[str, object]) -> str:
    # The option the message opens with is the one to blame; the longest
    # name first, so "retry_backoff" is not mistaken for "retries".
    for option in sorted(options, key=len, reverse=True):
        if message.startswith(option + " "):
            return _name_key(f"{table}.{option}", message, subject=option)
    return f"{table}: {message}"


# -- applying --------------------------------------------------------------


def apply_config(config: Config, engine: Engine) -> None:
    """Override *engine*'s knobs and its tasks' options with *config*'s values.

    Everything is checked before anything changes, so a ``ConfigError``
    leaves the engine as it was. Must be called before the engine runs.
    """
    known = sorted(engine.tasks)
    for name in config.tasks:
        if name not in engine.tasks:
            raise ConfigError(
                f"{config.path}: [tasks.{name}] names a task the engine does "
                f"not declare; known tasks: {', '.join(known) or '(none)'}"
            )

    problems = [
        problem
        for name, task in config.tasks.items()
        if (problem := _policy_problem(engine.tasks[name].policy, name, task.options()))
    ]
    if problems:
        raise _problems_error(config.path, problems)

    knobs = config.engine.knobs()
    try:
        engine.configure(**knobs)
    except ConfigError as exc:
        raise _problems_error(
            config.path, [_name_option("engine", str(exc), knobs)]
        ) from None
    for name, task in config.tasks.items():
        engine.tasks[name].configure(**task.options())


def load_engine(config: Config) -> Engine:
    """Import the engine that ``engine.app`` names and return it.

    The module is looked up in the config file's directory first, then in
    the current directory; both stay on ``sys.path`` so that the module's
    own imports keep working while the engine runs. Errors inside the
    module other than a missing import propagate unchanged.
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
    search = [str(config_path.parent.resolve()), os.getcwd()]
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
            f"{search[0]} or {search[1]}"
        ) from None


def _is_prefix(package: str, module_name: str) -> bool:
    return module_name == package or module_name.startswith(package + ".")
