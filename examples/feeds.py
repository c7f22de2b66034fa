"""An engine that keeps a few public feeds fresh, to run from feeds.toml.

``poll_feed`` has one target per feed URL and sends conditional requests,
so an unchanged feed costs the server a 304. ``check_status`` takes no
arguments, so it has exactly one target. Try it with::

    slapoll check examples/feeds.toml
    slapoll run examples/feeds.toml
"""

from __future__ import annotations

import logging

import httpx

import slapoll

logger = logging.getLogger("examples.feeds")

engine = slapoll.Engine(workers=4, max_workers=16)

# Validators of the last answer per target key, for conditional requests.
_validators: dict[str, dict[str, str]] = {}

_FEEDS = {
    "python-insider": "https://blog.python.org/feeds/posts/default",
    "trio-releases": "https://github.com/python-trio/trio/releases.atom",
    "httpx-releases": "https://github.com/encode/httpx/releases.atom",
}


@engine.task(sla="5m", every="1m", limits=["feeds"], timeout="10s", retries=1)
async def poll_feed(ctx: slapoll.RunContext, url: str) -> None:
    """Fetch one feed unless it is unchanged since the last poll."""
    headers = _validators.get(ctx.key, {})
    async with httpx.AsyncClient(follow_redirects=True) as client:
        response = await client.get(url, headers=headers)
    if response.status_code == httpx.codes.NOT_MODIFIED:
        logger.debug("%s unchanged", ctx.key)
        return
    response.raise_for_status()

    _validators[ctx.key] = {
        request_header: response.headers[response_header]
        for request_header, response_header in (
            ("If-None-Match", "ETag"),
            ("If-Modified-Since", "Last-Modified"),
        )
        if response_header in response.headers
    }
    logger.info("%s: %d bytes", ctx.key, len(response.content))


@engine.task(sla="2m", every="30s", timeout="5s")
async def check_status(ctx: slapoll.RunContext) -> None:
    """Check that python.org answers at all."""
    async with httpx.AsyncClient() as client:
        response = await client.head("https://www.python.org/")
    response.raise_for_status()


for _key, _url in _FEEDS.items():
    poll_feed.add_target(_key, url=_url)
