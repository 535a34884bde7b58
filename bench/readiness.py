"""The readiness poll's own HTTP client against httpx, side by side (issue 12).

siesta uses httpx wherever it speaks HTTP, except in the readiness poll
(`siesta.readiness.http_ready`), which runs from 1 ms after every start until the
backend answers: its cost per check adds to every wake. This measures one check,
both ways, in the two situations a poll meets:

* refused: nothing listens yet (the backend is still starting);
* ready: a backend answers `GET /` (a small asyncio HTTP server in this process).

Interleaved rounds of CHECKS checks each, on one event loop (uvloop, as siesta
runs); the median per-check time of each client, and the ratio httpx / minimal.
Printed, and written to bench/out/readiness.json.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from siesta.app import install_uvloop
from siesta.core.model import Endpoint
from siesta.httpclient import async_client
from siesta.readiness import Resolved, http_ready

ROUNDS = 7
CHECKS = 300
OUT = Path(__file__).with_name("out") / "readiness.json"

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(ANSWER)
    await writer.drain()
    writer.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _httpx_ready(client: httpx.AsyncClient, endpoint: Endpoint, path: str) -> bool:
    """What the poll's check would be with httpx."""
    try:
        response = await client.get(f"http://{endpoint}{path}")
    except httpx.HTTPError:
        return False
    return response.status_code < 500


async def _per_check(check: Callable[[], Awaitable[bool]], expected: bool) -> float:
    began = time.perf_counter()
    for _ in range(CHECKS):
        assert await check() is expected
    return (time.perf_counter() - began) / CHECKS


async def measure() -> dict[str, dict[str, float]]:
    server = await asyncio.start_server(_answer, "127.0.0.1", 0)
    ready = Endpoint("127.0.0.1", server.sockets[0].getsockname()[1])
    refused = Endpoint("127.0.0.1", _closed_port())
    ready_target, refused_target = Resolved(ready), Resolved(refused)  # one per wake
    times: dict[str, list[float]] = {}
    async with async_client(5.0, keepalive=False) as client:
        cases: dict[str, tuple[Callable[[], Awaitable[bool]], bool]] = {
            "minimal ready": (lambda: http_ready(ready_target, "/"), True),
            "httpx ready": (lambda: _httpx_ready(client, ready, "/"), True),
            "minimal refused": (lambda: http_ready(refused_target, "/"), False),
            "httpx refused": (lambda: _httpx_ready(client, refused, "/"), False),
        }
        for _ in range(ROUNDS):
            for name, (check, expected) in cases.items():
                times.setdefault(name, []).append(await _per_check(check, expected))
    server.close()
    results: dict[str, dict[str, float]] = {}
    for situation in ("ready", "refused"):
        minimal = statistics.median(times[f"minimal {situation}"])
        other = statistics.median(times[f"httpx {situation}"])
        results[situation] = {
            "minimal_us": minimal * 1e6,
            "httpx_us": other * 1e6,
            "httpx_over_minimal": other / minimal,
        }
    return results


def main() -> None:
    install_uvloop()
    results = asyncio.run(measure())
    print(f"readiness check, median of {ROUNDS} rounds of {CHECKS} (µs per check):")
    for situation, row in results.items():
        print(
            f"  {situation:<8} minimal {row['minimal_us']:7.1f}  httpx {row['httpx_us']:7.1f}"
            f"  httpx/minimal {row['httpx_over_minimal']:.2f}x"
        )
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
