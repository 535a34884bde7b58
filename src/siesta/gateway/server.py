"""The gateway server: listener, tracked connections, timeouts, drain.

Built by `siesta.app` from the config; owns the connection set, the upstream
pool and the activator. Start-up, serve, drain with a deadline, then close what
is left (uvicorn's server lifecycle, kept small).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from siesta.core.ignore import ActivityFilter
from siesta.core.limits import Rate
from siesta.core.model import Session, State
from siesta.core.routing import Route, Router, RoutingMode
from siesta.lifecycle import Lifecycle

from .activator import Activator
from .client import ClientConnection, Request
from .http import FORWARDED
from .upstream import UpstreamPool

log = logging.getLogger("siesta.gateway")


class GatewaySettings(Protocol):
    """What the gateway reads from the `gateway:` section of the config."""

    @property
    def routing(self) -> RoutingMode: ...
    @property
    def domain(self) -> str: ...
    @property
    def header(self) -> str: ...
    @property
    def strip_prefix(self) -> bool: ...
    @property
    def wake_timeout(self) -> float: ...
    @property
    def waiting_page(self) -> str: ...
    @property
    def waiting_page_after(self) -> float: ...
    @property
    def max_held_per_session(self) -> int: ...
    @property
    def max_held_total(self) -> int: ...
    @property
    def header_timeout(self) -> float: ...
    @property
    def keepalive_timeout(self) -> float: ...
    @property
    def max_head_size(self) -> int: ...
    @property
    def drain_timeout(self) -> float: ...
    @property
    def trusted_proxies(self) -> Sequence[str]: ...
    @property
    def max_held_per_client(self) -> int: ...
    @property
    def wake_rate_limit(self) -> Rate | None: ...
    @property
    def body_timeout(self) -> float: ...
    @property
    def request_timeout(self) -> float: ...


class AuthGate(Protocol):
    """`gateway.auth`: decides each request before anything else (`siesta.gateway.auth`)."""

    def admit(self, conn: ClientConnection, req: Request, route: Route) -> None:
        """Answer `req` (refused, or a redirect), or hand it on with `conn.routed`."""
        ...

    async def close(self) -> None:
        """Release what it holds (clients of auth servers)."""
        ...


class Gateway:
    """The HTTP/1.1 data plane in front of the session backends."""

    def __init__(
        self,
        settings: GatewaySettings,
        lifecycle: Lifecycle,
        *,
        ignore: Mapping[str, ActivityFilter] | None = None,
    ):
        self.lifecycle = lifecycle
        self.ignore = dict(ignore or {})  # template -> traffic that is not activity
        self.router = Router(
            settings.routing, domain=settings.domain, strip_prefix=settings.strip_prefix
        )
        self.route_header = settings.header.lower().encode()
        self.wake_timeout = settings.wake_timeout
        self.waiting_page = settings.waiting_page == "auto"
        self.waiting_page_after = settings.waiting_page_after
        self.max_held_per_session = settings.max_held_per_session
        self.max_held_total = settings.max_held_total
        self.header_timeout = settings.header_timeout
        self.keepalive_timeout = settings.keepalive_timeout
        self.max_head_size = settings.max_head_size
        self.drain_timeout = settings.drain_timeout
        # abuse limits (issue 9): per-client holds and wakes, stalled request bodies
        self.max_held_per_client = settings.max_held_per_client
        self.wake_rate = settings.wake_rate_limit
        self.body_timeout = settings.body_timeout
        self.request_timeout = settings.request_timeout
        self.trusted_proxies = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in settings.trusted_proxies
        )
        # Request headers never passed on as the client sent them: X-Forwarded-* (rebuilt,
        # or extended for a trusted proxy), and the identity headers auth sets.
        self.dropped_headers = FORWARDED
        self.auth: AuthGate | None = None  # gateway.auth; None for mode none
        self.memo_heads = True  # connections reuse the head built for a repeated request
        self.now = time.monotonic
        self.pool = UpstreamPool()
        self.activator = Activator(self)
        self.failure_log: Callable[[Session], Awaitable[str | None]] = _no_log
        """The end of a session's backend log for the failure page (None: not shown)."""
        self.connections: set[ClientConnection] = set()
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.Task[None] | None = None
        lifecycle.listeners.append(self._on_transition)

    def trusts(self, peer: bytes) -> bool:
        """Whether the client at address `peer` is a trusted proxy (`trusted_proxies`)."""
        if not self.trusted_proxies or not peer:
            return False
        try:
            address = ipaddress.ip_address(peer.decode())
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted_proxies)

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Start accepting on `host:port` (port 0 picks one); return the bound address."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: ClientConnection(self), host, port, reuse_address=True, backlog=2048
        )
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name="gateway timeouts")
        bound = server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def drain(self) -> None:
        """Stop accepting, let requests in flight finish (up to `drain_timeout`), close."""
        for server in self._servers:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        while loop.time() < deadline:
            for conn in list(self.connections):
                if conn.current is None and not conn.queue and conn.tunnel is None:
                    conn.close()
            if not self.connections:
                break
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.pool.close()
        if self.auth is not None:
            await self.auth.close()
        for server in self._servers:
            await server.wait_closed()

    def _on_transition(self, session: Session, old: State, new: State) -> None:
        if old is State.AWAKE and session.endpoint is not None:
            self.pool.drop(session.endpoint)  # the backend is going: its sockets go with it

    async def _sweep(self) -> None:
        """Close connections past their deadline (slow heads, idle keep-alives), and those
        whose request body stalled or took too long (`ClientConnection.check_body`)."""
        timeouts = [self.header_timeout, self.keepalive_timeout]
        timeouts += [t for t in (self.body_timeout, self.request_timeout) if t > 0]
        bodies = self.body_timeout > 0 or self.request_timeout > 0
        interval = max(0.05, min(1.0, *(t / 4 for t in timeouts)))
        while True:
            await asyncio.sleep(interval)
            now = self.now()
            for conn in list(self.connections):
                try:
                    if conn.deadline:
                        if now > conn.deadline:
                            conn.deadline = 0.0
                            conn.expire()
                    elif bodies and conn.parsing is not None and not conn.closing:
                        conn.check_body(now)  # a head complete, its body under way
                except Exception:  # one bad connection never stops the sweeper
                    log.exception("closing an expired connection failed")


async def _no_log(session: Session) -> str | None:
    return None
