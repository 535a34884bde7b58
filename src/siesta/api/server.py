"""The admin API's listener: uvicorn serving `siesta.api.app` inside siesta's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator

import uvicorn

from siesta.adminclient import TOKEN_FILE
from siesta.api.app import build_app
from siesta.api.auth import load_token
from siesta.api.deps import Services, no_logs
from siesta.api.events import EventHub
from siesta.api.oidc import AdminOidc
from siesta.auth.oidc import OidcClient
from siesta.auth.setup import cookie_key, oidc_settings
from siesta.auth.tokens import TokenBook
from siesta.config import Config
from siesta.lifecycle import Lifecycle
from siesta.metrics import SiestaMetrics
from siesta.savings.keeper import LedgerKeeper
from siesta.store.base import Store

log = logging.getLogger("siesta.api")


class _Server(uvicorn.Server):
    """uvicorn, minus its signal handlers: siesta's own loop handles SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AdminServer:
    """The admin API's listener, run as a task in siesta's event loop."""

    def __init__(
        self,
        config: Config,
        lifecycle: Lifecycle,
        store: Store,
        *,
        held: Callable[[], int],
        controller: Callable[[], object | None],
        logs: Callable[[str, int], Awaitable[str]] | None = None,
        ledger: LedgerKeeper | None = None,
        tokens: TokenBook | None = None,
    ):
        self.config = config
        self.metrics = SiestaMetrics(lifecycle, held, controller)
        self.hub = EventHub(lifecycle)
        self.services = Services(
            lifecycle,
            store,
            self.metrics,
            self.hub,
            controller,
            logs=logs or no_logs,
            check_new=config.session_problem,
            ledger=ledger,
            config=config,
            tokens=tokens,
        )
        self.token = ""
        self.oidc = _admin_oidc(config)
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> tuple[str, int]:
        """Bind `gateway.admin_listen` and serve; return the bound address."""
        address = self.config.gateway.admin_address
        assert address is not None, "gateway.admin_listen is off: no AdminServer is made"
        host, port = address
        sock = _bind(host, port)  # first: a token made by a start that fails is never shown
        self.token, created = load_token(self.config.state_dir, os.environ)
        server = _Server(
            uvicorn.Config(
                build_app(self.services, self.token, self.oidc),
                lifespan="off",
                log_level="warning",
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=2,
            )
        )
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="admin API")
        self._task.add_done_callback(_report_exit)
        if created:  # where to find it, never the token itself: logs are collected
            path = self.config.state_dir / TOKEN_FILE
            log.info("siesta admin token created in %s (readable by siesta's user only)", path)
        bound = sock.getsockname()
        return str(bound[0]), int(bound[1])

    async def stop(self) -> None:
        """End the event streams, finish requests under way (2s at most), close."""
        self.hub.close()
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.oidc is not None:
            await self.oidc.close()


def _admin_oidc(config: Config) -> AdminOidc | None:
    """The dashboard's OIDC login of `admin.auth` mode oidc (None for mode token).
    `ValueError` names a setting that cannot be read (a secret, the cookie key)."""
    auth, conf = config.admin.auth, config.admin_oidc
    if auth.mode != "oidc" or conf is None or auth.allow_rule is None:
        return None
    key = "admin.auth.oidc" if auth.oidc is not None else "gateway.auth.oidc"
    return AdminOidc(
        OidcClient(oidc_settings(conf, key)),
        cookie_key(conf, key, config.state_dir),
        auth.allow_rule,
        # the gateway's callback is not the dashboard's: only admin.auth.oidc's is used
        redirect_uri=auth.oidc.redirect_uri if auth.oidc is not None else None,
        login_ttl=conf.login_ttl,
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=128)


def _report_exit(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("the admin API stopped: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
