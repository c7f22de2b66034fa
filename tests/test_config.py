"""Tests for slapoll.config: reading, checking and applying TOML config."""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import slapoll
from slapoll import ConfigError, TaskPolicy, format_duration
from slapoll._ratelimit import LimitSpec, Rate
from slapoll.config import (
    Config,
    EngineConfig,
    LimitConfig,
    TaskConfig,
    apply_config,
    declared_limits,
    load_config,
    load_engine,
)

FULL = """
[engine]
app = "app:engine"
workers = 32
min_workers = 2
max_workers = 256
control_period = "2s"
shutdown_grace = "10s"
metrics_address = "127.0.0.1:9464"

[tasks.feed]
sla = "30s"
every = "10s"
priority = 2
limits = ["github", "github:token-7"]
timeout = "5s"
retries = 2
retry_backoff = "500ms"
overlap = "skip"
max_concurrent = 1
phase = "1s"
"""


def write(tmp_path: Path, text: str, name: str = "slapoll.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problem(tmp_path: Path, text: str) -> str:
    """The message of the ``ConfigError`` that loading *text* raises."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


def make_engine() -> slapoll.Engine:
    engine = slapoll.Engine()

    @engine.task(sla="30s", every="10s")
    async def feed(ctx: slapoll.RunContext, url: str) -> None:
        """Poll one feed."""

    @engine.task(sla="1m")
    async def digest(ctx: slapoll.RunContext) -> None:
        """Send the digest."""

    return engine


@pytest.fixture
def isolated_imports() -> Iterator[None]:
    """Undo what load_engine adds to sys.path and sys.modules."""
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


# -- reading ----------------------------------------------------------------


def test_load_config_reads_every_key(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))

    assert config.path == tmp_path / "slapoll.toml"
    assert config.engine == EngineConfig(
        app="app:engine",
        workers=32,
        min_workers=2,
        max_workers=256,
        control_period_s=2.0,  # type: ignore[arg-type]
        shutdown_grace_s=10.0,  # type: ignore[arg-type]
        metrics_address="127.0.0.1:9464",  # type: ignore[arg-type]
    )
    assert config.tasks["feed"].options() == {
        "sla": 30.0,
        "every": 10.0,
        "priority": 2,
        "limits": ("github", "github:token-7"),
        "timeout": 5.0,
        "retries": 2,
        "retry_backoff": 0.5,
        "overlap": "skip",
        "max_concurrent": 1,
        "phase": 1.0,
    }


def test_empty_file_sets_nothing(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))

    assert config == Config(path=tmp_path / "slapoll.toml")
    assert config.engine.knobs() == {}


def test_absent_keys_are_left_out_of_the_options(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[tasks.feed]\nevery = "5s"\n'))

    assert config.tasks["feed"].options() == {"every": 5.0}


def test_zero_is_a_value_not_unset(tmp_path: Path) -> None:
    text = "[tasks.feed]\nretries = 0\npriority = 0\nphase = 0\n"
    config = load_config(write(tmp_path, text))

    assert config.tasks["feed"].options() == {"retries": 0, "priority": 0, "phase": 0}


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ('"250ms"', 0.25),
        ('"30s"', 30.0),
        ('"5m"', 300.0),
        ('"1h"', 3600.0),
        ('"1h30m"', 5400.0),
        ("7", 7.0),
        ("1.5", 1.5),
    ],
)
def test_durations_accept_units_and_numbers(
    tmp_path: Path, written: str, seconds: float
) -> None:
    config = load_config(write(tmp_path, f"[tasks.feed]\ntimeout = {written}\n"))

    assert config.tasks["feed"].timeout_s == seconds


def test_task_config_has_every_decorator_option() -> None:
    declared = {f.name.removesuffix("_s") for f in attrs.fields(TaskPolicy)}
    configurable = {f.name.removesuffix("_s") for f in attrs.fields(TaskConfig)}

    # expected_duration is read for the capacity plan, not a task option.
    assert configurable - {"expected_duration"} == declared


def test_expected_duration_is_read_but_not_a_task_option(tmp_path: Path) -> None:
    text = '[tasks.feed]\nexpected_duration = "800ms"\n[tasks.digest]\nretries = 1\n'
    config = load_config(write(tmp_path, text))

    assert config.tasks["feed"].expected_duration_s == 0.8
    assert config.tasks["feed"].options() == {}
    assert config.expected_durations() == {"feed": 0.8}


def test_expected_duration_applies_without_touching_the_task(tmp_path: Path) -> None:
    engine = make_engine()
    policy = engine.tasks["feed"].policy
    config = load_config(write(tmp_path, '[tasks.feed]\nexpected_duration = "2s"\n'))

    apply_config(config, engine)

    assert engine.tasks["feed"].policy == policy


def test_negative_expected_duration_is_rejected(tmp_path: Path) -> None:
    message = problem(tmp_path, "[tasks.feed]\nexpected_duration = -1\n")

    assert "tasks.feed.expected_duration must be a finite, non-negative" in message


policies = st.builds(
    TaskPolicy,
    sla_s=st.integers(10, 10**7).map(lambda ms: ms / 1000),
    priority=st.integers(-5, 5),
    limits=st.lists(st.text("abc:-", min_size=1), max_size=3).map(tuple),
    timeout_s=st.none() | st.integers(1, 10**6).map(lambda ms: ms / 1000),
    retries=st.integers(0, 5),
    retry_backoff_s=st.integers(1, 10**5).map(lambda ms: ms / 1000),
    overlap=st.sampled_from(["skip", "queue_one"]),
).flatmap(
    lambda p: st.builds(
        attrs.evolve,
        st.just(p),
        every_s=st.none() | st.floats(0.001, p.sla_s).map(lambda s: round(s, 3)),
    )
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=policies)
def test_any_valid_policy_survives_a_trip_through_toml(
    tmp_path: Path, policy: TaskPolicy
) -> None:
    lines = [
        "[tasks.feed]",
        f'sla = "{format_duration(policy.sla_s)}"',
        f"priority = {policy.priority}",
        f"limits = {json.dumps(list(policy.limits))}",
        f"retries = {policy.retries}",
        f'retry_backoff = "{format_duration(policy.retry_backoff_s)}"',
        f'overlap = "{policy.overlap}"',
    ]
    if policy.every_s is not None:
        lines.append(f'every = "{format_duration(policy.every_s)}"')
    if policy.timeout_s is not None:
        lines.append(f"timeout = {policy.timeout_s!r}")
    config = load_config(write(tmp_path, "\n".join(lines)))

    declared = TaskPolicy(sla_s=1.0)
    assert declared.with_options(**config.tasks["feed"].options()) == policy


# -- rejecting ----------------------------------------------------------------


def test_unknown_engine_key_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: unknown key 'engine.wrokers' (did you mean 'workers'?); "
            "allowed in [engine]: app, workers, min_workers, max_workers, "
            "control_period, shutdown_grace, metrics_address"
        ),
    ):
        load_config(write(tmp_path, "[engine]\nwrokers = 3\n"))


def test_unknown_task_key_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: unknown key 'tasks.feed.interval'; allowed in "
            "[tasks.feed]: sla, every, priority, limits, timeout, retries, "
            "retry_backoff, overlap, max_concurrent, phase, expected_duration"
        ),
    ):
        load_config(write(tmp_path, '[tasks.feed]\ninterval = "5s"\n'))


def test_unknown_top_level_table_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "unknown key 'task' (did you mean 'tasks'?); "
            "allowed at the top level: engine, tasks, limits"
        ),
    ):
        load_config(write(tmp_path, '[task.feed]\nsla = "5s"\n'))


def test_seconds_suffix_is_not_a_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'tasks\.feed\.sla_s'"):
        load_config(write(tmp_path, "[tasks.feed]\nsla_s = 5\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[engine]\nworkers = "many"\n',
            "engine.workers must be an integer, got 'many'",
        ),
        (
            "[engine]\nworkers = 2.5\n",
            "engine.workers must be an integer, got 2.5",
        ),
        (
            "[tasks.feed]\npriority = true\n",
            "tasks.feed.priority must be an integer, got True",
        ),
        (
            '[tasks.feed]\nlimits = "github"\n',
            'tasks.feed.limits must be a list of strings such as ["github"], '
            "got 'github'",
        ),
        (
            "[tasks.feed]\nlimits = [1]\n",
            'tasks.feed.limits must be a list of strings such as ["github"], got [1]',
        ),
        ("[engine]\napp = 3\n", "engine.app must be a string, got 3"),
        ("[tasks]\nfeed = 3\n", "tasks.feed must be a table, got 3"),
        ("engine = 3\n", "engine must be a table, got 3"),
        ("tasks = 3\n", "tasks must be a table of tables, got 3"),
        (
            "[tasks.feed]\nsla = true\n",
            "tasks.feed.sla must be a duration, got True",
        ),
        (
            "[tasks.feed]\nsla = [30]\n",
            "tasks.feed.sla must be a duration such as '30s' or a number of "
            "seconds, got [30]",
        ),
    ],
)
def test_wrong_type_is_rejected(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"slapoll.toml: {message}")):
        load_config(write(tmp_path, text))


def test_zero_task_duration_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: tasks.feed.timeout must be greater than 0, got 0.0"
        ),
    ):
        load_config(write(tmp_path, "[tasks.feed]\ntimeout = 0\n"))


def test_zero_control_period_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape("slapoll.toml: engine.control_period must be > 0, got 0.0"),
    ):
        load_config(write(tmp_path, '[engine]\ncontrol_period = "0s"\n'))


def test_zero_shutdown_grace_is_allowed(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[engine]\nshutdown_grace = 0\n"))

    assert config.engine.knobs() == {"shutdown_grace": 0.0}


def test_negative_duration_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: tasks.feed.every must be a finite, non-negative "
            "duration, got -5"
        ),
    ):
        load_config(write(tmp_path, "[tasks.feed]\nevery = -5\n"))


def test_negative_duration_text_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: engine.shutdown_grace must not be negative, got '-5s'"
        ),
    ):
        load_config(write(tmp_path, '[engine]\nshutdown_grace = "-5s"\n'))


def test_unparseable_duration_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: tasks.feed.every must be a duration such as "
            "'250ms', '30s', '5m' or '1h', or a plain number of seconds, "
            "got 'soon'"
        ),
    ):
        load_config(write(tmp_path, '[tasks.feed]\nevery = "soon"\n'))


def test_every_longer_than_sla_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: tasks.feed.every (60.0s) must not exceed sla (30.0s): "
            "a target polled less often than its SLA cannot stay fresh"
        ),
    ):
        load_config(write(tmp_path, '[tasks.feed]\nsla = "30s"\nevery = "1m"\n'))


def test_bad_overlap_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: tasks.feed.overlap must be one of skip, queue_one, "
            "allow, got 'sometimes'"
        ),
    ):
        load_config(write(tmp_path, '[tasks.feed]\noverlap = "sometimes"\n'))


def test_max_concurrent_without_overlap_allow_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: tasks.feed.max_concurrent = 3 needs overlap = 'allow'"
        ),
    ):
        load_config(
            write(tmp_path, '[tasks.feed]\noverlap = "skip"\nmax_concurrent = 3\n')
        )


def test_negative_retries_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: tasks.feed.retries must be a whole number >= 0, got -1"
        ),
    ):
        load_config(write(tmp_path, "[tasks.feed]\nretries = -1\n"))


def test_invalid_toml_reports_the_line(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"slapoll\.toml: invalid TOML: .*\(at line 3, column 9\)",
    ):
        load_config(write(tmp_path, '[engine]\nworkers = 3\napp = "a\n'))


def test_directory_is_reported_as_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=re.escape(f"{tmp_path}: is a directory, not a config file")
    ):
        load_config(tmp_path)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=re.escape(f"{tmp_path / 'nope.toml'}: no such config file")
    ):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "address",
    ["localhost", "localhost:99999", ":9464", "localhost:http", "localhost:-1"],
)
def test_bad_metrics_address_is_rejected(tmp_path: Path, address: str) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: engine.metrics_address must be HOST:PORT with a port "
            f"from 0 to 65535, got {address!r}"
        ),
    ):
        load_config(write(tmp_path, f'[engine]\nmetrics_address = "{address}"\n'))


@pytest.mark.parametrize(
    "address",
    [
        "999.999.0.1:9464",
        "no such host:9464",
        "1:9464",
        "-bad.example:9464",
        "a..b:9464",
    ],
)
def test_metrics_address_that_cannot_be_a_host_is_rejected(
    tmp_path: Path, address: str
) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: engine.metrics_address must be HOST:PORT where HOST "
            f"is an IP address or a host name, got {address!r}"
        ),
    ):
        load_config(write(tmp_path, f'[engine]\nmetrics_address = "{address}"\n'))


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:9464",
        "0.0.0.0:0",
        "[::1]:65535",
        "localhost:80",
        "metrics.example.com:9464",
        "metrics_sidecar:9464",
    ],
)
def test_good_metrics_address_is_kept(tmp_path: Path, address: str) -> None:
    config = load_config(write(tmp_path, f'[engine]\nmetrics_address = "{address}"\n'))

    assert config.engine.metrics_address == address


def test_min_workers_above_max_workers_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: engine.min_workers (8) must not exceed max_workers (4)"
        ),
    ):
        load_config(write(tmp_path, "[engine]\nmin_workers = 8\nmax_workers = 4\n"))


@pytest.mark.parametrize(
    "text",
    [
        "workers = 2000\nmax_workers = 4096\n",
        "min_workers = 2000\nmax_workers = 4096\n",
        "workers = 3000\nmin_workers = 2000\nmax_workers = 4096\n",
    ],
)
def test_pool_knobs_valid_together_pass(tmp_path: Path, text: str) -> None:
    config = load_config(write(tmp_path, "[engine]\n" + text))
    engine = make_engine()

    apply_config(config, engine)

    assert engine.max_workers == 4096
    assert engine.min_workers <= engine.pool_size <= engine.max_workers


def test_workers_beyond_a_max_the_file_leaves_out_waits_for_the_code(
    tmp_path: Path,
) -> None:
    # The code may declare max_workers = 4096: only applying can tell.
    config = load_config(write(tmp_path, "[engine]\nworkers = 2000\n"))

    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: engine.workers (2000) must lie between min_workers (1) "
            "and max_workers (1024)"
        ),
    ):
        apply_config(config, make_engine())


def test_workers_beyond_the_max_the_file_sets_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: engine.workers (5000) must not exceed max_workers (4096)"
        ),
    ):
        load_config(write(tmp_path, "[engine]\nworkers = 5000\nmax_workers = 4096\n"))


def test_workers_below_the_min_the_file_sets_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: engine.workers (2) must not be below min_workers (8)"
        ),
    ):
        load_config(write(tmp_path, "[engine]\nworkers = 2\nmin_workers = 8\n"))


def test_max_workers_below_the_declared_min_is_rejected(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[engine]\nmax_workers = 4\n"))
    engine = make_engine()
    engine.configure(min_workers=8)

    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: engine.max_workers (4) must not be below min_workers (8)"
        ),
    ):
        apply_config(config, engine)


def test_every_problem_of_the_engine_table_is_listed(tmp_path: Path) -> None:
    text = (
        "[engine]\nworkers = 0\nmin_workers = 8\nmax_workers = 4\n"
        'control_period = "soon"\napp = "feeds"\n'
    )

    message = problem(tmp_path, text)

    assert message.startswith(f"{tmp_path / 'slapoll.toml'}: 4 problems:\n")
    assert "\n  - engine.control_period must be a duration" in message
    assert "\n  - engine.workers must be a whole number >= 1, got 0" in message
    assert "\n  - engine.min_workers (8) must not exceed max_workers (4)" in message
    assert "\n  - engine.app must be 'module:attribute'" in message


def test_zero_workers_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape("slapoll.toml: engine.workers must be a whole number >= 1"),
    ):
        load_config(write(tmp_path, "[engine]\nworkers = 0\n"))


def test_app_without_attribute_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: engine.app must be 'module:attribute' naming the "
            "Engine to run, such as 'feeds:engine', got 'feeds'"
        ),
    ):
        load_config(write(tmp_path, '[engine]\napp = "feeds"\n'))


def test_every_problem_in_a_file_is_listed(tmp_path: Path) -> None:
    message = problem(
        tmp_path,
        '[engine]\nworkers = "many"\nbogus = 1\n[tasks.feed]\nevery = "soon"\n',
    )

    assert message.startswith(f"{tmp_path / 'slapoll.toml'}: 3 problems:\n")
    assert "\n  - engine.workers must be an integer, got 'many'" in message
    assert "\n  - unknown key 'engine.bogus'" in message
    assert "\n  - tasks.feed.every must be a duration" in message


# -- limits -------------------------------------------------------------------

LIMITS = """
[limits.github]
rate = "5000/h"
burst = 100
concurrency = 8
window = "1h"
reset_format = "epoch"
backoff = "500ms"
max_backoff = "2m"
min_pause = "1s"
max_wait = "10m"
failure_threshold = 3
circuit_cooldown = "1m"
obey_quotas = false

[limits."github:{account}"]
rate = "10/s"
"""


def test_limits_tables_are_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, LIMITS))

    assert config.limits["github"].options() == {
        "rate": Rate(5000.0, 3600.0),
        "burst": 100,
        "concurrency": 8,
        "window": 3600.0,
        "reset_format": "epoch",
        "backoff": 0.5,
        "max_backoff": 120.0,
        "min_pause": 1.0,
        "max_wait": 600.0,
        "failure_threshold": 3,
        "circuit_cooldown": 60.0,
        "obey_quotas": False,
    }
    assert config.limits["github:{account}"] == LimitConfig(rate=Rate(10.0, 1.0))


def test_limit_config_has_every_limit_option() -> None:
    options = set(inspect.signature(LimitSpec.from_options).parameters)
    configurable = {f.name.removesuffix("_s") for f in attrs.fields(LimitConfig)}

    assert configurable == options


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'rate = "fast"',
            "limits.github.rate must be a rate such as '5000/h', '10/s', '100/m' "
            "or '1/30s', got 'fast'",
        ),
        (
            'rate = "5/fortnight"',
            "limits.github.rate must be a rate such as '5000/h', '10/s', '100/m' "
            "or '1/30s' (per s, m, h, d or a duration), got '5/fortnight'",
        ),
        ("rate = 0", "limits.github.rate must be a positive, finite rate, got 0"),
        (
            "rate = true",
            "limits.github.rate must be a rate such as '5000/h' or '10/s', got True",
        ),
        ("burst = 0", "limits.github.burst must be a whole number >= 1, got 0"),
        ('burst = "5"', "limits.github.burst must be an integer, got '5'"),
        (
            "concurrency = -1",
            "limits.github.concurrency must be a whole number >= 1, got -1",
        ),
        (
            'reset_format = "sometimes"',
            "limits.github.reset_format must be one of auto, epoch, delta, "
            "got 'sometimes'",
        ),
        ("window = 0", "limits.github.window must be greater than 0, got 0.0"),
        ("backoff = 0", "limits.github.backoff must be greater than 0, got 0.0"),
        (
            'max_wait = "soon"',
            "limits.github.max_wait must be a duration such as '250ms', '30s', "
            "'5m' or '1h', or a plain number of seconds, got 'soon'",
        ),
        (
            "failure_threshold = 0",
            "limits.github.failure_threshold must be a whole number >= 1, got 0",
        ),
        (
            'circuit_cooldown = "0s"',
            "limits.github.circuit_cooldown must be greater than 0, got 0.0",
        ),
        (
            'obey_quotas = "yes"',
            "limits.github.obey_quotas must be true or false, got 'yes'",
        ),
        (
            'backoff = "10s"\nmax_backoff = "5s"',
            "limits.github.backoff (10.0s) must not exceed max_backoff (5.0s)",
        ),
        (
            "rates = 5",
            "unknown key 'limits.github.rates' (did you mean 'rate'?); allowed in "
            "[limits.github]: rate, burst, concurrency, window, reset_format, "
            "backoff, max_backoff, min_pause, max_wait, failure_threshold, "
            "circuit_cooldown, obey_quotas",
        ),
    ],
)
def test_bad_limit_value_is_rejected(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"slapoll.toml: {message}")):
        load_config(write(tmp_path, f"[limits.github]\n{text}\n"))


def test_limits_must_be_tables(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape("slapoll.toml: limits must be a table of tables, got 3"),
    ):
        load_config(write(tmp_path, "limits = 3\n"))


def test_a_template_limit_is_named_by_its_quoted_key(tmp_path: Path) -> None:
    text = '[limits."github:{account}"]\nrate = "5000/hour"\nburst = 0\n'

    with pytest.raises(
        ConfigError,
        match=re.escape(
            'slapoll.toml: limits."github:{account}".burst must be a whole '
            "number >= 1, got 0"
        ),
    ):
        load_config(write(tmp_path, text))


def test_a_malformed_template_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: limits.\"github:{\": limit key template 'github:{' is "
            "not a valid template"
        ),
    ):
        load_config(write(tmp_path, '[limits."github:{"]\nrate = "1/s"\n'))


def test_every_problem_of_a_limits_table_is_listed(tmp_path: Path) -> None:
    text = '[limits.github]\nrate = "fast"\nburst = 0\nreset_format = "x"\n'

    message = problem(tmp_path, text)

    assert message.startswith(f"{tmp_path / 'slapoll.toml'}: 3 problems:\n")
    assert "\n  - limits.github.rate must be a rate" in message
    assert "\n  - limits.github.burst must be a whole number >= 1" in message
    assert "\n  - limits.github.reset_format must be one of" in message


def test_apply_config_declares_the_limits(tmp_path: Path) -> None:
    engine = make_engine()

    @engine.task(sla="1m")
    async def repos(ctx: slapoll.RunContext, account: str) -> None:
        """Poll one account's repositories."""

    uses = (
        '[tasks.feed]\nlimits = ["github"]\n'
        '[tasks.repos]\nlimits = ["github", "github:{account}"]\n'
    )

    apply_config(load_config(write(tmp_path, uses + LIMITS)), engine)

    limits = declared_limits(engine)
    assert limits["github"] == LimitSpec.from_options(
        rate="5000/h",
        burst=100,
        concurrency=8,
        window="1h",
        reset_format="epoch",
        backoff="500ms",
        max_backoff="2m",
        min_pause="1s",
        max_wait="10m",
        failure_threshold=3,
        circuit_cooldown="1m",
        obey_quotas=False,
    )
    assert limits["github:{account}"] == LimitSpec.from_options(rate="10/s")


def test_apply_config_keeps_the_limit_options_the_file_leaves_out(
    tmp_path: Path,
) -> None:
    engine = make_engine()
    engine.limit("github", rate="5000/h", burst=100)
    config = load_config(write(tmp_path, "[limits.github]\nconcurrency = 4\n"))

    apply_config(config, engine)

    assert declared_limits(engine)["github"] == LimitSpec.from_options(
        rate="5000/h", burst=100, concurrency=4
    )


def test_backoff_beyond_the_declared_max_backoff_is_rejected_when_applied(
    tmp_path: Path,
) -> None:
    config = load_config(write(tmp_path, '[limits.github]\nbackoff = "10m"\n'))
    engine = make_engine()
    engine.tasks["feed"].configure(limits=["github"])

    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: limits.github.backoff (600.0s) must not exceed "
            "max_backoff (300.0s)"
        ),
    ):
        apply_config(config, engine)

    assert declared_limits(engine) == {}


