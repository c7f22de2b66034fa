"""The operators' view: the Grafana dashboard and the Prometheus rules.

Static checks read ``grafana/`` as files: the dashboard against Grafana's
schema types (grafana-foundation-sdk) and its own structure, the rules with
``promtool check`` and ``promtool test``. The live checks run a real engine
on loopback with failing, slow and timing-out targets, scrape it with a real
Prometheus every second, and evaluate every panel query and every recording
rule through Prometheus's HTTP API.

promtool and prometheus come from Debian's ``prometheus`` package; the
session fixture installs it when missing. Under CI a missing binary after
that attempt fails the tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import slapoll

GRAFANA = Path(__file__).resolve().parent.parent / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "slapoll.json"
DATASOURCE = GRAFANA / "provisioning" / "datasources" / "slapoll.yaml"
PROVIDER = GRAFANA / "provisioning" / "dashboards" / "slapoll.yaml"
RULES = GRAFANA / "prometheus" / "slapoll.rules.yml"
RULE_TESTS = GRAFANA / "prometheus" / "slapoll.rules.test.yml"
SCRAPE = GRAFANA / "prometheus" / "scrape.yml"

# Metrics whose names are fixed but which the engine does not export yet.
# Panels and rules may use them; a live query that reads only these may come
# back empty and is reported as pending. Once the engine exports one, its
# queries must return data. Empty today: the engine exports every name.
COMING_SOON: frozenset[str] = frozenset()

# Metric families the engine exports that neither the dashboard nor the
# rules use, each with the reason.
NOT_CHARTED: dict[str, str] = {
    "slapoll_header_warnings": (
        "rate headers the engine could not read or had to clamp; a debugging "
        "aid for one misbehaving API, whose WARNING log line names the header"
    ),
}

# What Grafana would put in place of its variables, for a live query:
# every task and key, a rate interval of ten 1 s scrapes, a range that
# covers the whole live run.
GRAFANA_VARIABLES = {
    "$__rate_interval": "10s",
    "$__interval": "2s",
    "$__range": "1m",
    "$task": ".*",
    "$key": ".*",
}

# The live run scrapes and evaluates every second; the fixture waits at most
# this long for the engine's violations to show up in Prometheus.
LIVE_SCRAPE_S = 1
LIVE_SETTLE_TIMEOUT_S = 25.0
# The engine thread stops by itself after this long even if teardown never
# comes (a crashed session), so no run outlives the test module for long.
LIVE_ENGINE_CAP_S = 40.0
# Fast-burn and few-targets alerts need this many active targets per task.
BURN_GUARD_TARGETS = 5

_APT_TIMEOUT_S = 600
_METRIC_NAME = re.compile(r"(?<![\w:])slapoll_[a-z0-9_]+")
_LABEL_VALUES = re.compile(r"label_values\((\w+),\s*(\w+)\)")


# -- the dashboard as files ---------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in panels(dashboard) if p["type"] != "row"]


def provisioned_datasource_uid() -> str:
    match = re.search(r"^\s+uid:\s*(\S+)\s*$", DATASOURCE.read_text(), re.MULTILINE)
    assert match, f"{DATASOURCE} has no datasource uid"
    return match.group(1)


def metric_names(text: str) -> set[str]:
    """``slapoll_*`` names in PromQL or YAML text, skipping recorded names."""
    return set(_METRIC_NAME.findall(text))


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in query_panels(dashboard) for t in p["targets"]]
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]
        exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_dashboard_round_trips_through_grafanas_schema_types() -> None:
    """Grafana's generated types keep every field: no unknown or misplaced key."""
    sdk = foundation_sdk()
    dashboard = load_dashboard()

    model = sdk.Dashboard.from_json(dashboard)
    encoded = json.loads(json.dumps(model, cls=sdk.JSONEncoder))

    assert dropped_fields(dashboard, encoded) == []
    for panel in query_panels(dashboard):
        assert sdk.panelcfg_config(panel["type"]) is not None, panel["title"]


