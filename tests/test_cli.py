"""Tests for the slapoll command line, through click's CliRunner."""

from __future__ import annotations

import logging
import socket
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from slapoll.cli import main
from slapoll.config import load_config

EXAMPLES = Path(__file__).parent.parent / "examples"

APP = """
import slapoll

engine = slapoll.Engine(workers=2)
runs = []


@engine.task(sla="1s", every="50ms", limits=["api"])
async def feed(ctx, url):
    runs.append(ctx.key)


@engine.task(sla="1m")
async def digest(ctx):
    pass


feed.add_target("a", url="https://a.example/feed")
feed.add_target("b", url="https://b.example/feed")
"""

CONFIG = """
[engine]
app = "{module}:engine"
workers = 3
max_workers = 8
metrics_address = "127.0.0.1:0"

[tasks.feed]
priority = 2
timeout = "500ms"
"""


@pytest.fixture
def isolated_imports() -> Iterator[None]:
    """Undo what loading an app adds to sys.path and sys.modules."""
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


@pytest.fixture
def config(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A good config next to its app module, named after the test."""
    module = f"app_{request.node.name}".replace("[", "_").replace("]", "_")
    (tmp_path / f"{module}.py").write_text(APP, encoding="utf-8")
    path = tmp_path / "slapoll.toml"
    path.write_text(CONFIG.format(module=module), encoding="utf-8")
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def app_module(config: Path) -> types.ModuleType:
    """The app module that *config* names, once a command has imported it."""
    app = load_config(config).engine.app
    assert app is not None
    return sys.modules[app.partition(":")[0]]


# -- check ------------------------------------------------------------------


@pytest.mark.usefixtures("isolated_imports")
def test_check_prints_what_would_run(config: Path) -> None:
    result = invoke("check", str(config))

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert f"config:  {config}" in lines
    assert "workers: 3 (between 1 and 8)" in lines
    assert "metrics: 127.0.0.1:0" in lines
    header = lines.index(
        "task    sla  every  prio  out       tries  lap    targets  limits"
    )
    assert lines[header - 1 : header + 3] == [
        "                          time-     re-    over-",
        "task    sla  every  prio  out       tries  lap    targets  limits",
        "feed    1s   50ms   2     500ms     0      skip   2        api",
        "digest  1m   auto   0     1m (sla)  0      skip   1        -",
    ]
    assert lines[-1] == "ok: 2 tasks, 3 targets declared in code"


@pytest.mark.usefixtures("isolated_imports")
def test_check_accepts_the_example_config() -> None:
    result = invoke("check", str(EXAMPLES / "feeds.toml"))

    assert result.exit_code == 0, result.output
    assert "poll_feed" in result.stdout
    assert result.stdout.rstrip().endswith("targets declared in code")


@pytest.mark.usefixtures("isolated_imports")
def test_check_bad_value_exits_1_with_the_message(config: Path) -> None:
    config.write_text(
        config.read_text() + 'every = "5s"\n',
        encoding="utf-8",
    )

    result = invoke("check", str(config))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"error: {config}: tasks.feed.every (5.0s) must not exceed sla (1.0s): "
        "a target polled less often than its SLA cannot stay fresh\n"
    )
    assert "Traceback" not in result.output


@pytest.mark.usefixtures("isolated_imports")
def test_check_unknown_task_exits_1(config: Path) -> None:
    config.write_text(config.read_text() + "[tasks.fed]\npriority = 1\n")

    result = invoke("check", str(config))

    assert result.exit_code == 1
    assert "[tasks.fed] names a task the engine does not declare; known tasks: " in (
        result.stderr
    )


def test_check_invalid_toml_exits_1_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[engine\n", encoding="utf-8")

    result = invoke("check", str(path))

    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {path}: invalid TOML: ")
    assert "(at line 1, column 8)" in result.stderr


def test_check_missing_file_exits_1(tmp_path: Path) -> None:
    result = invoke("check", str(tmp_path / "nope.toml"))

    assert result.exit_code == 1
    assert result.stderr == f"error: {tmp_path / 'nope.toml'}: no such config file\n"


def test_check_without_app_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "slapoll.toml"
    path.write_text("[engine]\nworkers = 2\n", encoding="utf-8")

    result = invoke("check", str(path))

    assert result.exit_code == 1
    assert "engine.app is not set" in result.stderr


# The README's tour and examples/feeds.py in one app, at a realistic scale:
# tasks with several limit keys, a default timeout, each overlap policy.
REALISTIC_APP = """
import slapoll

engine = slapoll.Engine(workers=32)
engine.limit("api", rate="5000/h", burst=100)
engine.limit("api:{token}", rate="60/m")
engine.limit("feeds", rate="30/m")


@engine.task(sla="30s", every="10s", priority=2, timeout="5s", retries=2,
             limits=["api", "api:{token}"])
async def feed(ctx, token):
    pass


@engine.task(sla="5m", every="1m", priority=1, timeout="10s", retries=1,
             limits=["feeds"], overlap="queue_one")
async def poll_feed(ctx, url):
    pass


@engine.task(sla="2m", every="30s", overlap="allow", max_concurrent=2)
async def check_status(ctx):
    pass


for i in range(3000):
    feed.add_target(f"user:{i}", token=f"token-{i % 400}")
for i in range(40):
    poll_feed.add_target(f"feed:{i}", url=f"https://feeds.example/{i}.xml")
"""


@pytest.mark.usefixtures("isolated_imports")
def test_check_output_fits_80_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "realistic_app.py").write_text(REALISTIC_APP, encoding="utf-8")
    (tmp_path / "slapoll.toml").write_text(
        '[engine]\napp = "realistic_app:engine"\n'
        '[tasks.feed]\nexpected_duration = "300ms"\n',
        encoding="utf-8",
    )
    # As it is usually run: from the config's folder, the path is short.
    monkeypatch.chdir(tmp_path)

    result = invoke("check", "slapoll.toml")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # Every value is whole: the task table shows each limit key in full.
    assert "api:{token}" in result.stdout
    assert "2m (sla)" in result.stdout
    assert "queue_one" in result.stdout
    assert [line for line in lines if len(line) > 80] == []


# -- run --------------------------------------------------------------------


@pytest.mark.usefixtures("isolated_imports")
def test_run_polls_until_the_duration_ends(config: Path) -> None:
    result = invoke("run", str(config), "--duration", "400ms")

    assert result.exit_code == 0, result.output
    module = app_module(config)
    assert set(module.runs) == {"a", "b"}
    assert module.engine.running is False
    assert module.engine.tasks["feed"].policy.priority == 2


@pytest.mark.usefixtures("isolated_imports")
def test_run_metrics_address_option_overrides_the_config(config: Path) -> None:
    result = invoke(
        "run", str(config), "--duration", "0s", "--metrics-address", "127.0.0.1:0"
    )

    assert result.exit_code == 0, result.output
    module = app_module(config)
    assert module.engine.metrics_address == "127.0.0.1:0"


def test_run_rejects_a_bad_metrics_address_option(config: Path) -> None:
    result = invoke("run", str(config), "--metrics-address", "localhost")

    assert result.exit_code == 2
    assert (
        "Invalid value for '--metrics-address': must be HOST:PORT with a port "
        "from 0 to 65535, got 'localhost'"
    ) in result.stderr


def test_run_bad_config_exits_2_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "slapoll.toml"
    path.write_text('[engine]\napp = "x:engine"\nworkers = "many"\n')

    result = invoke("run", str(path), "--duration", "0s")

    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {path}: engine.workers must be an integer, got 'many'\n"
    )


def test_run_duration_option_is_hidden() -> None:
    result = invoke("run", "--help")

    assert "--metrics-address" in result.stdout
    assert "--duration" not in result.stdout


# -- demo -------------------------------------------------------------------


@pytest.fixture
def demo_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """Stand in for slapoll.demo and record how run_demo is called."""
    calls: list[dict[str, object]] = []
    fake = types.ModuleType("slapoll.demo")

    async def run_demo(**kwargs: object) -> None:
        calls.append(kwargs)

    fake.run_demo = run_demo  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "slapoll.demo", fake)
    return calls


def test_demo_passes_its_options_to_run_demo(
    demo_calls: list[dict[str, object]],
) -> None:
    result = invoke(
        "demo",
        "--duration",
        "2m",
        "--metrics-address",
        "127.0.0.1:9464",
        "--targets",
        "10",
    )

    assert result.exit_code == 0, result.output
    assert demo_calls == [
        {"duration_s": 120.0, "metrics_address": "127.0.0.1:9464", "targets": 10}
    ]


def test_demo_defaults(demo_calls: list[dict[str, object]]) -> None:
    result = invoke("demo")

    assert result.exit_code == 0, result.output
    assert demo_calls == [
        {"duration_s": None, "metrics_address": "127.0.0.1:9464", "targets": 3000}
    ]


def test_demo_rejects_a_bad_duration(demo_calls: list[dict[str, object]]) -> None:
    result = invoke("demo", "--duration", "soon")

    assert result.exit_code == 2
    assert (
        "Invalid value for '--duration': must be a duration such as '250ms', "
        "'30s', '5m' or '1h', or a plain number of seconds, got 'soon'"
    ) in result.stderr
    assert demo_calls == []


def test_demo_rejects_zero_targets(demo_calls: list[dict[str, object]]) -> None:
    result = invoke("demo", "--targets", "0")

    assert result.exit_code == 2
    assert demo_calls == []


# -- check: the capacity plan -------------------------------------------------


@pytest.mark.usefixtures("isolated_imports")
def test_check_prints_the_capacity_plan_after_the_table(config: Path) -> None:
    config.write_text(config.read_text() + 'expected_duration = "100ms"\n')

    result = invoke("check", str(config))

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    start = lines.index("capacity plan, from the declared figures:")
    assert start > lines.index("")
    assert lines[start:] == [
        "capacity plan, from the declared figures:",
        "task    targets  duration  interval  sla-safe  sla kept",
        "feed    2        100ms     50ms      900ms     yes",
        "digest  1        ?         60s       60s       yes",
        "",
        "limit  budget     demand  at sla-safe  fits",
        "api    unlimited  40/s    2.222/s      yes",
        "",
        "workers needed: 5 (between 1 and 8)",
        "  Little's law: 4 busy on average, 5 with 25% headroom",
        "desired replicas: 1 (at most 8 workers per process)",
        "no expected_duration for digest: their runs count as instant;",
        "  set expected_duration in [tasks.NAME] for a truer plan",
        "plan: every SLA can be kept",
        "",
        "ok: 2 tasks, 3 targets declared in code",
    ]


@pytest.mark.usefixtures("isolated_imports")
def test_check_reports_a_budget_too_small_for_the_slas(config: Path) -> None:
    # At its 900 ms safe bound feed's 2 targets draw 2.222/s; 2/s is short
    # by 0.2222/s, 13.33 a minute.
    config.write_text(
        config.read_text()
        + 'expected_duration = "100ms"\n[limits.api]\nrate = "120/m"\n'
    )

    result = invoke("check", str(config))

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # The plan spends 97 % of the budget: 1.94/s, one run per 1.031 s each.
    assert "feed    2        100ms     1.031s    900ms     no: over budget" in lines
    assert "api    2/s     1.94/s  2.222/s      no: 13.33/m short" in lines
    assert "plan: SLA at risk for feed (api short by 13.33/m)" in lines


@pytest.mark.usefixtures("isolated_imports")
def test_check_rejects_a_bad_expected_duration(config: Path) -> None:
    config.write_text(config.read_text() + 'expected_duration = "soon"\n')

    result = invoke("check", str(config))

    assert result.exit_code == 1
    assert "tasks.feed.expected_duration must be a duration" in result.stderr


@pytest.mark.usefixtures("isolated_imports")
def test_check_plans_against_a_limit_declared_in_code(config: Path) -> None:
    # Runs count as instant: feed's 2 targets draw 2/s at the 1 s SLA; the
    # plan spends 97 % of the 1/s budget.
    for app in config.parent.glob("app_*.py"):
        app.write_text(APP + 'engine.limit("api", rate="1/s")\n')

    result = invoke("check", str(config))

    assert result.exit_code == 0, result.output
    assert "api    1/s     58.2/m  2/s          no: 1/s short" in result.stdout


TEMPLATE_APP = """
import slapoll

engine = slapoll.Engine()


@engine.task(sla="1m", every="10s", limits=["gh:{account}"])
async def repos(ctx, account, token):
    pass


for i, account in enumerate(["ann", "ann", "ann", "bob"]):
    repos.add_target(f"r{i}", account=account, token=f"secret-{i}")
"""


@pytest.fixture
def template_config(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A config whose app draws on the limit key template "gh:{account}"."""
    module = f"tapp_{request.node.name}".replace("[", "_").replace("]", "_")
    (tmp_path / f"{module}.py").write_text(TEMPLATE_APP, encoding="utf-8")
    path = tmp_path / "slapoll.toml"
    path.write_text(
        f'[engine]\napp = "{module}:engine"\n'
        '[tasks.repos]\nexpected_duration = "1s"\n'
        '[limits."gh:{account}"]\nrate = "10/m"\n',
        encoding="utf-8",
    )
    return path


@pytest.mark.usefixtures("isolated_imports")
def test_check_shows_a_template_budget_per_credential(template_config: Path) -> None:
    # ann's 3 targets draw 18/m every 10 s and 3.051/m at the 59 s safe
    # bound: within the 10/m each account has.
    result = invoke("check", str(template_config))

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[
        lines.index("per credential  budget  credentials  busiest  at sla-safe  fits")
        + 1
    ] == ("gh:{account}    10/m    2            18/m     3.051/m      yes")
    assert not any(line.startswith("limit ") for line in lines)
    assert "secret" not in result.stdout
    assert "ann" not in result.stdout


# `check` finds a problem in what would run: exit 1; `run` refuses to start
# on the same problem with the same message: exit 2.
COMMANDS = [("check", 1), ("run", 2)]


def invoke_refused(command: str, config: Path) -> Result:
    """Invoke *command* on *config*; should `run` start after all, it stops
    at once rather than run until the test times out."""
    if command == "run":
        return invoke("run", str(config), "--duration", "0s")
    return invoke(command, str(config))


@pytest.mark.usefixtures("isolated_imports")
@pytest.mark.parametrize(("command", "status"), COMMANDS)
def test_a_template_argument_a_target_lacks_is_refused(
    template_config: Path, command: str, status: int
) -> None:
    # The function takes org, but none of the targets declared in code
    # passes it: every run would fail to fill the key.
    for app in template_config.parent.glob("tapp_*.py"):
        app.write_text(
            TEMPLATE_APP.replace(
                "(ctx, account, token)", "(ctx, account, token, org='')"
            )
        )
    text = template_config.read_text().replace(
        "[tasks.repos]\n", '[tasks.repos]\nlimits = ["gh:{account}", "gh:{org}"]\n'
    )
    template_config.write_text(text, encoding="utf-8")

    result = invoke_refused(command, template_config)

    assert result.exit_code == status
    assert result.stderr == (
        f"error: {template_config}: tasks.repos.limits: limit key template "
        "'gh:{org}' of task 'repos' needs the argument 'org', which target 'r0' "
        "does not have; its arguments are ['account', 'token']\n"
    )


@pytest.mark.usefixtures("isolated_imports")
@pytest.mark.parametrize(("command", "status"), COMMANDS)
def test_a_malformed_template_in_the_config_is_refused(
    config: Path, command: str, status: int
) -> None:
    config.write_text(config.read_text() + 'limits = ["api:{tok"]\n')

    result = invoke_refused(command, config)

    assert result.exit_code == status
    assert result.stderr == (
        f"error: {config}: tasks.feed.limits: limit key template 'api:{{tok' "
        "is not a valid template; write arguments as {name}, literal braces "
        "as {{ and }}\n"
    )


@pytest.mark.usefixtures("isolated_imports")
@pytest.mark.parametrize(("command", "status"), COMMANDS)
def test_a_template_the_function_does_not_take_is_refused(
    config: Path, command: str, status: int
) -> None:
    # The decorator itself refuses it, so the error is the app's, shown
    # with the line of the app that declares the task.
    (app,) = config.parent.glob("app_*.py")
    app.write_text(APP.replace('limits=["api"]', 'limits=["api:{acct}"]'))

    result = invoke_refused(command, config)

    assert result.exit_code == status
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: importing app '{app.stem}:engine' failed:"
    assert lines[1:3] == [
        "Traceback (most recent call last):",
        f'  File "{app}", line 8, in <module>',
    ]
    assert lines[-1] == (
        "slapoll.errors.ConfigError: limit key template 'api:{acct}' of task "
        "'feed' names the argument 'acct', which its function does not take "
        "(it takes: url)"
    )


BROKEN_SYNTAX = """
import slapoll

engine = slapoll.Engine(
"""

RAISING_APP = """
import slapoll

engine = slapoll.Engine()


def load_accounts():
    raise RuntimeError("accounts.json is missing")


ACCOUNTS = load_accounts()
"""


def app_config(tmp_path: Path, module: str, source: str) -> Path:
    """A config naming *module*:engine, next to *module* holding *source*."""
    (tmp_path / f"{module}.py").write_text(source, encoding="utf-8")
    path = tmp_path / "slapoll.toml"
    path.write_text(f'[engine]\napp = "{module}:engine"\n', encoding="utf-8")
    return path


def frames(stderr: str) -> list[str]:
    """The 'File ...' lines of a traceback printed to *stderr*."""
    return [line for line in stderr.splitlines() if line.startswith("  File ")]


@pytest.mark.usefixtures("isolated_imports")
@pytest.mark.parametrize(("command", "status"), COMMANDS)
def test_an_app_with_a_syntax_error_shows_where(
    tmp_path: Path, command: str, status: int
) -> None:
    module = f"brokensyntax_{command}"
    path = app_config(tmp_path, module, BROKEN_SYNTAX)

    result = invoke_refused(command, path)

    assert result.exit_code == status
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: importing app '{module}:engine' failed:"
    assert frames(result.stderr) == [f'  File "{tmp_path / module}.py", line 4']
    assert lines[-1] == "SyntaxError: '(' was never closed"


@pytest.mark.usefixtures("isolated_imports")
@pytest.mark.parametrize(("command", "status"), COMMANDS)
def test_an_app_raising_at_import_shows_its_own_frames_only(
    tmp_path: Path, command: str, status: int
) -> None:
    module = f"raisingapp_{command}"
    path = app_config(tmp_path, module, RAISING_APP)

    result = invoke_refused(command, path)

    assert result.exit_code == status
    lines = result.stderr.splitlines()
    assert lines[:2] == [
        f"error: importing app '{module}:engine' failed:",
        "Traceback (most recent call last):",
    ]
    # Nothing of click, slapoll or importlib: only the user's module.
    app = tmp_path / f"{module}.py"
    assert frames(result.stderr) == [
        f'  File "{app}", line 11, in <module>',
        f'  File "{app}", line 8, in load_accounts',
    ]
    assert lines[-1] == "RuntimeError: accounts.json is missing"


def test_check_directory_exits_1(tmp_path: Path) -> None:
    result = invoke("check", str(tmp_path))

    assert result.exit_code == 1
    assert result.stderr == f"error: {tmp_path}: is a directory, not a config file\n"


def test_run_directory_exits_2(tmp_path: Path) -> None:
    result = invoke("run", str(tmp_path))

    assert result.exit_code == 2
    assert result.stderr == f"error: {tmp_path}: is a directory, not a config file\n"


# -- the metrics address ------------------------------------------------------


@pytest.fixture
def busy_address() -> Iterator[str]:
    """HOST:PORT of a port something else listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def in_use(address: str) -> str:
    return (
        f"error: metrics address {address} is already in use (Address already in "
        "use); serve metrics elsewhere with --metrics-address HOST:PORT\n"
    )


@pytest.mark.usefixtures("isolated_imports")
def test_run_on_a_busy_metrics_port_exits_2_in_one_line(
    config: Path, busy_address: str
) -> None:
    result = invoke(
        "run", str(config), "--duration", "0s", "--metrics-address", busy_address
    )

    assert result.exit_code == 2
    assert result.stderr == in_use(busy_address)
    assert app_module(config).runs == []


@pytest.mark.usefixtures("isolated_imports")
def test_run_on_a_busy_port_from_the_config_exits_2(
    config: Path, busy_address: str
) -> None:
    config.write_text(
        config.read_text().replace("127.0.0.1:0", busy_address), encoding="utf-8"
    )

    result = invoke("run", str(config), "--duration", "0s")

    assert result.exit_code == 2
    assert result.stderr == in_use(busy_address)


def test_demo_on_a_busy_metrics_port_exits_2_in_one_line(
    demo_calls: list[dict[str, object]], busy_address: str
) -> None:
    result = invoke("demo", "--metrics-address", busy_address)

    assert result.exit_code == 2
    assert result.stderr == in_use(busy_address)
    assert demo_calls == []


@pytest.fixture
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every host name fail to resolve, as one that does not exist."""

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


UNRESOLVED = (
    "error: metrics address nosuchhost.invalid:9464 cannot be resolved "
    "(Name or service not known)\n"
)


@pytest.mark.usefixtures("isolated_imports", "no_dns")
def test_run_with_a_metrics_host_that_does_not_resolve_exits_2(config: Path) -> None:
    result = invoke(
        "run",
        str(config),
        "--duration",
        "0s",
        "--metrics-address",
        "nosuchhost.invalid:9464",
    )

    assert result.exit_code == 2
    assert result.stderr == UNRESOLVED


@pytest.mark.usefixtures("no_dns")
def test_demo_with_a_metrics_host_that_does_not_resolve_exits_2(
    demo_calls: list[dict[str, object]],
) -> None:
    result = invoke("demo", "--metrics-address", "nosuchhost.invalid:9464")

    assert result.exit_code == 2
    assert result.stderr == UNRESOLVED
    assert demo_calls == []


@pytest.mark.usefixtures("isolated_imports", "no_dns")
def test_check_with_a_metrics_host_that_does_not_resolve_exits_1(
    config: Path,
) -> None:
    config.write_text(
        config.read_text().replace("127.0.0.1:0", "nosuchhost.invalid:9464"),
        encoding="utf-8",
    )

    result = invoke("check", str(config))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == UNRESOLVED


@pytest.mark.usefixtures("isolated_imports")
def test_check_does_not_mind_a_busy_metrics_port(
    config: Path, busy_address: str
) -> None:
    # The engine being checked may be the one listening there.
    config.write_text(
        config.read_text().replace("127.0.0.1:0", busy_address), encoding="utf-8"
    )

    result = invoke("check", str(config))

    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("host", ["999.999.0.1", "no such host"])
def test_check_with_a_metrics_host_that_cannot_be_one_exits_1(
    config: Path, host: str
) -> None:
    config.write_text(
        config.read_text().replace("127.0.0.1:0", f"{host}:9464"), encoding="utf-8"
    )

    result = invoke("check", str(config))

    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {config}: engine.metrics_address must be HOST:PORT where HOST "
        f"is an IP address or a host name, got '{host}:9464'\n"
    )