# -- applying ----------------------------------------------------------------


def test_apply_config_sets_engine_knobs_and_task_options(tmp_path: Path) -> None:
    engine = make_engine()
    text = FULL + '\n[tasks.digest]\nevery = "20s"\n'

    apply_config(load_config(write(tmp_path, text)), engine)

    assert (engine.pool_size, engine.min_workers, engine.max_workers) == (32, 2, 256)
    assert engine.control_period_s == 2.0
    assert engine.shutdown_grace_s == 10.0
    assert engine.metrics_address == "127.0.0.1:9464"
    assert engine.tasks["feed"].policy == TaskPolicy(
        sla_s=30.0,
        every_s=10.0,
        priority=2,
        limits=("github", "github:token-7"),
        timeout_s=5.0,
        retries=2,
        retry_backoff_s=0.5,
        phase_s=1.0,
    )
    assert engine.tasks["digest"].policy == TaskPolicy(sla_s=60.0, every_s=20.0)


def test_apply_config_keeps_what_the_file_leaves_out(tmp_path: Path) -> None:
    engine = make_engine()

    apply_config(load_config(write(tmp_path, "[tasks.feed]\npriority = 3\n")), engine)

    assert engine.tasks["feed"].policy == TaskPolicy(
        sla_s=30.0, every_s=10.0, priority=3
    )
    assert engine.pool_size == 32


