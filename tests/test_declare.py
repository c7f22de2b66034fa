"""Declaring tasks and targets: mistakes fail at once, naming what is wrong."""

from __future__ import annotations

import pytest

import slapoll
from slapoll import ConfigError, RunContext


def test_a_plain_function_is_rejected() -> None:
    """A task must be async: a plain def would fail on every run."""
    engine = slapoll.Engine()

    def poll(ctx: RunContext) -> None:
        pass

    with pytest.raises(ConfigError, match="must be an async function"):
        engine.task(sla="30s")(poll)  # type: ignore[arg-type]


def test_a_function_without_the_context_is_rejected() -> None:
    """The run context is the first argument."""
    engine = slapoll.Engine()

    async def poll() -> None:
        pass

    with pytest.raises(ConfigError, match=r"run context as its first argument"):
        engine.task(sla="30s")(poll)


def test_an_object_with_an_async_call_is_a_task() -> None:
    """Callable objects whose __call__ is async are accepted."""
    engine = slapoll.Engine()

    class Poller:
        async def __call__(self, ctx: RunContext, token: str) -> None:
            pass

    task = engine.task(name="poller", sla="30s")(Poller())
    task.add_target("a", token="t")
    assert list(task) == ["a"]


def test_target_arguments_must_fit_the_function() -> None:
    """Unknown or missing argument names fail when the target is added."""
    engine = slapoll.Engine()

    @engine.task(sla="30s")
    async def poll(ctx: RunContext, token: str, page: int = 1) -> None:
        pass

    with pytest.raises(
        ConfigError,
        match=r"target arguments of task 'poll': missing token; unknown tokn "
        r"\(it takes: page, token\)",
    ):
        poll.add_target("a", tokn="secret")
    poll.add_target("a", token="secret")
    poll.add_target("b", token="secret", page=2)
    assert len(poll) == 2


def test_keyword_catch_all_takes_any_arguments() -> None:
    """A function with **kwargs takes whatever the target brings."""
    engine = slapoll.Engine()

    @engine.task(sla="30s")
    async def poll(ctx: RunContext, **args: object) -> None:
        pass

    poll.add_target("a", anything=1, at_all="x")
    assert len(poll) == 1


@pytest.mark.parametrize("name", [123, ""])
def test_task_names_are_non_empty_strings(name: object) -> None:
    """A task name is used in metrics and phases: it must be a string."""
    engine = slapoll.Engine()
    with pytest.raises(ConfigError, match="a task name must be a non-empty string"):
        engine.task(name=name, sla="30s")  # type: ignore[arg-type]


def test_sub_millisecond_schedules_are_rejected() -> None:
    """An SLA under 10 ms or an interval under 1 ms is not polling."""
    engine = slapoll.Engine()
    with pytest.raises(ConfigError, match=r"sla must be at least 10ms, got 1e-06s"):
        engine.task(sla=1e-6)
    with pytest.raises(ConfigError, match=r"every must be at least 1ms"):
        engine.task(sla="1s", every=0.0001)


def test_engine_options_cannot_change_while_running() -> None:
    """configure() while running would desynchronise the pool."""
    engine = slapoll.Engine()
    engine.running = True
    with pytest.raises(slapoll.UsageError, match="use set_pool_size"):
        engine.configure(workers=10)


def test_limits_cannot_be_declared_while_running() -> None:
    """Budgets are declared before run(); the server's headers adjust them."""
    engine = slapoll.Engine()
    engine.limit("api", rate="10/s")
    engine.running = True
    with pytest.raises(slapoll.UsageError, match="declare budgets before"):
        engine.limit("api", rate="1/s")
    assert engine.limits["api"].rate is not None


# -- limit key templates ----------------------------------------------------------


def test_a_template_naming_no_parameter_is_rejected_when_declared() -> None:
    """No target could ever fill "api:{acct}" for a function taking token:
    every run would fail, so the declaration does."""
    engine = slapoll.Engine()

    with pytest.raises(
        ConfigError,
        match=r"limit key template 'api:\{acct\}' of task 'feed' names the "
        r"argument 'acct', which its function does not take \(it takes: token\)$",
    ):

        @engine.task(sla="30s", limits=["api:{acct}"])
        async def feed(ctx: RunContext, token: str) -> None:
            pass

    assert "feed" not in engine.tasks


def test_a_malformed_template_is_rejected_when_declared() -> None:
    engine = slapoll.Engine()

    with pytest.raises(
        ConfigError,
        match=r"^limits: limit key template 'api:\{tok' is not a valid template",
    ):
        engine.task(sla="30s", limits=["api:{tok"])


def test_a_malformed_template_budget_is_rejected_when_declared() -> None:
    engine = slapoll.Engine()

    with pytest.raises(
        ConfigError, match=r"^limit key template 'api:\{tok' is not a valid template"
    ):
        engine.limit("api:{tok", rate="10/s")

    assert "api:{tok" not in engine.limits


def test_a_keyword_catch_all_takes_any_template() -> None:
    """With **kwargs the function takes whatever a template names; each
    target must still bring it."""
    engine = slapoll.Engine()

    @engine.task(sla="30s", limits=["api:{account}"])
    async def feed(ctx: RunContext, **args: object) -> None:
        pass

    feed.add_target("a", account="ann")
    with pytest.raises(ConfigError, match=r"needs the argument 'account'"):
        feed.add_target("b", token="x")
    assert list(feed) == ["a"]


def test_a_target_lacking_a_template_argument_is_rejected() -> None:
    """The message names the target, the template and the argument."""
    engine = slapoll.Engine()

    @engine.task(sla="30s", limits=["api", "api:{account}"])
    async def feed(ctx: RunContext, token: str, account: str = "") -> None:
        pass

    with pytest.raises(
        ConfigError,
        match=r"^limit key template 'api:\{account\}' of task 'feed' needs the "
        r"argument 'account', which target 't1' does not have; its arguments "
        r"are \['token'\]$",
    ):
        feed.add_target("t1", token="x")
    assert len(feed) == 0
    feed.add_target("t1", token="x", account="ann")
    assert list(feed) == ["t1"]


def test_configure_checks_templates_against_the_function_and_targets() -> None:
    """configure(limits=...) refuses what declaring would, and a template
    the targets added so far cannot fill; the policy stays as it was."""
    engine = slapoll.Engine()

    @engine.task(sla="30s", limits=["api"])
    async def feed(ctx: RunContext, token: str, account: str = "") -> None:
        pass

    feed.add_target("t1", token="x")
    with pytest.raises(ConfigError, match=r"names the argument 'acct'"):
        feed.configure(limits=["api:{acct}"])
    with pytest.raises(ConfigError, match=r"^limits: limit key template 'api:\{'"):
        feed.configure(limits=["api:{"])
    with pytest.raises(
        ConfigError,
        match=r"'api:\{account\}' of task 'feed' needs the argument 'account', "
        r"which target 't1' does not have",
    ):
        feed.configure(limits=["api:{account}"])
    assert feed.policy.limits == ("api",)

    feed.configure(limits=["api:{token}"])
    assert feed.policy.limits == ("api:{token}",)