def test_dashboard_panels_have_ids_positions_and_queries() -> None:
    """Unique ids, non-overlapping places on the grid, queries on our datasource."""
    dashboard = load_dashboard()
    uid = provisioned_datasource_uid()

    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert min(grid["w"], grid["h"]) > 0, panel["title"]
        assert min(grid["x"], grid["y"]) >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']!r} overlaps another panel"
        cells |= area

    for panel in query_panels(dashboard):
        assert panel["title"], panel["id"]
        assert panel["description"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == {"type": "prometheus", "uid": uid}


def test_dashboard_filters_every_task_panel_by_the_task_variable() -> None:
    """A multi-value ``task`` variable exists and every per-task query uses it."""
    dashboard = load_dashboard()
    uid = provisioned_datasource_uid()

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    task = variables["task"]
    assert task["type"] == "query"
    assert task["datasource"]["uid"] == uid
    assert task["multi"]
    assert task["includeAll"]
    assert task["allValue"] == ".*"
    assert "label_values(slapoll_targets, task)" in json.dumps(task["query"])

    for panel in query_panels(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            for selector in re.findall(r"slapoll_\w+\{[^}]*\}", expr):
                assert re.search(r'(task|key)=~"\$(task|key)"', selector), expr
            if "by (task" in expr:
                assert '$task"' in expr, expr


def test_provisioning_loads_the_dashboard_folder_with_its_datasource() -> None:
    """The provider reads where the README mounts the dashboards; uids agree."""
    provider = PROVIDER.read_text()
    readme = (GRAFANA / "README.md").read_text()

    path = re.search(r"^\s+path:\s*(\S+)\s*$", provider, re.MULTILINE)
    assert path, f"{PROVIDER} has no dashboards path"
    assert path.group(1) in readme
    assert provisioned_datasource_uid() == "slapoll-prometheus"
    assert load_dashboard()["uid"] == "slapoll"


# -- the rules with promtool ---------------------------------------------------


def test_rules_and_scrape_config_pass_promtool_check(
    prometheus_binaries: dict[str, str],
) -> None:
    """``promtool check rules`` and ``check config`` accept what we ship."""
    promtool = prometheus_binaries["promtool"]

    rules = run_tool([promtool, "check", "rules", str(RULES)])
    config = run_tool([promtool, "check", "config", str(SCRAPE)])

    assert "SUCCESS" in rules
    assert "SUCCESS" in config


def test_alerts_fire_and_stay_quiet_as_the_rule_unit_tests_expect(
    prometheus_binaries: dict[str, str],
) -> None:
    """``promtool test rules``: each must-fire alert fires, each must-not does not."""
    promtool = prometheus_binaries["promtool"]

    output = run_tool([promtool, "test", "rules", str(RULE_TESTS)])

    assert "SUCCESS" in output


# -- against a live engine ------------------------------------------------------


def test_every_panel_query_returns_data_from_a_live_engine(live: LiveRun) -> None:
    """Panel and variable queries return series, unless all they read is unexported."""
    exposed = live.sample_names()
    pending: list[str] = []
    empty: list[str] = []

    for label, expr in live_queries(load_dashboard()):
        if live.query(expr):
            continue
        names = metric_names(expr)
        if names and not names & exposed and names <= COMING_SOON:
            pending.append(f"{label}: {expr}")
        else:
            empty.append(f"{label}: {expr}")

    assert empty == []
    if pending:
        warnings.warn(
            "panels pending until the engine exports their metrics:\n"
            + "\n".join(pending),
            stacklevel=1,
        )


def live_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every query, with Grafana's variables filled in.

    A ``label_values(metric, label)`` variable becomes the query Grafana's
    label-values lookup amounts to: ``group by (label) (metric)``.
    """
    queries = [
        (f"{panel['title']} [{target['refId']}]", target["expr"])
        for panel in query_panels(dashboard)
        for target in panel["targets"]
    ]
    for variable in dashboard["templating"]["list"]:
        match = _LABEL_VALUES.fullmatch(variable["query"]["query"])
        assert match, f"variable {variable['name']!r} is not a label_values query"
        metric, label = match.groups()
        queries.append((f"${variable['name']}", f"group by ({label}) ({metric})"))
    return [(where, substitute_grafana_variables(q)) for where, q in queries]


def test_every_recording_rule_returns_data_from_a_live_engine(
    live: LiveRun,
) -> None:
    """Prometheus loaded every rule without error; every recorded series exists."""
    rules = live.rules()
    recorded = [r["name"] for r in rules if r["type"] == "recording"]

    assert [r["name"] for r in rules if r["health"] != "ok"] == []
    assert len(recorded) == RULES.read_text().count("- record:")
    assert [name for name in recorded if not live.query(name)] == []


def test_live_violations_show_in_attainment_and_trip_alerts(live: LiveRun) -> None:
    """Stale targets lower the feed task's attainment and start its alerts."""
    attainment = {
        s["metric"]["task"]: float(s["value"][1])
        for s in live.query("task:slapoll_sla_attainment:ratio_rate5m")
    }
    violating = live.query(
        'max_over_time(slapoll_targets_violating{task="feed"}[1m]) > 0'
    )
    alerts = {
        (s["metric"]["alertname"], s["metric"]["task"])
        for s in live.query("ALERTS")
        if "task" in s["metric"]
    }

    assert violating
    assert attainment["feed"] < 0.9
    assert attainment["profile"] > attainment["feed"]
    assert ("SlapollRunsTimingOut", "feed") in alerts
    assert ("SlapollSLABudgetBurnFast", "feed") in alerts
    assert ("SlapollSLABudgetBurnFast", "profile") not in alerts


def test_dashboard_and_rules_use_only_exported_or_announced_metrics(
    live: LiveRun,
) -> None:
    """A metric name in the dashboard or rules exists or is one of COMING_SOON."""
    used = used_metric_names()

    unknown = used - live.sample_names() - COMING_SOON

    assert unknown == set()
    assert used >= COMING_SOON


def test_every_exported_metric_is_charted_or_listed(live: LiveRun) -> None:
    """Each ``slapoll_*`` family the engine exports is used, or NOT_CHARTED says why."""
    used = used_metric_names()
    families = live.families()

    uncharted = {
        family
        for family, samples in families.items()
        if not samples & used and family not in NOT_CHARTED
    }

    assert uncharted == set()
    assert set(NOT_CHARTED) <= set(families)


def used_metric_names() -> set[str]:
    dashboard = "\n".join(dashboard_exprs(load_dashboard()))
    return metric_names(dashboard) | metric_names(RULES.read_text())


def substitute_grafana_variables(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"a Grafana variable has no live value: {expr}"
    return expr


# -- the live run ----------------------------------------------------------------


class LiveRun:
    """A Prometheus scraping a running engine; queries go through its API."""

    def __init__(self, prometheus_url: str, metrics_url: str) -> None:
        self.prometheus_url = prometheus_url
        self.metrics_url = metrics_url
        # One client: building one per request costs more than the query.
        self.http = httpx.Client(timeout=10)

    def ready(self) -> bool:
        return self.http.get(self.prometheus_url + "/-/ready").status_code == 200

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = self._get("/api/v1/query", {"query": expr})
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def rules(self) -> list[dict[str, Any]]:
        groups = self._get("/api/v1/rules", {})["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def exposition(self) -> str:
        return self.http.get(self.metrics_url).text

    def families(self) -> dict[str, set[str]]:
        """Sample names of each exported ``slapoll_*`` family that has samples."""
        families: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(self.exposition()):
            names = {sample.name for sample in family.samples}
            if family.name.startswith("slapoll_") and names:
                families[family.name] = names
        return families

    def sample_names(self) -> set[str]:
        return set().union(*self.families().values())

    def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        response = self.http.get(self.prometheus_url + path, params=params)
        body: dict[str, Any] = response.json()
        assert body["status"] == "success", body
        return body


@pytest.fixture(scope="module")
def live(
    prometheus_binaries: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveRun]:
    """An engine with violations, scraped by Prometheus until the module ends."""
    tmp = tmp_path_factory.mktemp("prometheus")
    metrics_port, prometheus_port = free_port(), free_port()
    run = LiveRun(
        f"http://127.0.0.1:{prometheus_port}", f"http://127.0.0.1:{metrics_port}/"
    )
    config = tmp / "prometheus.yml"
    config.write_text(live_prometheus_config(f"127.0.0.1:{metrics_port}"))
    run_tool([prometheus_binaries["promtool"], "check", "config", str(config)])

    with (
        run.http,
        open_prometheus(
            prometheus_binaries["prometheus"], config, tmp, prometheus_port
        ) as log,
    ):
        wait_until(lambda: run.ready(), "Prometheus to become ready", log)
        with open_engine(metrics_port):
            wait_until(lambda: live_run_settled(run), "violations to show", log)
            yield run


def live_prometheus_config(target: str) -> str:
    """The shipped scrape.yml, scraping *target* every second."""
    text = SCRAPE.read_text()
    replacements = {
        "localhost:9464": target,
        "scrape_interval: 15s": f"scrape_interval: {LIVE_SCRAPE_S}s",
        "evaluation_interval: 15s": f"evaluation_interval: {LIVE_SCRAPE_S}s",
        "- slapoll.rules.yml": f"- {RULES}",
    }
    for old, new in replacements.items():
        assert old in text, f"{SCRAPE} no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def live_run_settled(run: LiveRun) -> bool:
    """True once a minute's worth of checks would find what they look for."""
    alerts = {s["metric"]["alertname"] for s in run.query('ALERTS{task="feed"}')}
    scrapes = run.query("count_over_time(slapoll_pool_size[1m]) >= 8")
    return (
        bool(scrapes)
        and {
            "SlapollRunsTimingOut",
            "SlapollSLABudgetBurnFast",
        }
        <= alerts
    )


def live_upstream(request: httpx.Request) -> httpx.Response:
    """The API the live engine polls, in process: what each user gets.

    user:0 answers 304 once it has an ETag, user:3 answers 500, and the
    partner API answers 429 with a long Retry-After, so every HTTP series
    (status classes, 304s, 429s, a paused key) has data.
    """
    if request.url.host == "partner.test":
        return httpx.Response(429, headers={"Retry-After": "600"})
    # Rate headers on every answer, as GitHub-style APIs send them.
    headers = {
        "ETag": '"v1"',
        "X-RateLimit-Limit": "3000",
        "X-RateLimit-Remaining": "2999",
        "X-RateLimit-Reset": "60",
    }
    n = int(request.url.path.rsplit("/", 1)[-1])
    if n == 3:
        return httpx.Response(500, headers=headers)
    if n == 0 and request.headers.get("If-None-Match") == '"v1"':
        return httpx.Response(304, headers=headers)
    return httpx.Response(200, headers=headers, json={"user": n})


def declare_live_tasks(engine: slapoll.Engine) -> None:
    """A feed task with failing, hanging and flaky targets; a healthy profile
    task; a partner task whose API keeps its key paused.

    feed (SLA 2 s, every 1 s, timeout 1 s) polls through ctx.http on the
    "api" key: user:0-2 answer at once, user:3 gets a 500, user:4 always
    hangs past the timeout, user:5 hangs on every third run. profile (SLA
    5 s) has two healthy targets: it stays under the burn-rate guard of 5
    targets and within its SLA. partner's one target is answered 429.
    """
    attempts: dict[int, int] = {}
    engine.limit("api", rate="50/s", burst=10)

    @engine.task(sla="2s", every="1s", timeout="1s", limits=["api"])
    async def feed(ctx: slapoll.RunContext, n: int) -> None:
        attempts[n] = attempts.get(n, 0) + 1
        if n == 4 or (n == 5 and attempts[n] % 3 == 0):
            await trio.sleep(5)
        response = await ctx.http.get(f"http://api.test/users/{n}")
        if response.status_code >= 400:
            raise RuntimeError(f"the upstream answered {response.status_code}")

    @engine.task(sla="5s", every="2s")
    async def profile(ctx: slapoll.RunContext, n: int) -> None:
        await trio.sleep(0.05)

    @engine.task(sla="30s", every="5s", limits=["partner"])
    async def partner(ctx: slapoll.RunContext) -> None:
        await ctx.http.get("http://partner.test/status")

    for n in range(6):
        feed.add_target(f"user:{n}", n=n)
    for n in range(2):
        profile.add_target(f"user:{n}", n=n)
    assert len(feed) >= BURN_GUARD_TARGETS > len(profile)


@contextmanager
def open_engine(metrics_port: int) -> Iterator[slapoll.Engine]:
    """Run a real engine in a thread, on its own ``trio.run``, while inside."""
    engine = slapoll.Engine(
        metrics_address=f"127.0.0.1:{metrics_port}",
        workers=8,
        shutdown_grace="1s",
        http_transport=httpx.MockTransport(live_upstream),
    )
    declare_live_tasks(engine)
    stop = threading.Event()
    errors: list[BaseException] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.run)
            with trio.move_on_after(LIVE_ENGINE_CAP_S):
                await trio.to_thread.run_sync(stop.wait, abandon_on_cancel=True)
            engine.stop()

    def thread_main() -> None:
        try:
            trio.run(main)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=thread_main, name="live-engine", daemon=True)
    thread.start()
    try:
        yield engine
    finally:
        stop.set()
        thread.join(timeout=LIVE_ENGINE_CAP_S)
    assert not thread.is_alive(), "the live engine did not stop"
    if errors:
        raise errors[0]


@contextmanager
def open_prometheus(binary: str, config: Path, tmp: Path, port: int) -> Iterator[Path]:
    """Run Prometheus on loopback while inside; yields its log file."""
    log_path = tmp / "prometheus.log"
    args = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(condition: Callable[[], bool], what: str, log: Path) -> None:
    """Poll *condition* until true or LIVE_SETTLE_TIMEOUT_S passes.

    Prometheus and the engine's scrapes are other processes and threads:
    there is no event to wait on, so this polls.
    """
    deadline = time.monotonic() + LIVE_SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:]
    pytest.fail(f"timed out waiting for {what}; Prometheus log:\n{tail}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_tool(args: list[str]) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{output}"
    return output


# -- grafana-foundation-sdk -------------------------------------------------------


class _FoundationSdk:
    def __init__(self) -> None:
        from grafana_foundation_sdk.cog import plugins, runtime
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.models.dashboard import Dashboard

        plugins.register_default_plugins()
        self.Dashboard = Dashboard
        self.JSONEncoder = JSONEncoder
        self.panelcfg_config = runtime.panelcfg_config


def foundation_sdk() -> _FoundationSdk:
    try:
        return _FoundationSdk()
    except ImportError:
        reason = "grafana-foundation-sdk is not installed (a test dependency)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def dropped_fields(original: Any, encoded: Any, path: str = "") -> list[str]:
    """Paths in *original* that the schema round trip lost or changed."""
    if isinstance(original, dict):
        if not isinstance(encoded, dict):
            return [path]
        lost = [f"{path}/{key}" for key in original if key not in encoded]
        for key in original.keys() & encoded.keys():
            lost += dropped_fields(original[key], encoded[key], f"{path}/{key}")
        return lost
    if isinstance(original, list):
        if not isinstance(encoded, list) or len(original) != len(encoded):
            return [path]
        lost = []
        for i, (a, b) in enumerate(zip(original, encoded, strict=True)):
            lost += dropped_fields(a, b, f"{path}[{i}]")
        return lost
    return [] if original == encoded else [path]


# -- promtool and prometheus from Debian -----------------------------------------

_PROMETHEUS_PORT = 9090


@pytest.fixture(scope="session")
def prometheus_binaries() -> dict[str, str]:
    """Paths of promtool and prometheus, installed from Debian if missing."""
    found = _which_prometheus()
    if found is None:
        _apt_install_prometheus()
        found = _which_prometheus()
    if found is None:
        reason = "promtool and prometheus are missing after apt-get install"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def _which_prometheus() -> dict[str, str] | None:
    paths = {name: shutil.which(name) for name in ("promtool", "prometheus")}
    if None in paths.values():
        return None
    return {name: path for name, path in paths.items() if path}


def _apt_install_prometheus() -> None:
    """``apt-get install prometheus``, leaving no Prometheus service behind.

    Without recommends, so node-exporter does not come along. Package
    scripts may start the Debian service on port 9090 where an init system
    lets them; one that was not listening before the install is stopped.
    """
    if shutil.which("apt-get") is None:
        return
    listening_before = _listening(_PROMETHEUS_PORT)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Another session's apt-get may hold the lock: wait for it, not fail.
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-qq"]
    install = ["install", "-y", "--no-install-recommends", "prometheus"]
    for args in ([*apt, "update"], [*apt, *install]):
        subprocess.run(args, env=env, capture_output=True, timeout=_APT_TIMEOUT_S)

    if _listening(_PROMETHEUS_PORT) and not listening_before:
        if shutil.which("service"):
            stop = ["service", "prometheus", "stop"]
        else:
            stop = ["/etc/init.d/prometheus", "stop"]
        subprocess.run(stop, capture_output=True, timeout=60, check=False)
        assert not _listening(_PROMETHEUS_PORT), (
            "the Debian prometheus service started on port 9090 and could not "
            "be stopped; stop it before running the tests"
        )


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0