def test_apply_config_keeps_zero_retries(tmp_path: Path) -> None:
    engine = make_engine()
    engine.tasks["feed"].configure(retries=3)

    apply_config(load_config(write(tmp_path, "[tasks.feed]\nretries = 0\n")), engine)

    assert engine.tasks["feed"].policy.retries == 0


def test_unknown_task_is_rejected_naming_the_known_ones(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[tasks.fead]\nsla = "30s"\n'))

    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: [tasks.fead] names a task the engine does not "
            "declare; known tasks: digest, feed"
        ),
    ):
        apply_config(config, make_engine())


def test_a_limits_table_nothing_uses_is_rejected_naming_the_known_keys(
    tmp_path: Path,
) -> None:
    """[limits.NAME] for a key no task lists and the code does not declare
    is a typo: it would change nothing, so it is an error, listed with the
    file's other problems."""
    engine = make_engine()
    engine.limit("github", rate="5000/h")
    engine.tasks["feed"].configure(limits=["api"])
    text = '[tasks.fead]\nsla = "30s"\n[limits.gihtub]\nrate = "1/s"\n'
    config = load_config(write(tmp_path, text))

    with pytest.raises(ConfigError) as caught:
        apply_config(config, engine)

    assert str(caught.value).endswith(
        "slapoll.toml: 2 problems:\n"
        "  - [tasks.fead] names a task the engine does not declare; "
        "known tasks: digest, feed\n"
        "  - [limits.gihtub] names a limit key that no task lists and the "
        "code does not declare; known keys: api, github"
    )
    assert declared_limits(engine).keys() == {"github"}


