"""Is a freshly started backend ready? Polled fast, so a wake costs little more
than the backend's own start; bounded, so a backend that hangs cannot hold a wake.

Used by the lifecycle runner (every wake), by the keda provider (is a remembered
backend still there after a restart?) and by the gateway (re-checking a backend that
refused a connection after its wake). The first probe goes out at once, then every
`first` seconds growing by `factor` up to the template's interval (25 ms for a local
backend, 250 ms for a remote one), so a local backend ready after t seconds is seen
by about 1.15 t + 1 ms. Each probe has `timeout` seconds to connect and get its
answer's status line (1 s by default). A backend's host name is resolved once per
wake (`Resolved`), not at every probe.

Its HTTP check is a minimal client of its own, not httpx (siesta's client elsewhere):
one check costs a ninth to a thirteenth of httpx's (bench/readiness.py), and it runs
many times in every wake.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Awaitable, Callable

from siesta.core.model import Endpoint

PLACEHOLDERS = ("base_url", "session", "port")
"""What `{...}` a readiness or probe path may use."""
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


class NotReady(Exception):
    """The backend did not become ready; the message says why."""


def placeholder_problem(path: str) -> str | None:
    """Why `path` cannot be used (an unknown `{placeholder}`), or None."""
    unknown = [name for name in _PLACEHOLDER.findall(path) if name not in PLACEHOLDERS]
    if unknown:
        known = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
        return f"unknown placeholder {{{unknown[0]}}}: use {known}"
    return None


def fill_path(path: str, session: str, port: int, base_url: str) -> str:
    """`path` with `{base_url}`, `{session}` and `{port}` filled in."""
    values = {"base_url": base_url, "session": session, "port": str(port)}
    return _PLACEHOLDER.sub(lambda m: values.get(m[1], m[0]), path)


class Resolved:
    """An endpoint whose host name is looked up once, at the first probe that needs it.

    A failed lookup is retried at the next probe (the Service may not exist yet); once
    it answered, every later probe of this wake connects to that address, so a waking
    session costs one DNS lookup, not one per probe.
    """

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.address: tuple[str, int] | None = None
        self.lookups = 0
        if _is_address(endpoint.host):
            self.address = (endpoint.host, endpoint.port)

    async def get(self) -> tuple[str, int] | None:
        """(ip, port) to connect to; None when the name does not resolve (yet)."""
        if self.address is None:
            self.lookups += 1
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(
                    self.endpoint.host, self.endpoint.port, type=socket.SOCK_STREAM
                )
            except OSError:
                return None
            if not infos:
                return None
            self.address = (str(infos[0][4][0]), int(infos[0][4][1]))
        return self.address


def _is_address(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return True
    return False


async def tcp_ready(target: Resolved, timeout: float = 1.0) -> bool:
    """Whether something accepts connections at `target` within `timeout` seconds."""
    address = await target.get()
    if address is None:
        return False
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(*address)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def http_ready(target: Resolved, path: str, timeout: float = 1.0) -> bool:
    """Whether `GET path` at `target` answers with a status below 500 within `timeout`
    seconds (connecting and reading the status line both count)."""
    address = await target.get()
    if address is None:
        return False
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(*address)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {target.endpoint}\r\n"
                "User-Agent: siesta-readiness\r\nConnection: close\r\n\r\n".encode()
            )
            line = await reader.readline()
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    parts = line.split(b" ", 2)
    return (
        len(parts) >= 2
        and parts[0].startswith(b"HTTP/")
        and parts[1].isdigit()
        and (int(parts[1]) < 500)
    )


class ReadySpec:
    """How one template's backends are checked: `path` (None: a TCP connect), the
    probe's `timeout` and the longest `interval` between probes."""

    __slots__ = ("interval", "path", "timeout")

    def __init__(self, path: str | None, timeout: float = 1.0, interval: float = 0.025):
        self.path, self.timeout, self.interval = path, timeout, interval

    def probe(
        self, endpoint: Endpoint, session: str, base_url: str = "/"
    ) -> Callable[[], Awaitable[bool]]:
        """One probe of `session`'s backend at `endpoint` (name resolved at most once)."""
        target = Resolved(endpoint)
        timeout = self.timeout
        if self.path is None:
            return lambda: tcp_ready(target, timeout)
        path = fill_path(self.path, session, endpoint.port, base_url)
        return lambda: http_ready(target, path, timeout)


async def wait_ready(
    probe: Callable[[], Awaitable[bool]],
    alive: Callable[[], bool],
    timeout: float,
    *,
    first: float = 0.001,
    factor: float = 1.15,
    cap: float = 0.025,
) -> None:
    """Poll `probe` until it says ready; raise `NotReady` if the backend dies or
    `timeout` seconds pass (a probe under way when they pass is not waited for)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = first
    try:
        async with asyncio.timeout(timeout):
            while True:
                if await probe():
                    return
                if not alive():
                    raise NotReady("the backend exited before it was ready")
                if loop.time() + delay > deadline:
                    break
                await asyncio.sleep(delay)
                delay = min(cap, delay * factor)
    except TimeoutError:
        pass
    raise NotReady(f"the backend was not ready within {timeout:g}s")
