"""A small real backend for the tests: Starlette on uvicorn, run as a subprocess.

    python tests/backend.py PORT SESSION

Records each start in the file named by $SIESTA_TEST_STARTS (one line per start),
so tests can count how many times siesta started it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

SESSION = sys.argv[2] if len(sys.argv) > 2 else "?"


async def index(request: Request) -> Response:
    return PlainTextResponse(f"hello from {SESSION} pid {os.getpid()}\n")


async def echo(request: Request) -> Response:
    """Read the whole body as a stream; answer its size and sha256."""
    digest = hashlib.sha256()
    size = 0
    async for part in request.stream():
        digest.update(part)
        size += len(part)
    return JSONResponse({"size": size, "sha256": digest.hexdigest()})


async def headers(request: Request) -> Response:
    return JSONResponse(
        {
            "path": request.url.path,
            "query": request.url.query,
            "headers": [[k, v] for k, v in request.headers.items()],
        }
    )


async def slow(request: Request) -> Response:
    await asyncio.sleep(float(request.query_params.get("s", "1")))
    return PlainTextResponse("slow done\n")


async def sse(request: Request) -> Response:
    count = int(request.query_params.get("n", "3"))

    async def events():  # type: ignore[no-untyped-def]
        for i in range(count):
            yield f"data: {i}\n\n"
            await asyncio.sleep(0.05)

    return StreamingResponse(events(), media_type="text/event-stream")


async def big(request: Request) -> Response:
    """Stream n bytes in 64 KiB chunks (chunked transfer encoding)."""
    total = int(request.query_params.get("n", "1000000"))

    async def body():  # type: ignore[no-untyped-def]
        left = total
        while left > 0:
            part = min(left, 65536)
            yield b"x" * part
            left -= part

    return StreamingResponse(body(), media_type="application/octet-stream")


async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(f"echo: {text}")
    except WebSocketDisconnect:
        pass


app = Starlette(
    routes=[
        Route("/", index),
        Route("/echo", echo, methods=["POST", "PUT"]),
        Route("/headers", headers),
        Route("/slow", slow),
        Route("/sse", sse),
        Route("/big", big),
        WebSocketRoute("/ws", ws),
    ]
)

if __name__ == "__main__":
    starts = os.environ.get("SIESTA_TEST_STARTS")
    if starts:
        with open(starts, "a") as f:
            f.write(f"{os.getpid()} {time.time()}\n")
    print(json.dumps({"starting": SESSION, "pid": os.getpid()}), flush=True)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        lifespan="off",
        backlog=2048,
    )