def test_every_longer_than_the_declared_sla_is_rejected(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[tasks.feed]\nevery = "1m"\n'))

    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: tasks.feed.every (60.0s) must not exceed sla (30.0s)"
        ),
    ):
        apply_config(config, make_engine())


def test_min_workers_above_the_declared_max_is_rejected(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[engine]\nmin_workers = 40\n"))
    engine = make_engine()
    engine.configure(max_workers=16)

    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: engine.min_workers (40) must not exceed max_workers (16)"
        ),
    ):
        apply_config(config, engine)


def test_a_malformed_template_in_a_task_is_rejected_when_read(
    tmp_path: Path,
) -> None:
    """A key no run could fill stops the file from loading, as `check` and
    `run` both load it."""
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: tasks.feed.limits: limit key template 'api:{tok' is "
            "not a valid template; write arguments as {name}, literal braces as "
            "{{ and }}"
        )
        + "$",
    ):
        load_config(write(tmp_path, '[tasks.feed]\nlimits = ["api:{tok"]\n'))


def test_templates_the_task_cannot_fill_are_listed_when_applied(
    tmp_path: Path,
) -> None:
    """A template naming what the function does not take, or what a target
    declared in code lacks, is a problem of the file; nothing changes."""
    engine = make_engine()

    @engine.task(sla="1m")
    async def repos(ctx: slapoll.RunContext, token: str, org: str = "") -> None:
        """Poll one token's repositories."""

    repos.add_target("r1", token="secret")
    text = (
        '[tasks.feed]\nlimits = ["gh:{account}"]\n'
        '[tasks.repos]\nlimits = ["gh:{org}"]\n'
    )
    config = load_config(write(tmp_path, text))

    with pytest.raises(ConfigError) as caught:
        apply_config(config, engine)

    assert str(caught.value).endswith(
        "slapoll.toml: 2 problems:\n"
        "  - tasks.feed.limits: limit key template 'gh:{account}' of task "
        "'feed' names the argument 'account', which its function does not "
        "take (it takes: url)\n"
        "  - tasks.repos.limits: limit key template 'gh:{org}' of task 'repos' "
        "needs the argument 'org', which target 'r1' does not have; its "
        "arguments are ['token']"
    )
    assert engine.tasks["feed"].policy.limits == ()
    assert repos.policy.limits == ()


