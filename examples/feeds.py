"""An engine that keeps a few public feeds fresh, to run from feeds.toml.

``poll_feed`` has one target per feed URL and fetches through ``ctx.http``,
so every request draws from the "feeds" budget that feeds.toml declares,
and the engine makes it conditional: an unchanged feed costs the server a
304. ``check_status`` takes no arguments, so it has exactly one target.
Try it with::

    slapoll check examples/feeds.toml
    slapoll run examples/feeds.toml
"""

from __future__ import annotations

import logging

import httpx

import slapoll

logger = logging.getLogger("examples.feeds")

engine = slapoll.Engine(workers=4, max_workers=16)

_FEEDS = {
    "python-insider": "https://blog.python.org/feeds/posts/default",
    "trio-releases": "https://github.com/python-trio/trio/releases.atom",
    "httpx-releases": "https://github.com/encode/httpx/releases.atom",
}


@engine.task(sla="5m", every="1m", limits=["feeds"], timeout="10s", retries=1)
async def poll_feed(ctx: slapoll.RunContext, url: str) -> None:
    """Fetch one feed unless it is unchanged since the last poll."""
    response = await ctx.http.get(url, follow_redirects=True)
    if response.status_code == httpx.codes.NOT_MODIFIED:
        logger.debug("%s unchanged", ctx.key)
        return
    response.raise_for_status()
    logger.info("%s: %d bytes", ctx.key, len(response.content))


@engine.task(sla="2m", every="30s", timeout="5s")
async def check_status(ctx: slapoll.RunContext) -> None:
    """Check that python.org answers at all."""
    response = await ctx.http.request("HEAD", "https://www.python.org/")
    response.raise_for_status()


for _key, _url in _FEEDS.items():
    poll_feed.add_target(_key, url=_url)
