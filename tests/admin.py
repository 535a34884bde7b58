"""Helpers for tests of the admin API: launch siesta with its admin listener, and a client."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import Launcher, SiestaProcess, free_port

TOKEN = "test-token-0123456789"


def launch_admin(
    siesta: Launcher,
    monkeypatch: pytest.MonkeyPatch,
    *,
    token: str | None = TOKEN,
    **kwargs: Any,
) -> tuple[SiestaProcess, str]:
    """Start siesta with an admin listener on a free port; its base URL.

    With `token`, siesta takes it from SIESTA_ADMIN_TOKEN; with None it makes its own.
    """
    if token is None:
        monkeypatch.delenv("SIESTA_ADMIN_TOKEN", raising=False)
    else:
        monkeypatch.setenv("SIESTA_ADMIN_TOKEN", token)
    admin_port = free_port()
    gateway = {"admin_listen": f"127.0.0.1:{admin_port}", **kwargs.pop("gateway", {})}
    proc = siesta(gateway=gateway, **kwargs)
    return proc, f"http://127.0.0.1:{admin_port}"


def client(base: str, token: str | None = TOKEN, timeout: float = 30.0) -> httpx.Client:
    """An httpx client of the admin API, sending `token` when given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base, headers=headers, timeout=timeout)
