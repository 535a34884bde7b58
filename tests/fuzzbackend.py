"""A backend that records exactly what it receives, for the fuzzer and the smuggling corpus.

    python tests/fuzzbackend.py PORT SESSION CONTROL_DIR

Every connection's bytes are kept as they arrived, and parsed with h11 (a strict parser
that shares no code with the gateway's llhttp), so a test sees both what reached the
backend and what a careful server took for requests. Each request is answered 200 with
`X-Fuzz-Seen: SESSION CONN.N TOKEN` (the token in its target identifies the exchange)
and a body naming the same and the target; a request h11 refuses gets 400
`X-Fuzz-Rejected` and the connection is closed. Upgrades and CONNECT are refused (a 200
without 101, a 405), so any bytes after them are parsed as requests.

The backend also listens on a control port, written to CONTROL_DIR/SESSION.ctl. A client
that connects there gets, as one JSON document, what arrived since the last such dump
(once no byte has arrived for a short while, so bytes in flight are not missed):
`{"conns": {id: {"raw": base64, "closed": bool}}, "requests": [...], "errors": [...]}`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sys
import time
from typing import Any

import h11

TOKEN = re.compile(rb"Tk[0-9a-f]{8}kT")  # an exchange's token (tests/fuzzing.py)

QUIET = 0.03  # seconds without a byte before a dump is taken
QUIET_MAX = 3.0  # a dump waits no longer than this for quiet


class Recorder:
    """What every connection received, and the requests and refusals h11 found in it."""

    def __init__(self, session: str):
        self.session = session
        self.conns: dict[int, Conn] = {}
        self.requests: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.last_byte = time.monotonic()
        self._next_id = 0

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def dump(self, writer: asyncio.StreamWriter) -> None:
        """Write what arrived since the last dump, once quiet; then forget it."""
        deadline = time.monotonic() + QUIET_MAX
        # Quiet is the absence of events: polled, with a deadline.
        while time.monotonic() - self.last_byte < QUIET and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(QUIET / 3)
        conns = {}
        for cid, conn in list(self.conns.items()):
            fresh = bytes(conn.raw[conn.dumped :])
            conn.dumped = len(conn.raw)
            if fresh or conn.closed:
                conns[cid] = {"raw": base64.b64encode(fresh).decode(), "closed": conn.closed}
            if conn.closed:
                del self.conns[cid]
        answer = {"conns": conns, "requests": self.requests, "errors": self.errors}
        self.requests, self.errors = [], []
        writer.write(json.dumps(answer).encode())
        await writer.drain()
        writer.close()


class Conn(asyncio.Protocol):
    """One connection from the gateway."""

    def __init__(self, recorder: Recorder):
        self.rec = recorder
        self.id = recorder.new_id()
        self.raw = bytearray()
        self.dumped = 0
        self.closed = False
        self.h11 = h11.Connection(h11.SERVER)
        self.start = 0  # stream offset where the request being read began
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.count = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.rec.conns[self.id] = self

    def data_received(self, data: bytes) -> None:
        self.rec.last_byte = time.monotonic()
        self.raw += data
        if self.h11.their_state is h11.ERROR or self.h11.our_state is h11.MUST_CLOSE:
            return  # refused or closing: recorded, not parsed
        self.h11.receive_data(data)
        self._events()

    def eof_received(self) -> bool:
        # A request cut by the close stays in the record as bytes after the last request.
        self.rec.last_byte = time.monotonic()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.rec.last_byte = time.monotonic()
        self.closed = True

    def _offset(self) -> int:
        """Where h11 is in the stream: the bytes it has not used yet are not counted."""
        return len(self.raw) - len(self.h11.trailing_data[0])

    def _events(self) -> None:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._refuse(str(exc))
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if event is h11.PAUSED and self.h11.our_state is h11.DONE:
                    self._next_cycle()
                    continue
                return
            if isinstance(event, h11.Request):
                self.request = event
                self.body = bytearray()
            elif isinstance(event, h11.Data):
                self.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self._answer()
                if self.h11.our_state is h11.MUST_CLOSE:
                    self._close()
                    return
                self._next_cycle()  # an upgrade answered without 101 goes back to requests
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return

    def _next_cycle(self) -> None:
        try:
            self.h11.start_next_cycle()
        except h11.LocalProtocolError:
            self._close()

    def _answer(self) -> None:
        req = self.request
        assert req is not None
        self.count += 1
        end = self._offset()
        token = TOKEN.search(req.target)
        seen = (
            f"{self.rec.session} {self.id}.{self.count} {token.group().decode() if token else '-'}"
        )
        self.rec.requests.append(
            {
                "conn": self.id,
                "n": self.count,
                "start": self.start,
                "end": end,
                "method": req.method.decode("latin-1"),
                "target": req.target.decode("latin-1"),
                "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in req.headers],
                "body": base64.b64encode(bytes(self.body)).decode(),
            }
        )
        self.start = end
        refused = req.method == b"CONNECT"
        body = b"seen %s target %s\n" % (seen.encode(), req.target)
        headers = [("X-Fuzz-Seen", seen), ("Content-Length", str(len(body)))]
        self._send(h11.Response(status_code=405 if refused else 200, headers=headers))
        if req.method != b"HEAD":
            self._send(h11.Data(data=body))
        self._send(h11.EndOfMessage())

    def _refuse(self, why: str) -> None:
        self.rec.errors.append(
            {"conn": self.id, "start": self.start, "error": why, "session": self.rec.session}
        )
        if self.transport is not None:
            body = b"backend refused: " + why.encode("latin-1", "replace") + b"\n"
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\nX-Fuzz-Rejected: %s\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (self.rec.session.encode(), len(body), body)
            )
        self._close()

    def _send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data and self.transport is not None:
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _control(recorder: Recorder, reader: Any, writer: asyncio.StreamWriter) -> None:
    await recorder.dump(writer)


def _announce(path: str, port: int) -> None:
    """Write the control port where the test looks for it, whole or not at all."""
    with open(path + ".tmp", "w") as out:
        out.write(str(port))
    os.replace(path + ".tmp", path)


async def main(port: int, session: str, control_dir: str) -> None:
    recorder = Recorder(session)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(recorder), "127.0.0.1", port)
    control = await asyncio.start_server(lambda r, w: _control(recorder, r, w), "127.0.0.1", 0)
    _announce(os.path.join(control_dir, f"{session}.ctl"), control.sockets[0].getsockname()[1])
    async with server, control:
        await asyncio.gather(server.serve_forever(), control.serve_forever())


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
