"""The bundled demo backend: one process per session, started by ``siesta demo``.

It makes sleeping and waking visible. The page shows a hit counter kept in memory
(it restarts at 1 after a wake) with the backend's start time and pid, and a
websocket clock that ticks a few times and then stays open but silent: an idle
open websocket is not activity, so siesta puts the session to sleep and the page
says so. Every URL the page uses is relative, so it works behind the gateway's
``/s/<session>/`` prefix (stripped or not) and with host routing alike.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from string import Template
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

TICKS_PER_REQUEST = 5
"""Clock ticks sent on connect and again for each "more" message."""

EVENT_COUNT = 3
"""Server-sent events sent by ``GET /events`` before the stream ends."""


@dataclass
class DemoState:
    """What one demo backend knows; ``hits`` lives in memory only, on purpose."""

    session: str
    base_url: str
    pid: int
    started: float
    tick_interval: float = 1.0
    hits: int = 0


def clock_time(timestamp: float) -> str:
    """Format a unix time as local ``HH:MM:SS``."""
    return time.strftime("%H:%M:%S", time.localtime(timestamp))


def normalize_base_url(base_url: str) -> str:
    """Return ``base_url`` with exactly one leading and one trailing slash."""
    inner = base_url.strip("/")
    return f"/{inner}/" if inner else "/"


def _state(conn: HTTPConnection) -> DemoState:
    state: DemoState = conn.app.state.demo
    return state


# --- the page --------------------------------------------------------------------------

PAGE = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>siesta demo: $session</title>
<style>
  body { font: 16px/1.5 system-ui, sans-serif; background: #f6f4ef; color: #2b2b2b;
         margin: 0; display: flex; justify-content: center; }
  main { max-width: 34rem; margin: 3rem 1rem; padding: 2rem; background: #fff;
         border-radius: 12px; box-shadow: 0 2px 12px rgba(0, 0, 0, .08); }
  h1 { font: 600 2.6rem/1.1 ui-monospace, monospace; margin: 0 0 .3rem; word-break: break-all; }
  .muted { color: #777; font-size: .9rem; }
  .hits { font-size: 1.3rem; margin: 1.2rem 0 .2rem; }
  #clock { font: 600 2rem ui-monospace, monospace; }
  button { font: inherit; padding: .3rem .9rem; border: 1px solid #bbb; border-radius: 6px;
           background: #fafafa; cursor: pointer; }
  button:disabled { cursor: default; opacity: .5; }
  #asleep { display: none; margin-top: 1rem; padding: .8rem 1rem; border-radius: 8px;
            background: #fff3d6; }
  nav a { margin-right: 1rem; }
</style>
</head>
<body>
<main>
  <div class="muted">siesta session</div>
  <h1 id="session">$session</h1>
  <p class="hits">page loads: <b id="hits">$hits</b></p>
  <p class="muted">backend started at <span id="started">$started</span>,
     pid <span id="pid">$pid</span> &middot; base URL <code>$base_url</code></p>
  <p><span id="clock">--:--:--</span> <span class="muted" id="tick">connecting…</span></p>
  <p><button id="more" disabled>tick 5 more</button></p>
  <p class="muted">After a few ticks the clock goes quiet but stays connected: an idle
     open websocket is not activity, so siesta will put this session to sleep.</p>
  <p id="asleep">session went to sleep — <a href="">reload to wake it</a></p>
  <nav class="muted">
    <a data-rel="api/info" href="api/info">api/info</a>
    <a data-rel="events" href="events">events</a>
    <a data-rel="healthz" href="healthz">healthz</a>
  </nav>
</main>
<script>
  const dir = location.pathname.replace(/\\/?$$/, '/');
  document.querySelectorAll('a[data-rel]').forEach(a => { a.href = dir + a.dataset.rel; });
  const $$id = id => document.getElementById(id);
  const ws = new WebSocket((location.protocol === 'https:' ? 'wss' : 'ws') + '://'
                           + location.host + dir + 'ws');
  ws.onopen = () => { $$id('more').disabled = false; $$id('tick').textContent = 'connected'; };
  ws.onmessage = event => {
    const msg = JSON.parse(event.data);
    if (!msg.time) return;
    $$id('clock').textContent = msg.time;
    $$id('tick').textContent = 'tick ' + msg.tick;
  };
  ws.onclose = () => {
    $$id('more').disabled = true;
    $$id('tick').textContent = 'disconnected';
    $$id('asleep').style.display = 'block';
  };
  $$id('more').onclick = () => ws.send('more');
</script>
</body>
</html>
""")


