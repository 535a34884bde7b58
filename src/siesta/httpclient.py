"""siesta's one HTTP client library (httpx), set up the same way wherever it is used.

The activity probes, the sleep warnings' webhooks, the admin client of the CLI and
the demo's scripted traffic make their clients here. Only the readiness poll keeps
a minimal client of its own (`siesta.readiness`): it runs on every wake, where it
was measured faster (bench/readiness.py).
"""

from __future__ import annotations

import logging

import httpx

from siesta import __version__

USER_AGENT = f"siesta/{__version__}"

for _name in ("httpx", "httpcore"):  # they log every request at INFO: siesta's own logs say
    logging.getLogger(_name).setLevel(logging.WARNING)  # what matters, once


def async_client(
    timeout: float, *, trust_env: bool = False, keepalive: bool = True
) -> httpx.AsyncClient:
    """An async client with siesta's User-Agent and a `timeout` (seconds) for each step.

    `trust_env` honours HTTP_PROXY and friends: on for the user's own services reached
    by URL (webhooks), off for backends and siesta itself, which are reached directly.
    Without `keepalive`, every request has a connection of its own.
    """
    return httpx.AsyncClient(
        timeout=timeout,
        trust_env=trust_env,
        headers={"User-Agent": USER_AGENT},
        limits=httpx.Limits() if keepalive else httpx.Limits(max_keepalive_connections=0),
    )


def sync_client(base_url: str, timeout: float, headers: dict[str, str]) -> httpx.Client:
    """A blocking client of `base_url` (the CLI's admin client), reached directly."""
    return httpx.Client(
        base_url=base_url,
        timeout=timeout,
        trust_env=False,
        headers={"User-Agent": USER_AGENT, **headers},
    )
