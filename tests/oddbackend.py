"""Backends that misbehave the way real ones do, for the strictness tests.

    python tests/oddbackend.py PORT MODE

MODE is one of:

* ``basic``: Python's `http.server` (BaseHTTPRequestHandler, HTTP/1.1 keep-alive), which
  never reads a GET body: the body is taken as the next request and answered too. Every
  answer says ``path=<the path it served>``; every request line it reads is appended to
  the file named by $ODD_LOG, so a test can see what the backend took for requests.
* ``extra``: answers each request, then in the same write a second, unasked-for response
  (``EXTRA``), the way a desynchronised backend would.
* ``late``: answers, then sends the unasked-for response 50 ms later, when the gateway
  has pooled the connection; writes ``connection`` to $ODD_LOG for each new connection
  and ``closed by the peer`` when the gateway closes one.
* ``head``: answers HEAD with a body it should not send.
"""

from __future__ import annotations

import asyncio
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EXTRA = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEXTRA"


class _Basic(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        _note(self.requestline)
        body = f"path={self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_DELETE = _answer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._answer()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _note(line: str) -> None:
    log = os.environ.get("ODD_LOG")
    if log:
        with open(log, "a") as out:
            out.write(line + "\n")


async def _raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: str) -> None:
    _note("connection")
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            method = head.split(b" ", 1)[0]
            body = b"ok\n"
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
            if method != b"HEAD" or mode == "head":
                answer += body
            if mode == "extra":
                writer.write(answer + EXTRA)
            elif mode == "late":
                writer.write(answer)
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(EXTRA)
            else:
                writer.write(answer)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        _note("closed by the peer")
    finally:
        writer.close()


async def _serve_raw(port: int, mode: str) -> None:
    server = await asyncio.start_server(
        lambda r, w: _raw(r, w, mode), "127.0.0.1", port, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    port, mode = int(sys.argv[1]), sys.argv[2]
    if mode == "basic":
        ThreadingHTTPServer(("127.0.0.1", port), _Basic).serve_forever()
    else:
        asyncio.run(_serve_raw(port, mode))


if __name__ == "__main__":
    main()
