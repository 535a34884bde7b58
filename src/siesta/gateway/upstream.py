"""Connections to backends, and the pool that keeps them alive between requests.

A `ClientConnection` borrows an `UpstreamConnection` for one request, writes the
request into it, and gets the response back through the `ResponseSink` calls.
Idle connections wait in the `UpstreamPool`, one list per backend endpoint.
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import Protocol, cast

import httptools

from siesta.core.model import Activity, Endpoint

from .frames import FrameScanner
from .http import HeadFacts, extra_hop_headers

MAX_IDLE_PER_ENDPOINT = 256


class ResponseSink(Protocol):
    """Where an upstream connection delivers the response it reads."""

    def response_head(self, status: int, status_line: bytes, lines: bytes, framing: int) -> None:
        """The status line (`HTTP/1.x 200 OK`) and the header lines, each ending in CRLF,
        hop-by-hop ones removed; `framing` says how the body that follows is delimited."""

    def response_body(self, data: bytes) -> None:
        """Body bytes as the parser found them: chunk framing removed, nothing after the
        end of the response."""

    def response_done(self) -> None: ...
    def response_failed(self, why: str) -> None: ...
    def flush(self) -> None:
        """What the calls above produced may go out now, in one write."""

    def tunnel_data(self, data: bytes) -> None: ...
    def tunnel_closed(self) -> None: ...
    def pause_upstream(self) -> None: ...
    def resume_upstream(self) -> None: ...


MAX_RESPONSE_HEAD = 256 * 1024

# How a response body is delimited, as the backend sent it.
SIZED = 0  # Content-Length, or no body at all: relayed with the same length
CHUNKED = 1  # chunked: framed again for the client
TO_CLOSE = 2  # ends when the backend closes: framed as chunks for the client


class ExtraBytes(Exception):
    """The backend sent more after a complete response (raised inside the parser)."""


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to a backend, carrying one request at a time.

    httptools frames the response (lengths, chunks); the head is taken from the raw
    bytes and filtered with C-level searches, so no Python runs per header. Body bytes
    are relayed as the parser assigns them to the response, so nothing a backend sends
    after a complete response reaches a client: such bytes close the connection (an
    answer to a request body the backend did not read, say), which is then never pooled.
    """

    def __init__(self, pool: UpstreamPool, endpoint: Endpoint):
        self.pool = pool
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        self.activity: Activity | None = None  # the session's counters, while bound
        self.no_body = False  # the response to HEAD has no body, whatever it says
        self.tunnel = False
        self.frames: FrameScanner | None = None  # a filtered tunnel's backend-side frames
        self._frames_activity: Activity | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._head = b""  # bytes of the head being received
        self._memo: tuple[bytes, bytes, bool, bool] | None = None  # last head seen, filtered
        self._in_head = True
        self._until_close = False
        self._has_body = True
        self._done = False
        self._reusable = False

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        activity = self.activity
        if activity is not None:
            activity.last_activity = monotonic()
            activity.bytes += len(data)
        sink = self.sink
        if self.tunnel:
            frames = self.frames
            if frames is not None and frames.feed(data):  # data frames, not pongs
                quiet = self._frames_activity
                assert quiet is not None
                quiet.last_activity = monotonic()
                quiet.bytes += len(data)
            if sink is not None:
                sink.tunnel_data(data)
            return
        if sink is None:  # idle (pooled, or just answered): nobody asked for these bytes
            self.close()
            return
        if self._in_head:
            self._head += data
            if len(self._head) > MAX_RESPONSE_HEAD:
                self._fail("the backend's response head is too large")
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._head = b""
            self._start_tunnel(data[upgrade.args[0] :])
            return
        except httptools.HttpParserError as exc:
            if not self._done:
                self._fail(f"the backend sent a malformed response ({exc})")
                return
            self._reusable = False  # bytes after the end of the response: never reuse
        if not self._done:
            sink.flush()
            return
        self._done = False
        self._complete()
        sink.flush()
        self._recycle()

    def eof_received(self) -> bool | None:
        sink = self.sink
        if self._until_close and sink is not None:
            self._until_close = False
            self._complete()  # a response delimited by the end of the connection
            sink.flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        sink, self.sink = self.sink, None
        if sink is None:
            return
        if self.tunnel:
            sink.tunnel_closed()
        elif self._until_close:
            self._until_close = False
            sink.response_done()
        else:
            sink.response_failed("the backend closed the connection before it answered")
        sink.flush()

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.pause_upstream()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.resume_upstream()

    # -- httptools callbacks --------------------------------------------------

    def on_message_begin(self) -> None:
        if self._done:
            raise ExtraBytes  # a second response in the read that ended the first

    def on_body(self, body: bytes) -> None:
        if self._done:
            raise ExtraBytes  # a body after a HEAD answer's head, say
        sink = self.sink
        if sink is not None:
            sink.response_body(body)

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        head = self._head
        end = head.find(b"\r\n\r\n")
        line_end = head.find(b"\r\n")
        status_line, lines = head[:line_end], head[line_end + 2 : end + 2]
        self._in_head = 100 <= status < 200 and status != 101  # another head follows
        self._head = head[end + 4 :] if self._in_head else b""  # the body comes by on_body
        sink = self.sink
        if sink is None:
            return
        if status == 101:
            sink.response_head(status, status_line, lines, SIZED)
            return
        memo = self._memo
        if memo is not None and memo[0] == lines:
            _, lines, sized, chunked = memo
        else:
            key = lines
            facts = HeadFacts(lines)
            if facts.connection is not None:
                extra = extra_hop_headers(facts.connection)
                if extra:
                    facts.drop(extra)
            lines, sized, chunked = facts.kept, facts.sized, facts.chunked
            # Backends repeat their headers (a Date changes once a second): remember one.
            self._memo = (key, lines, sized, chunked)
        bodyless = self.no_body or status in (204, 304) or status < 200
        framing = SIZED if bodyless or sized else CHUNKED if chunked else TO_CLOSE
        self._until_close = framing == TO_CLOSE
        self._has_body = not bodyless
        sink.response_head(status, status_line, lines, framing)
        if self.no_body and status >= 200:
            # httptools cannot be told a HEAD response has no body: start a fresh parser.
            self._parser = httptools.HttpResponseParser(self)
            self._until_close = False
            self._reusable = parser.should_keep_alive()
            self._done = True

    def on_message_complete(self) -> None:
        if self.sink is None or self.no_body:
            return
        if self._parser.get_status_code() < 200:
            return  # 100 Continue and friends: the final response follows
        self._reusable = self._parser.should_keep_alive()
        self._done = True  # completed once the body bytes of this read went out

    # -- requests -------------------------------------------------------------

    def watch_frames(self, frames: FrameScanner, activity: Activity) -> None:
        """From now on (a tunnel), count only reads that carry websocket data frames."""
        self.frames, self._frames_activity, self.activity = frames, activity, None

    def bind(self, sink: ResponseSink, no_body: bool, activity: Activity | None) -> None:
        """Carry the next request for `sink`, counting traffic on `activity`."""
        self.sink = sink
        self.activity = activity
        self.no_body = no_body
        self._done = False
        self._in_head = True
        self._head = b""

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def sendlines(self, data: list[bytes]) -> None:
        assert self.transport is not None
        self.transport.writelines(data)

    def abandon(self) -> None:
        """The client went away or gave up: this connection is in an unknown state."""
        self.sink = None
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _complete(self) -> None:
        sink, self.sink = self.sink, None
        self.activity = None
        if sink is not None:
            sink.response_done()

    def _recycle(self) -> None:
        if self._reusable and not self.closed and self.sink is None:
            self.pool.put(self)
        else:
            self.close()

    def _fail(self, why: str) -> None:
        sink, self.sink = self.sink, None
        self.close()
        if sink is not None:
            sink.response_failed(why)
            sink.flush()

    def _start_tunnel(self, rest: bytes) -> None:
        self.tunnel = True
        if self.sink is not None and rest:
            self.sink.tunnel_data(rest)


class UpstreamPool:
    """Idle keep-alive connections, by backend endpoint (LIFO: warm sockets first)."""

    def __init__(self) -> None:
        self._idle: dict[Endpoint, list[UpstreamConnection]] = {}

    def get(self, endpoint: Endpoint) -> UpstreamConnection | None:
        idle = self._idle.get(endpoint)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def put(self, conn: UpstreamConnection) -> None:
        idle = self._idle.setdefault(conn.endpoint, [])
        if len(idle) >= MAX_IDLE_PER_ENDPOINT:
            conn.close()
        else:
            idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.endpoint)
        if idle and conn in idle:
            idle.remove(conn)

    def drop(self, endpoint: Endpoint) -> None:
        """Close the idle connections to a backend that is going away."""
        for conn in self._idle.pop(endpoint, []):
            conn.close()

    def close(self) -> None:
        for endpoint in list(self._idle):
            self.drop(endpoint)