@pytest.mark.parametrize("command", ["run", "demo"])
def test_metrics_address_option_that_cannot_be_one_is_a_usage_error(
    config: Path, command: str
) -> None:
    args = [command, str(config)] if command == "run" else [command]

    result = invoke(*args, "--metrics-address", "999.999.0.1:9464")

    assert result.exit_code == 2
    assert (
        "Invalid value for '--metrics-address': must be HOST:PORT where HOST is "
        "an IP address or a host name, got '999.999.0.1:9464'"
    ) in result.stderr


@pytest.mark.usefixtures("isolated_imports")
def test_run_serves_metrics_where_the_code_says_when_the_config_is_silent(
    config: Path,
) -> None:
    module = load_config(config).engine.app or ""
    app = config.parent / f"{module.partition(':')[0]}.py"
    app.write_text(
        APP.replace(
            "slapoll.Engine(workers=2)",
            'slapoll.Engine(workers=2, metrics_address="127.0.0.1:0")',
        )
    )
    config.write_text(config.read_text().replace('metrics_address = "127.0.0.1:0"', ""))

    result = invoke("run", str(config), "--duration", "0s")

    assert result.exit_code == 0, result.output
    assert app_module(config).engine.metrics_address == "127.0.0.1:0"


# -- logging ------------------------------------------------------------------