def test_a_rejected_config_changes_nothing(tmp_path: Path) -> None:
    text = "[engine]\nworkers = 4\n[tasks.digest]\npriority = 9\n"
    text += '[tasks.feed]\nevery = "1m"\n[limits.github]\nrate = "1/s"\n'
    config = load_config(write(tmp_path, text))
    engine = make_engine()
    before = {name: task.policy for name, task in engine.tasks.items()}

    with pytest.raises(ConfigError):
        apply_config(config, engine)

    assert {name: task.policy for name, task in engine.tasks.items()} == before
    assert engine.pool_size == 32
    assert declared_limits(engine) == {}


# -- importing the app ----------------------------------------------------------

APP = """
import slapoll

engine = slapoll.Engine()
not_an_engine = 42


@engine.task(sla="30s")
async def feed(ctx):
    pass
"""


@pytest.mark.usefixtures("isolated_imports")
def test_load_engine_imports_the_app_next_to_the_config(tmp_path: Path) -> None:
    write(tmp_path, APP, name="nextdoor_app.py")
    config = load_config(write(tmp_path, '[engine]\napp = "nextdoor_app:engine"\n'))

    engine = load_engine(config)

    assert isinstance(engine, slapoll.Engine)
    assert set(engine.tasks) == {"feed"}


