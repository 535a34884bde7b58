"""Connections to backends, and the pool that keeps them alive between requests.

A `ClientConnection` borrows an `UpstreamConnection` for one request, writes the
request into it, and gets the response back through the `ResponseSink` calls.
Idle connections wait in the `UpstreamPool`, one list per backend endpoint.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

import httptools

from siesta.core.model import Endpoint

from .http import HOP_BY_HOP, extra_hop_headers, without

MAX_IDLE_PER_ENDPOINT = 256


class ResponseSink(Protocol):
    """Where an upstream connection delivers the response it reads."""

    def response_head(self, status: int, phrase: bytes, lines: list[bytes], sized: bool) -> None:
        """The response's status and header lines (hop-by-hop ones removed)."""

    def response_body(self, data: bytes) -> None: ...
    def response_done(self) -> None: ...
    def response_failed(self, why: str) -> None: ...
    def tunnel_data(self, data: bytes) -> None: ...
    def tunnel_closed(self) -> None: ...
    def pause_upstream(self) -> None: ...
    def resume_upstream(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to a backend, carrying one request at a time."""

    def __init__(self, pool: UpstreamPool, endpoint: Endpoint):
        self.pool = pool
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        self.no_body = False  # the response to HEAD has no body, whatever it says
        self.tunnel = False
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._phrase = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._until_close = False
        self._chunked = False
        self._finished = False
        self._reusable = False

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if self.tunnel:
            if sink is not None:
                sink.tunnel_data(data)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._start_tunnel(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            self._fail(f"the backend sent a malformed response ({exc})")
        if self._finished:
            self._finished = False
            self._recycle()

    def eof_received(self) -> bool | None:
        if self._until_close and self.sink is not None:
            self._until_close = False
            self._complete()  # a response delimited by the end of the connection
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

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.pause_upstream()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.resume_upstream()

    # -- httptools callbacks --------------------------------------------------

    def on_status(self, phrase: bytes) -> None:
        self._phrase += phrase

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        sink = self.sink
        if sink is None:
            return
        parser = self._parser
        status = parser.get_status_code()
        headers, sized = self._response_headers(status)
        self._headers = []
        phrase, self._phrase = self._phrase, b""
        if status == 101:
            sink.response_head(status, phrase, headers, True)
            return
        self._until_close = not sized and not self._chunked
        sink.response_head(status, phrase, headers, sized)
        if self.no_body and status >= 200:
            # httptools cannot be told a HEAD response has no body: start a fresh parser.
            self._parser = httptools.HttpResponseParser(self)
            self._until_close = False
            self._reusable = parser.should_keep_alive()
            self._complete()

    def _response_headers(self, status: int) -> tuple[list[bytes], bool]:
        """Header lines to relay, and whether the body's size is known in advance
        (a Content-Length, or no body at all) rather than chunked or ended by a close."""
        if status == 101:
            return [name + b": " + value for name, value in self._headers], True
        sized = self.no_body or status in (204, 304) or status < 200
        self._chunked = False
        connection = None
        keep: list[tuple[bytes, bytes]] = []
        for name, value in self._headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"transfer-encoding":
                    self._chunked = True
                elif lname == b"connection":
                    connection = value
                continue
            if lname == b"content-length":
                sized = True
            keep.append((lname, name + b": " + value))
        extra = extra_hop_headers(connection)
        if extra:
            keep = without(keep, extra)
        return [line for _, line in keep], sized and not self._chunked

    def on_body(self, body: bytes) -> None:
        if self.sink is not None and not self.no_body:
            self.sink.response_body(body)

    def on_message_complete(self) -> None:
        if self.sink is None or self.no_body:
            return
        if self._parser.get_status_code() < 200:
            return  # 100 Continue and friends: the final response follows
        self._reusable = self._parser.should_keep_alive()
        self._complete()

    # -- requests -------------------------------------------------------------

    def bind(self, sink: ResponseSink, no_body: bool) -> None:
        """Carry the next request for `sink`."""
        self.sink = sink
        self.no_body = no_body
        self._finished = False

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
        self._finished = True
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