HTTP_APP = """
import httpx
import slapoll

engine = slapoll.Engine(
    workers=2,
    http_transport=httpx.MockTransport(lambda request: httpx.Response(200)),
)


@engine.task(sla="1s", every="50ms")
async def feed(ctx):
    await ctx.http.get("https://api.example/feed?token=s3cret")
"""


@pytest.fixture
def http_config(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A config whose app sends requests with a token in the URL; the
    levels of httpx's loggers are put back afterwards."""
    module = f"happ_{request.node.name}".replace("[", "_").replace("]", "_")
    (tmp_path / f"{module}.py").write_text(HTTP_APP, encoding="utf-8")
    path = tmp_path / "slapoll.toml"
    path.write_text(
        f'[engine]\napp = "{module}:engine"\nmetrics_address = "127.0.0.1:0"\n',
        encoding="utf-8",
    )
    loggers = [logging.getLogger(name) for name in ("httpx", "httpcore")]
    levels = [logger.level for logger in loggers]
    yield path
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@pytest.mark.usefixtures("isolated_imports")
def test_run_keeps_request_urls_out_of_the_log_at_info(
    http_config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    result = invoke("run", str(http_config), "--duration", "300ms")

    assert result.exit_code == 0, result.output
    assert "engine started" in caplog.text
    assert "s3cret" not in caplog.text
    assert "s3cret" not in result.output


@pytest.mark.usefixtures("isolated_imports")
def test_run_logs_request_urls_at_debug(
    http_config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    result = invoke(
        "run", str(http_config), "--duration", "300ms", "--log-level", "debug"
    )

    assert result.exit_code == 0, result.output
    assert "GET https://api.example/feed?token=s3cret" in caplog.text
