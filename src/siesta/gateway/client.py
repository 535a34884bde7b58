"""One client connection: parse requests with httptools, forward them, relay answers.

Requests on a connection are answered in order (pipelining): the one being
answered is `current`; heads parsed behind it wait in `queue` with reading
paused. Bodies stream both ways with flow control (a full socket buffer on one
side pauses reading on the other). After `101 Switching Protocols` the
connection becomes a byte tunnel. Activity is counted on the session object.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from siesta.core.ignore import ActivityFilter
from siesta.core.model import Activity, Endpoint, Session, State
from siesta.core.routing import Route

from .frames import FrameScanner
from .http import (
    CRLF,
    HOP_BY_HOP,
    LAST_CHUNK,
    chunk,
    error_body,
    extra_hop_headers,
    local_response,
    new_event_id,
    reason,
)
from .upstream import SIZED, UpstreamConnection

if TYPE_CHECKING:
    from .server import Gateway

log = logging.getLogger("siesta.gateway")

# Reasons reading from the client is paused (bit flags).
PIPELINE = 1  # a request waits behind the current one
BUFFER = 2  # body bytes are buffered while no backend connection is ready
UPSTREAM = 4  # the backend's socket buffer is full
TUNNEL_WAIT = 8  # an upgrade waits for the backend's answer
REFUSED = 16  # a malformed request waits for those before it to be answered (`_refuse`)

MAX_BUFFERED_BODY = 256 * 1024
# The largest Content-Length passed on: what a backend reading it into 64 signed bits holds.
MAX_CONTENT_LENGTH = 2**63 - 1
# Methods whose requests rarely carry a body, so backends often leave one unread.
BODYLESS_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"})

WARM = b"warm"
COLD = b"cold"
WARM_END = b"X-Siesta-Wake: warm\r\n\r\n"  # the last header line and the blank line
COLD_END = b"X-Siesta-Wake: cold\r\n\r\n"


class HeadTooLarge(Exception):
    """The request head is over the configured limit."""


class Request:
    """A request as parsed, and where it is in its forwarding.

    Defaults live on the class, so a new request costs two assignments; the hot
    path sets only what differs.
    """

    method = b"GET"
    version = "1.1"
    keep_alive = True
    upgrade = False
    chunked = False
    chunk_out = False  # the response is re-framed as chunks for the client
    host: bytes | None = None
    connection: bytes | None = None  # the Connection header's value
    forwarded_for: bytes | None = None  # X-Forwarded-* as a trusted proxy sent them
    forwarded_proto: bytes | None = None
    forwarded_host: bytes | None = None
    problem: tuple[int, str] | None = None  # why the head is refused (status, reason)
    route_value: bytes | None = None
    lines: list[bytes] = []  # noqa: RUF012 - replaced, never mutated: header lines to forward
    body_done = False
    bodyless = False  # declares no body (no Content-Length above 0, no Transfer-Encoding)
    pending: list[bytes] | None = None  # body bytes held until a backend connection is ready
    buffered = 0
    session: Session | None = None
    upstream: UpstreamConnection | None = None
    wake = WARM  # or COLD: did this request wait for its session to wake?
    has_body = False  # body bytes arrived
    responded = False  # a response head went to the client
    response_done = False
    counted = False  # counted in the session's `inflight`
    hold: asyncio.Task[None] | None = None
    rechecked = False  # held once already while a remote backend's readiness was re-checked
    quiet = False  # served but not activity (the template's `activity.ignore`)
    early = b""  # bytes after an upgrade request's head
    head: bytes | None = None  # the head to send upstream, when already built

    def __init__(self) -> None:
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def header(self, wanted: bytes) -> bytes | None:
        """The value of header `wanted` (lower case), or None."""
        for name, value in self.headers:
            if name.lower() == wanted:
                return value
        return None


class ClientConnection(asyncio.Protocol):
    """The gateway side of one client's TCP connection."""

    def __init__(self, gateway: Gateway):
        self.gw = gateway
        self.transport: asyncio.Transport | None = None
        self.peer = b""
        self.trusted = False  # the peer is a trusted proxy: its X-Forwarded-* are kept
        self.deadline = 0.0  # monotonic; 0 = no deadline (see `expire`)
        self.parser = httptools.HttpRequestParser(self)
        self.parsing: Request | None = None
        self.current: Request | None = None
        self.queue: deque[Request] = deque()
        self.session: Session | None = None  # the session this connection counts for
        # What the bytes read count on: the session's activity, or None while unbound or
        # when the session's template ignores some traffic (then each request decides).
        self.counted: Activity | None = None
        self.ignore: ActivityFilter | None = None  # the bound session's, if it has one
        self.frames: FrameScanner | None = None  # a filtered tunnel's client-side frames
        self.tunnel: UpstreamConnection | None = None
        self.closing = False
        self._paused = 0
        self._write_paused = False
        self._head_size = 0
        self._refusal: tuple[int, str, str | None] | None = None  # answered after the queue
        self._route_header = gateway.route_header
        self._out: list[bytes] = []  # response bytes gathered for one write
        # The last request routed on this connection, and what came of it: a client
        # repeating a request (polling, keep-alive loads) skips header sorting,
        # routing and head building. (target, headers, method, version, route, head)
        self._memo: tuple[bytes, list[tuple[bytes, bytes]], bytes, str, Route, bytes] | None = None
        # A request body's progress, for body_timeout and request_timeout (issue 9): the
        # hot path only counts body callbacks; the sweeper compares (`check_body`).
        self.progress = 0
        self._progress_seen = 0
        self._progress_at = 0.0
        self._body_began = 0.0
        self._watched: Request | None = None  # the request whose body the sweeper follows

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = self.transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if peer else b""
        self.trusted = self.gw.trusts(self.peer)
        self.gw.connections.add(self)
        self.deadline = self.gw.now() + self.gw.keepalive_timeout

    def data_received(self, data: bytes) -> None:
        activity = self.counted
        if activity is not None:
            activity.last_activity = self.gw.now()
            activity.bytes += len(data)
        tunnel = self.tunnel
        if tunnel is not None:
            frames = self.frames
            if frames is not None and frames.feed(data):  # data frames, not pings
                self._count(data)
            tunnel.send(data)
            return
        if self._paused & TUNNEL_WAIT:
            req = self.current
            if req is not None:
                req.early += data
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade_requested(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            if self._head_size > self.gw.max_head_size:  # raised in on_url / on_header
                self._refuse(431, "the request head is larger than the gateway accepts")
            else:
                if isinstance(exc, httptools.HttpParserCallbackError):
                    log.warning("request handling failed on one connection", exc_info=exc)
                    self._refuse(400, "malformed request", detail=repr(exc.__context__))
                else:
                    self._refuse(400, f"malformed request ({exc})")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.gw.connections.discard(self)
        for req in (self.current, *self.queue):
            if req is not None:
                self._abandon(req)
        self.current = None
        self.queue.clear()
        if self.tunnel is not None:
            self.tunnel.abandon()
            self.tunnel = None
        self._bind(None)

    def pause_writing(self) -> None:
        self._write_paused = True
        up = self._upstream()
        if up is not None and up.transport is not None:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        up = self._upstream()
        if up is not None and up.transport is not None:
            up.transport.resume_reading()

    # -- httptools callbacks --------------------------------------------------

    def on_url(self, url: bytes) -> None:
        req = self.parsing
        if req is None:  # a new request begins (no on_message_begin: one callback less)
            req = self.parsing = Request()
            self._head_size = 0
            self.deadline = self.gw.now() + self.gw.header_timeout
        req.target += url
        self._head_size += len(url)
        if self._head_size > self.gw.max_head_size:
            raise HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.parsing
        assert req is not None
        req.headers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.gw.max_head_size:
            raise HeadTooLarge

    def on_headers_complete(self) -> None:
        req = self.parsing
        assert req is not None
        parser = self.parser
        req.method = parser.get_method()
        req.version = parser.get_http_version()
        req.keep_alive = parser.should_keep_alive()
        req.upgrade = parser.should_upgrade()
        self.deadline = 0.0
        if self.current is None:
            self.current = req
            self._dispatch(req)
        else:
            self.queue.append(req)
            self._pause(PIPELINE)

    def _sort_headers(self, req: Request) -> None:
        """One pass over the headers: what routing needs, the lines to forward, and what
        makes the head unacceptable (`req.problem`): RFC 9112 wants exactly one Host in
        HTTP/1.1; a routing header must name one session; only `chunked` is a transfer
        coding the gateway can re-frame; a Content-Length goes on in its plain form."""
        lines = req.lines = []
        dropped = self.gw.dropped_headers
        body = False  # a Content-Length above 0
        for name, value in req.headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"transfer-encoding":
                    req.chunked = True
                    if value.strip().lower() != b"chunked":
                        req.problem = (501, "transfer codings other than chunked are not served")
                elif lname == b"connection":
                    req.connection = (
                        value if req.connection is None else req.connection + b"," + value
                    )
                continue
            if lname in dropped:  # X-Forwarded-*, and identity headers only siesta sets
                if self.trusted:
                    _take_forwarded(req, lname, value)
                continue
            if lname == b"host":
                if req.host is not None:
                    req.problem = (400, "more than one Host header")
                req.host = value
            elif lname == self._route_header:
                if req.route_value is not None:
                    req.problem = (400, f"more than one {name.decode('latin-1')} header")
                req.route_value = value
            elif lname == b"content-length":
                value = _content_length(req, value)
                body = value != b"0"
            lines.append(name + b": " + value + CRLF)
        req.bodyless = not body and not req.chunked
        if req.upgrade:
            _check_upgrade(req, body)
        if req.target[:1] != b"/":
            _origin_form(req)
        if req.version != "1.1":
            _check_old_version(req)
        elif req.host is None:
            req.problem = (400, "an HTTP/1.1 request needs a Host header")
        if req.problem is not None:
            req.keep_alive = False  # after a malformed head, nothing more is read

    def on_body(self, body: bytes) -> None:
        req = self.parsing
        assert req is not None
        req.has_body = True
        self.progress += 1
        if self.ignore is not None and not req.quiet:
            self._count(body)  # a filtered session's counted request: its body is activity
        up = req.upstream
        if up is not None:
            if req.chunked:
                up.sendlines(chunk(body))
            else:
                up.send(body)
        elif not req.response_done:
            if req.pending is None:
                req.pending = []
            req.pending.append(body)
            req.buffered += len(body)
            if req.buffered > MAX_BUFFERED_BODY:
                self._pause(BUFFER)

    def on_message_complete(self) -> None:
        req = self.parsing
        assert req is not None
        self.parsing = None
        req.body_done = True
        if req.upstream is not None and req.chunked:
            req.upstream.send(LAST_CHUNK)
        if req.response_done and req is self.current:
            self._next()

    # -- dispatch -------------------------------------------------------------

    def _dispatch(self, req: Request) -> None:
        gw = self.gw
        memo = self._memo
        if (
            memo is not None
            and memo[0] == req.target
            and memo[1] == req.headers
            and memo[2] == req.method
            and memo[3] == req.version
        ):
            route = memo[4]
            req.head = memo[5]
        else:
            self._sort_headers(req)
            if req.problem is not None:
                self.respond(req, *req.problem)
                return
            route = gw.router.route(req.target, req.host, req.route_value)
        auth = gw.auth
        if auth is not None:  # gateway.auth decides first: before a wake, before a 404
            auth.admit(self, req, route)
            return
        if route.session is None:
            self.unrouted(req, route)
            return
        session = gw.lifecycle.get(route.session)
        if session is None:
            self.respond(req, 404, f"unknown session {route.session!r}")
            return
        self.routed(req, route, session)

    def unrouted(self, req: Request, route: Route) -> None:
        """Answer a request whose route names no session: a redirect, or 404."""
        if route.redirect is not None:
            self.respond(req, 308, "moved", headers=((b"Location", route.redirect),))
        else:
            self.respond(req, 404, route.error or "no session")

    def routed(self, req: Request, route: Route, session: Session) -> None:
        """Forward `req` to `session` (holding it while the session wakes); the auth gate
        calls this once it admitted the request."""
        gw = self.gw
        if req.head is None and not req.upgrade and not req.chunked:
            target = req.target
            req.target = route.target
            req.head = self._request_head(req)
            if gw.memo_heads:  # off when auth adds per-identity headers
                self._memo = (target, req.headers, req.method, req.version, route, req.head)
        req.target = route.target
        req.session = session
        self._bind(session)
        ignore = self.ignore
        if ignore is not None:  # only templates that ignore some traffic pay for this
            req.quiet = ignore.ignores(req.method, _app_path(route.target, session), _agent(req))
        if session.state is State.AWAKE and session.endpoint is not None:
            self.forward(req, session.endpoint)
        elif req.quiet and session.state in QUIET_REFUSED:
            # traffic that is not activity (activity.ignore) never wakes a session: else
            # an open, untouched tab's polls would wake what its silence put to sleep
            why = (
                f"session {session.id!r} is asleep; this request (activity.ignore) does not wake it"
            )
            self.respond(req, 503, why, headers=QUIET_RETRY)
        else:
            gw.activator.hold(self, req, session)

    def forward(self, req: Request, endpoint: Endpoint) -> None:
        """Send `req` to the backend at `endpoint` (the session is awake)."""
        session = req.session
        assert session is not None
        activity: Activity | None = session.activity
        assert activity is not None
        activity.inflight += 1
        req.counted = True
        if req.quiet:
            activity = None  # served, not activity: the response is not counted either
        else:
            activity.requests += 1
            if self.ignore is not None:  # a filtered session counts its requests here
                self._count(req.head or b"")
        up = self.gw.pool.get(endpoint)
        if up is not None:
            if req.head is not None and not req.pending and not self._write_paused:
                # The common case of `_attach`: the head is ready and no body is waiting
                # (body bytes that come later go straight to `up` from `on_body`).
                req.upstream = up
                up.bind(self, req.method == b"HEAD", activity)
                up.transport.write(req.head)  # type: ignore[union-attr]
            else:
                self._attach(req, up)
        else:
            req.hold = asyncio.ensure_future(self._connect(req, endpoint))

    async def _connect(self, req: Request, endpoint: Endpoint) -> None:
        loop = asyncio.get_running_loop()
        pool = self.gw.pool
        try:
            _, up = await loop.create_connection(
                lambda: UpstreamConnection(pool, endpoint), endpoint.host, endpoint.port
            )
        except OSError as exc:
            req.hold = None
            self._finish_count(req)
            if not self.gw.activator.recheck(self, req):  # a remote backend may be moving
                detail = f"connecting to {endpoint} failed: {exc.strerror or exc}"
                self.respond(
                    req, 502, "the session's backend refused the connection", detail=detail
                )
            return
        req.hold = None
        if self.closing or req is not self.current:
            up.close()
            return
        self._attach(req, up)

    def _attach(self, req: Request, up: UpstreamConnection) -> None:
        req.upstream = up
        session = req.session
        counted = session.activity if session is not None and not req.quiet else None
        up.bind(self, req.method == b"HEAD", counted)
        up.send(req.head or self._request_head(req))
        if req.pending:
            for data in req.pending:
                up.sendlines(chunk(data)) if req.chunked else up.send(data)
            req.pending = None
            req.buffered = 0
            self._resume(BUFFER)
        if req.body_done and req.chunked:
            up.send(LAST_CHUNK)
        if self._write_paused and up.transport is not None:
            up.transport.pause_reading()
        # Bytes after an upgrade request's head wait for the backend's 101 (`_start_tunnel`):
        # a backend that refuses the upgrade would read them as requests of its own.

    def _request_head(self, req: Request) -> bytes:
        lines = req.lines
        if req.connection is not None:
            extra = extra_hop_headers(req.connection)
            if extra:
                lines = [line for line in lines if line.split(b":", 1)[0].lower() not in extra]
        # An HTTP/1.0 client's request goes out as 1.0, so no chunked answer comes back.
        version = b" HTTP/1.1\r\n" if req.version == "1.1" else b" HTTP/1.0\r\n"
        head = [req.method, b" ", req.target, version, *lines]
        if req.chunked:
            head.append(b"Transfer-Encoding: chunked\r\n")
        if req.upgrade:
            head.append(b"Connection: Upgrade\r\nUpgrade: ")
            head.append((req.header(b"upgrade") or b"websocket") + CRLF)
        forwarded = req.forwarded_for  # set only when the peer is a trusted proxy
        head.append(b"X-Forwarded-For: ")
        head.append(forwarded + b", " + self.peer if forwarded else self.peer)
        head.append(b"\r\nX-Forwarded-Proto: ")
        head.append(req.forwarded_proto or b"http")
        head.append(CRLF)
        host = req.forwarded_host or req.host
        if host:
            head.append(b"X-Forwarded-Host: " + host + CRLF)
        head.append(CRLF)
        return b"".join(head)

    # -- ResponseSink (called by the upstream connection) ---------------------

    def response_head(self, status: int, status_line: bytes, lines: bytes, framing: int) -> None:
        req = self.current
        if req is None:
            return
        if status == 502 and self._recheck_bad_gateway(req):
            return
        out = self._out
        out.append(
            b"HTTP/1.1" + status_line[8:] + CRLF + lines
            if status_line[:7] == b"HTTP/1."
            else b"HTTP/1.1 %d %s\r\n" % (status, reason(status)) + lines
        )
        if status >= 200 and status != 101:
            req.responded = True
            if framing != SIZED:  # chunked, or up to the close: framed as chunks here
                if req.version == "1.1":
                    req.chunk_out = True
                    out.append(b"Transfer-Encoding: chunked\r\n")
                else:
                    req.keep_alive = False  # an HTTP/1.0 client reads to the close
            if not req.body_done or req.upgrade:
                req.keep_alive = False  # answered before the body ended, or a refused upgrade
            if not req.keep_alive:
                out.append(b"Connection: close\r\n")
            elif req.version == "1.0":
                out.append(b"Connection: keep-alive\r\n")
            out.append(WARM_END if req.wake is WARM else COLD_END)
        else:
            out.append(CRLF)
        if status == 101:
            self.flush()
            self._start_tunnel(req)

    def _recheck_bad_gateway(self, req: Request) -> bool:
        """A remote backend's address answered 502 (after a wake, a pod terminating
        behind it): drop that answer and hold `req` while readiness is checked again,
        then send it again (served, or 503). Only for a request sent whole and without a
        body (it can be sent twice), once per request; False passes the 502 on."""
        if req.has_body or not req.body_done or req.upgrade or req.rechecked:
            return False
        up = req.upstream
        if not self.gw.activator.recheck(self, req):  # a local backend's 502 is its own
            return False
        req.upstream = None
        if up is not None:
            up.abandon()  # the rest of its 502 is dropped, the connection never reused
        self._finish_count(req)
        return True

    def response_body(self, data: bytes) -> None:
        req = self.current
        if req is None:
            return
        if req.chunk_out:
            self._out.extend(chunk(data))
        else:
            self._out.append(data)

    def response_done(self) -> None:
        req = self.current
        if req is None:
            return
        if req.chunk_out:
            self._out.append(LAST_CHUNK)
        req.response_done = True
        up = req.upstream
        if up is not None:
            if not req.body_done:
                up.close()  # answered early: its request body was cut, never reuse it
            elif req.has_body and req.method in BODYLESS_METHODS:
                up.close()  # a backend may leave such a body unread, and answer it later
            req.upstream = None
        self._finish_count(req)
        if not req.keep_alive:
            self._close()
        elif not req.body_done:
            return
        elif self.queue or self._paused:
            self._next()
        else:  # the common case of `_next`, inline: nothing waits, nothing paused
            self.current = None
            if self.parsing is None:
                self.deadline = self.gw.now() + self.gw.keepalive_timeout

    def flush(self) -> None:
        out = self._out
        if out:
            if self.transport is not None and not self.closing:
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def response_failed(self, why: str) -> None:
        req = self.current
        if req is None:
            return
        req.upstream = None
        self._finish_count(req)
        if req.responded:
            log.warning("a response from the backend of %s broke: %s", self._who(req), why)
            self._close()  # part of a response went out: only closing can say it broke
        else:
            self.respond(req, 502, "the session's backend gave no valid answer", detail=why)

    def tunnel_data(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def tunnel_closed(self) -> None:
        self.tunnel = None
        self._close()

    def pause_upstream(self) -> None:
        self._pause(UPSTREAM)

    def resume_upstream(self) -> None:
        self._resume(UPSTREAM)

    # -- answers of the gateway's own -----------------------------------------

    def respond(
        self,
        req: Request,
        status: int,
        why: str,
        *,
        detail: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        body: bytes | None = None,
        content_type: bytes = b"text/plain; charset=utf-8",
    ) -> None:
        """Answer `req` from the gateway itself (errors, redirects, the waiting page).

        `why` is the class of problem, which the client reads. An error (400 and up)
        without a `body` of its own also carries an event id, in its text and in
        `X-Siesta-Event`; the log line with that id holds `detail`, what went wrong in
        terms only operators should read (paths, addresses, backend output).
        """
        if self.transport is None or self.closing or req.responded:
            return
        if req is not self.current:
            return  # pipelined behind another: answered when its turn comes
        self.flush()
        req.responded = req.response_done = True
        # Keep the connection when the request's body is read, or when it has none (an
        # answer given at its head, before llhttp saw the message's end).
        keep_alive = req.keep_alive and (req.body_done or req.bodyless) and not req.upgrade
        req.keep_alive = keep_alive
        if body is not None:
            payload = body
        elif status >= 400:
            event = new_event_id()
            headers = (*headers, (b"X-Siesta-Event", event.encode()))
            payload = error_body(status, why, event).encode()
            self._log_error(req, status, why, detail, event)
        else:
            payload = error_body(status, why).encode()
        self.transport.write(
            local_response(
                status,
                payload,
                keep_alive=keep_alive,
                headers=headers,
                content_type=content_type,
                head_only=req.method == b"HEAD",
            )
        )
        if not keep_alive:
            self._close()
        elif req.body_done:
            self._next()

    def _log_error(
        self, req: Request, status: int, why: str, detail: str | None, event: str
    ) -> None:
        """One line per error answer: at WARNING when siesta or a backend failed (5xx),
        at DEBUG when the client sent something wrong (a flood of 404s is not news)."""
        level = logging.WARNING if status >= 500 else logging.DEBUG
        if log.isEnabledFor(level):
            more = f": {detail}" if detail else ""
            log.log(
                level, "event %s: %s answered %d, %s%s", event, self._who(req), status, why, more
            )

    def _who(self, req: Request) -> str:
        """The request and its client, for the log."""
        target = req.target[:200].decode("latin-1")
        return f"{req.method.decode('latin-1')} {target} from {self.peer.decode()}"

    def _refuse(self, status: int, why: str, *, detail: str | None = None) -> None:
        """A request that cannot be parsed: answer if we can, then close. The requests
        before it on the connection are answered first."""
        req = self.current
        if req is not None and req is not self.parsing and not self.closing:
            self._refuse_later(req, status, why, detail)
            return
        if req is None or req is self.parsing:
            req = req or self.parsing or Request()
            self.current = req
            req.keep_alive = False
            if req.upstream is not None:
                req.upstream.abandon()
                req.upstream = None
                self._finish_count(req)
            if not req.responded:
                req.body_done = True
                self.respond(req, status, why, detail=detail)
        self._close()

    def _refuse_later(self, current: Request, status: int, why: str, detail: str | None) -> None:
        """A request behind the one in flight is malformed: stop reading, drop it, and
        answer it once those before it are answered (`_next`). Bytes after a request that
        closes the connection are not requests at all (RFC 9112 9.6): they are ignored."""
        bad = self.parsing
        self.parsing = None
        if bad is not None and bad in self.queue:  # its head was whole, its body was not
            self.queue.remove(bad)
        last = self.queue[-1] if self.queue else current
        if last.keep_alive:
            self._refusal = (status, why, detail)
        self._pause(REFUSED)

    # -- connection state -----------------------------------------------------

    def _next(self) -> None:
        """The current request is done: start the next one in the pipeline, if any."""
        if self.closing:
            return  # nothing more is forwarded on a connection that closes (what is parsed
            # behind the current request queues up, and goes with the connection)
        self.current = None
        if self.queue:
            req = self.queue.popleft()
            self.current = req
            if not self.queue:
                self._resume(PIPELINE)
            self._dispatch(req)
        elif self._refusal is not None:
            status, why, detail = self._refusal
            self._refusal = None
            req = self.current = Request()
            req.keep_alive = False
            req.body_done = True
            self.respond(req, status, why, detail=detail)
        else:
            self._resume(PIPELINE)
            if self.parsing is None:
                self.deadline = self.gw.now() + self.gw.keepalive_timeout

    def expire(self) -> None:
        """The sweeper found this connection past its deadline."""
        if self.parsing is not None and self.current is None:
            self._refuse(408, "the request head did not arrive in time")
        self._close()

    def check_body(self, now: float) -> None:
        """The sweeper found a request body under way (`parsing`, its head complete):
        408 and close when no byte of it came for `body_timeout` (while the gateway itself
        paused reading, the clock stands still), or it took over `request_timeout`."""
        req = self.parsing
        if req is not self._watched:  # seen for the first time
            self._watched = req
            self._body_began = self._progress_at = now
            self._progress_seen = self.progress
            return
        gw = self.gw
        if self._paused or self.progress != self._progress_seen:
            self._progress_seen = self.progress
            self._progress_at = now
        elif gw.body_timeout and now - self._progress_at > gw.body_timeout:
            self._watched = None
            self._refuse(408, f"the request body stalled for {gw.body_timeout:g}s")
            return
        if gw.request_timeout and now - self._body_began > gw.request_timeout:
            self._watched = None
            self._refuse(408, f"the request body took longer than {gw.request_timeout:g}s")

    def _finish_count(self, req: Request) -> None:
        if req.counted:
            req.counted = False
            session = req.session
            if session is not None:
                activity = session.activity
                activity.inflight -= 1
                if activity.watch is not None:
                    activity.fell()  # the controller waits for this to check the policy

    def _abandon(self, req: Request) -> None:
        if req.hold is not None:
            req.hold.cancel()
            req.hold = None
        if req.upstream is not None:
            req.upstream.abandon()
            req.upstream = None
        self._finish_count(req)

    def _bind(self, session: Session | None) -> None:
        old = self.session
        if old is session:
            return
        if old is not None:
            activity = old.activity
            activity.connections -= 1
            if activity.watch is not None:
                activity.fell()  # the controller waits for this to check the policy
        if session is not None:
            session.activity.connections += 1
        self.session = session
        ignore = self.ignore = self.gw.ignore.get(session.template) if session else None
        self.counted = session.activity if session is not None and ignore is None else None

    def _count(self, data: bytes) -> None:
        """Count `data` as activity of the bound session (filtered sessions only)."""
        session = self.session
        if session is not None:
            activity = session.activity
            activity.last_activity = self.gw.now()
            activity.bytes += len(data)

    def _upstream(self) -> UpstreamConnection | None:
        if self.tunnel is not None:
            return self.tunnel
        req = self.current
        return req.upstream if req is not None else None

    def _pause(self, reason: int) -> None:
        if not self._paused and self.transport is not None and not self.closing:
            self.transport.pause_reading()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if not self._paused and self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def close(self) -> None:
        """Close the connection once what was written has gone out."""
        self._close()

    def _close(self) -> None:
        self.flush()
        if not self.closing and self.transport is not None:
            self.closing = True
            self.transport.close()

    # -- upgrades (websockets) ------------------------------------------------

    def _upgrade_requested(self, rest: bytes) -> None:
        req = self.queue[-1] if self.queue else self.current  # it may wait behind another
        if req is None or not req.upgrade:
            self._refuse(400, "unexpected upgrade")
            return
        req.body_done = True
        req.early += rest
        self.parsing = None
        self._pause(TUNNEL_WAIT)

    def _start_tunnel(self, req: Request) -> None:
        up = req.upstream
        assert up is not None
        self.tunnel = up
        up.tunnel = True
        ignore = self.ignore
        if ignore is not None and req.session is not None and not req.quiet:
            # a filtered session's websocket; an ignored one (its upgrade request matched
            # activity.ignore, e.g. Jupyter's event stream) counts none of its frames
            if ignore.websocket_control:
                self.frames = FrameScanner()
                up.watch_frames(FrameScanner(), req.session.activity)
            else:
                self.counted = up.activity = req.session.activity
        self._finish_count(req)  # answered; from now on it is an open connection
        req.response_done = True
        self.current = None
        if req.early:
            up.send(req.early)
            req.early = b""
        self._resume(TUNNEL_WAIT)


QUIET_REFUSED = frozenset((State.ASLEEP, State.STOPPING, State.FAILED))
"""States in which an ignored request is answered 503 rather than held for a wake."""
QUIET_RETRY = ((b"Retry-After", b"10"),)
"""Retry-After for an ignored request to a sleeping session: polls come back slowly."""


def _app_path(target: bytes, session: Session) -> bytes:
    """`target` without the session's /s/<id> prefix, when the prefix was kept."""
    if target.startswith(b"/s/"):
        prefix = b"/s/" + session.id.encode()
        if target.startswith(prefix) and target[len(prefix) : len(prefix) + 1] in (b"/", b""):
            return target[len(prefix) :] or b"/"
    return target


def _agent(req: Request) -> bytes | None:
    return req.header(b"user-agent")


def _take_forwarded(req: Request, lname: bytes, value: bytes) -> None:
    """Keep an X-Forwarded-* header a trusted proxy sent; repeated X-Forwarded-For lines
    are one list, in order."""
    if lname == b"x-forwarded-for":
        seen = req.forwarded_for
        req.forwarded_for = value if seen is None else seen + b", " + value
    elif lname == b"x-forwarded-proto":
        req.forwarded_proto = value
    elif lname == b"x-forwarded-host":
        req.forwarded_host = value


def _check_old_version(req: Request) -> None:
    """HTTP/1.0 is served, without transfer codings (RFC 9112 6.1: faulty framing);
    anything else (0.9, 2.0 over this connection) is not."""
    if req.version != "1.0":
        req.problem = (505, "only HTTP/1.1 and HTTP/1.0 are served")
    elif req.chunked:
        req.problem = (400, "Transfer-Encoding is not allowed in an HTTP/1.0 request")


def _content_length(req: Request, value: bytes) -> bytes:
    """The Content-Length to pass on. llhttp took `value` for digits with optional
    whitespace; leading zeros (octal to some parsers) and the whitespace go, and a value
    past 64 signed bits is refused, since a backend could wrap it into a small one."""
    if value.isdigit() and (value[:1] != b"0" or len(value) == 1) and len(value) < 19:
        return value  # the common case: already plain
    try:
        size = int(value)
    except ValueError:
        req.problem = (400, "an invalid Content-Length")
        return value
    if size > MAX_CONTENT_LENGTH:
        req.problem = (413, "the request body is larger than the gateway accepts")
    return b"%d" % size


def _check_upgrade(req: Request, body: bool) -> None:
    """An upgrade is a websocket-style handshake without a body: llhttp ends the message at
    its head, so body bytes would reach the backend as the new protocol's first bytes (or
    as requests, when it refuses). CONNECT tunnels are not served."""
    if req.method == b"CONNECT":
        req.problem = (501, "CONNECT is not served")
    elif body or req.chunked:
        req.problem = (400, "an upgrade request with a body is not served")


def _origin_form(req: Request) -> None:
    """An absolute-form target (`http://host/path`, RFC 9112 3.2.2): its host is the
    request's, so it must be the Host header's too (400 otherwise: the gateway would route
    by one name while the backend reads the other); routing and the backend get the
    origin form (`/path`). Other forms are left to routing."""
    scheme, sep, rest = req.target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return
    cut = len(rest)
    for mark in (b"/", b"?"):
        at = rest.find(mark)
        if 0 <= at < cut:
            cut = at
    authority, path = rest[:cut].lower(), rest[cut:]
    if req.host is not None and req.host.strip().lower() != authority:
        req.problem = (400, "the request target names another host than the Host header")
    req.target = path if path[:1] == b"/" else b"/" + path