def render_page(state: DemoState) -> str:
    """Render the HTML page; every value is escaped."""
    values = {
        "session": state.session,
        "hits": str(state.hits),
        "started": clock_time(state.started),
        "pid": str(state.pid),
        "base_url": state.base_url,
    }
    return PAGE.substitute({key: html.escape(value) for key, value in values.items()})


# --- HTTP endpoints --------------------------------------------------------------------


async def homepage(request: Request) -> HTMLResponse:
    """``GET /``: count the hit and show the page."""
    state = _state(request)
    state.hits += 1
    return HTMLResponse(render_page(state), headers={"Cache-Control": "no-store"})


async def info(request: Request) -> JSONResponse:
    """``GET /api/info``: who this backend is; does not count as a hit."""
    state = _state(request)
    body = {"session": state.session, "pid": state.pid, "started": state.started}
    return JSONResponse({**body, "hits": state.hits})


async def _event_stream(count: int, interval: float) -> AsyncIterator[str]:
    for number in range(1, count + 1):
        if number > 1:
            await asyncio.sleep(interval)
        yield f"data: {number}\n\n"


async def events(request: Request) -> StreamingResponse:
    """``GET /events``: a few server-sent events, one per tick interval, then the end."""
    stream = _event_stream(EVENT_COUNT, _state(request).tick_interval)
    headers = {"Cache-Control": "no-store"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


async def healthz(request: Request) -> PlainTextResponse:
    """``GET /healthz``: liveness."""
    return PlainTextResponse("ok")


# --- the websocket clock ---------------------------------------------------------------


class Clock:
    """One websocket's clock: ticks on request, echoes text, never sends concurrently."""

    def __init__(self, websocket: WebSocket, state: DemoState) -> None:
        self.websocket = websocket
        self.state = state
        self.tick = 0
        self.requests: asyncio.Queue[int] = asyncio.Queue()
        self.send_lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        """Send one JSON message."""
        async with self.send_lock:
            await self.websocket.send_json(message)

    async def run_ticks(self) -> None:
        """Send the requested ticks one interval apart; silent while none are asked for."""
        while True:
            count = await self.requests.get()
            for _ in range(count):
                self.tick += 1
                now = clock_time(time.time())
                await self.send({"time": now, "session": self.state.session, "tick": self.tick})
                await asyncio.sleep(self.state.tick_interval)

    async def handle(self, text: str) -> None:
        """Answer one client message: "more" asks for more ticks, anything else is echoed."""
        if text.strip() == "more":
            self.requests.put_nowait(TICKS_PER_REQUEST)
        else:
            await self.send({"echo": text})


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it; a send to a departed client is not an error."""
    task.cancel()
    with suppress(asyncio.CancelledError, WebSocketDisconnect, OSError, RuntimeError):
        await task


async def clock_socket(websocket: WebSocket) -> None:
    """``/ws``: five ticks, then open but silent; "more" for five more; echoes text."""
    await websocket.accept()
    clock = Clock(websocket, _state(websocket))
    clock.requests.put_nowait(TICKS_PER_REQUEST)
    ticker = asyncio.create_task(clock.run_ticks())
    try:
        async for text in websocket.iter_text():
            await clock.handle(text)
    finally:
        await _stop(ticker)


# --- the application -------------------------------------------------------------------


def demo_routes() -> list[BaseRoute]:
    """The routes, relative to wherever they are mounted."""
    return [
        Route("/", homepage),
        Route("/api/info", info),
        Route("/events", events),
        Route("/healthz", healthz),
        WebSocketRoute("/ws", clock_socket),
    ]


def build_app(state: DemoState) -> Starlette:
    """The app; with a base URL other than "/", the routes answer under it as well."""
    routes = demo_routes()
    if state.base_url != "/":
        routes.append(Mount(state.base_url.rstrip("/"), routes=demo_routes()))
    app = Starlette(routes=routes)
    app.state.demo = state
    return app


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m siesta.demo", description="The siesta demo backend for one session."
    )
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--session", required=True, help="the session id to show")
    parser.add_argument("--base-url", default="/", help="URL prefix the gateway uses")
    parser.add_argument(
        "--start-delay",
        type=float,
        default=0.0,
        help="seconds to wait before listening: a slow app, to see the waiting page",
    )
    parser.add_argument(
        "--tick-interval",
        type=float,
        default=1.0,
        help="seconds between clock ticks and events (default 1; tests use less)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the demo app for one session until stopped."""
    args = parse_args(argv)
    time.sleep(max(0.0, args.start_delay))
    state = DemoState(
        session=args.session,
        base_url=normalize_base_url(args.base_url),
        pid=os.getpid(),
        started=time.time(),
        tick_interval=args.tick_interval,
    )
    uvicorn.run(
        build_app(state), host="127.0.0.1", port=args.port, log_level="warning", lifespan="off"
    )