@pytest.mark.usefixtures("isolated_imports")
def test_load_engine_imports_the_app_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "cwd_pkg"
    package.mkdir()
    write(package, APP, name="app.py")
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    config = load_config(write(config_dir, '[engine]\napp = "cwd_pkg.app:engine"\n'))
    monkeypatch.chdir(tmp_path)

    engine = load_engine(config)

    assert set(engine.tasks) == {"feed"}


@pytest.mark.usefixtures("isolated_imports")
def test_load_engine_reports_a_missing_module(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[engine]\napp = "no_such_app:engine"\n'))

    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: engine.app = 'no_such_app:engine': no module "
            f"'no_such_app' in {tmp_path.resolve()} or {os.getcwd()}"
        )
        + "$",
    ):
        load_engine(config)


@pytest.mark.usefixtures("isolated_imports")
def test_missing_module_names_the_config_folder_once_when_run_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(write(tmp_path, '[engine]\napp = "no_such_app:engine"\n'))

    with pytest.raises(
        ConfigError,
        match=re.escape(f"no module 'no_such_app' in {tmp_path.resolve()}") + "$",
    ):
        load_engine(config)


@pytest.mark.usefixtures("isolated_imports")
def test_load_engine_reports_a_missing_import_inside_the_app(tmp_path: Path) -> None:
    write(tmp_path, "import no_such_dependency\n", name="broken_app.py")
    config = load_config(write(tmp_path, '[engine]\napp = "broken_app:engine"\n'))

    with pytest.raises(
        ConfigError,
        match=re.escape(
            "engine.app = 'broken_app:engine': importing 'broken_app' failed: "
            "No module named 'no_such_dependency'"
        ),
    ):
        load_engine(config)


