"""Is a freshly started backend ready? Polled fast, so a wake costs little more
than the backend's own start.

Used by the lifecycle runner: the first probe goes out at once, then every
`first` seconds growing by `factor` up to `cap` (1 ms -> 25 ms by default), so a
backend ready after t seconds is seen by about 1.15 t + 1 ms.

Its HTTP check is a minimal client of its own, not httpx (siesta's client elsewhere):
one check costs a ninth to a thirteenth of httpx's (bench/readiness.py), and it runs
many times in every wake.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from siesta.core.model import Endpoint


class NotReady(Exception):
    """The backend did not become ready; the message says why."""


async def tcp_ready(endpoint: Endpoint) -> bool:
    """Whether something accepts connections at `endpoint`."""
    try:
        _, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def http_ready(endpoint: Endpoint, path: str) -> bool:
    """Whether `GET path` at `endpoint` answers with a status below 500."""
    try:
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    except OSError:
        return False
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {endpoint}\r\nUser-Agent: siesta-readiness\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        line = await reader.readline()
    except OSError:
        return False
    finally:
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
    `timeout` seconds pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = first
    while True:
        if await probe():
            return
        if not alive():
            raise NotReady("the backend exited before it was ready")
        if loop.time() + delay > deadline:
            raise NotReady(f"the backend was not ready within {timeout:g}s")
        await asyncio.sleep(delay)
        delay = min(cap, delay * factor)