@pytest.mark.usefixtures("isolated_imports")
def test_load_engine_shows_the_app_s_own_traceback(tmp_path: Path) -> None:
    """An app raising at import is the user's bug: they get its traceback,
    without the frames of slapoll and of the import machinery."""
    source = "import slapoll\n\nraise RuntimeError('no accounts')\n"
    app = write(tmp_path, source, name="raising_app.py")
    config = load_config(write(tmp_path, '[engine]\napp = "raising_app:engine"\n'))

    with pytest.raises(ConfigError) as caught:
        load_engine(config)

    assert str(caught.value) == (
        "importing app 'raising_app:engine' failed:\n"
        "Traceback (most recent call last):\n"
        f'  File "{app.resolve()}", line 3, in <module>\n'
        "    raise RuntimeError('no accounts')\n"
        "RuntimeError: no accounts"
    )
    assert isinstance(caught.value.__cause__, RuntimeError)


@pytest.mark.usefixtures("isolated_imports")
def test_load_engine_reports_a_missing_attribute(tmp_path: Path) -> None:
    write(tmp_path, APP, name="attr_app.py")
    config = load_config(write(tmp_path, '[engine]\napp = "attr_app:engin"\n'))

    with pytest.raises(
        ConfigError,
        match=re.escape(
            "slapoll.toml: engine.app = 'attr_app:engin': module 'attr_app' "
            "has no attribute 'engin'"
        ),
    ):
        load_engine(config)


@pytest.mark.usefixtures("isolated_imports")
def test_load_engine_rejects_something_that_is_not_an_engine(tmp_path: Path) -> None:
    write(tmp_path, APP, name="other_app.py")
    config = load_config(write(tmp_path, '[engine]\napp = "other_app:not_an_engine"\n'))

    with pytest.raises(
        ConfigError,
        match=re.escape(
            "engine.app = 'other_app:not_an_engine' must name a slapoll.Engine, "
            "got int 42"
        ),
    ):
        load_engine(config)


def test_load_engine_needs_an_app(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[engine]\nworkers = 3\n"))

    with pytest.raises(
        ConfigError,
        match=re.escape(
            'slapoll.toml: engine.app is not set; add app = "module:attribute"'
        ),
    ):
        load_engine(config)


@pytest.mark.usefixtures("isolated_imports")
def test_example_config_loads_and_applies() -> None:
    examples = Path(__file__).parent.parent / "examples"
    config = load_config(examples / "feeds.toml")

    engine = load_engine(config)
    apply_config(config, engine)

    assert set(engine.tasks) >= set(config.tasks)
