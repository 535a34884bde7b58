"""The fuzzer's harness: a real siesta in front of recording backends, conversations over
real sockets, and the checks that no byte of one exchange reaches another.

Used by tests/test_fuzz_gateway.py (Hypothesis) and tests/test_smuggling_corpus.py.

Every request a test sends carries a token of its own (`Tk` + 8 hex digits + `kT`) in its
target, in an `X-Tok` header and in its body; a conversation (one client connection) owns
the tokens of its requests. The backends (tests/fuzzbackend.py) record every byte they
receive and parse it with h11. After a round of conversations, `Round.check` asserts:

* the gateway lives: every conversation ended in a close (after its requests, and a
  filler of garbage that completes any body still awaited) before a deadline, and the
  gateway's log holds no traceback;
* a client receives only tokens of its own conversation, and answers from backends in
  the order of its requests, each from the session its request named;
* a backend receives only requests the gateway framed (each ends with the gateway's
  X-Forwarded-* lines), no request twice, none for another session, none that h11
  refuses, and no bytes of two conversations in one request;
* a request that is well-formed (`clean`) reaches its backend unchanged in method and
  body, and its answer reaches its client.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import itertools
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from .conftest import START_DEADLINE, accepts, free_port, wait_for

FUZZ_BACKEND = str(Path(__file__).with_name("fuzzbackend.py"))
SESSIONS = ("alice", "bob")
TOKEN = re.compile(rb"Tk[0-9a-f]{8}kT")
TOKEN_SIZE = 12
PLACEHOLDER = b"Tk@@@@@@@@kT"  # a token's place in corpus files (same length as a token)
FORWARDED_TAIL = ("x-forwarded-for", "x-forwarded-proto")  # the gateway's own last lines

IDLE = 0.1  # seconds without a byte, all requests sent, before the filler goes
DEADLINE = 10.0  # seconds a conversation may take in all: past it, the gateway hung
FILLER_SIZE = 4096  # bytes of filler: more than any body a generated request leaves open

_tokens = itertools.count(int(time.time() * 1000) % 0x10000000)


def new_token() -> bytes:
    """A token no other exchange of this test run has."""
    return b"Tk%08xkT" % next(_tokens)


@dataclass
class Exchange:
    """One request as the client sends it."""

    token: bytes
    session: str | None  # the session its target names, if that session exists
    method: bytes
    wire: bytes
    body: bytes | None = None  # for a clean request: the body its backend must get
    clean: bool = False  # well-formed in every way: must be served unchanged
    closes: bool = False  # asks for the connection to close after its answer


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def seen(self) -> tuple[str, bytes] | None:
        """(session, token) of the backend request this answers, if a backend did."""
        seen = self.headers.get("x-fuzz-seen")
        if seen is None:
            return None
        session, _, token = seen.split(" ")
        return session, token.encode()


@dataclass
class Conversation:
    """One client connection: its requests, how they are cut into writes, what came back."""

    exchanges: list[Exchange]
    cuts: list[int] = field(default_factory=list)
    received: bytes = b""
    closed: bool = False
    hung: bool = False
    reset: bool = False
    early: bool = False  # the filler went before every answer was in (nothing came for IDLE)

    @property
    def wire(self) -> bytes:
        return b"".join(e.wire for e in self.exchanges)

    def pieces(self) -> list[bytes]:
        wire = self.wire
        points = sorted({c for c in self.cuts if 0 < c < len(wire)})
        bounds = [0, *points, len(wire)]
        return [wire[a:b] for a, b in itertools.pairwise(bounds) if b > a]

    def filler(self) -> bytes:
        """Garbage that ends any request the gateway still reads: a NUL no head can hold,
        then enough bytes (this conversation's token) to complete any body left open."""
        token = self.exchanges[-1].token if self.exchanges else new_token()
        return (b"\x00" + token * (FILLER_SIZE // TOKEN_SIZE))[:FILLER_SIZE]

    def responses(self) -> tuple[list[Response], bytes]:
        """The responses in what came back, and what is left that is not one."""
        return parse_responses(self.received)


def parse_responses(data: bytes) -> tuple[list[Response], bytes]:
    """Responses as the gateway writes them: a head, then a Content-Length body or none.
    An answer to HEAD has a Content-Length but no body: the next response, or the end,
    follows its head at once (no body here starts with `HTTP/1.`)."""
    out: list[Response] = []
    at = 0
    while True:
        end = data.find(b"\r\n\r\n", at)
        if end < 0 or not data.startswith(b"HTTP/1.", at):
            return out, data[at:]
        lines = data[at:end].split(b"\r\n")
        try:
            status = int(lines[0].split(b" ")[1])
        except (IndexError, ValueError):
            return out, data[at:]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        start = end + 4
        size = int(headers.get("content-length", "0") or 0)
        if status < 200 or status in (204, 304):
            size = 0
        rest = data[start:]
        if not rest or rest.startswith(b"HTTP/1."):
            size = 0
        if len(rest) < size:
            return out, data[at:]
        out.append(Response(status, headers, rest[:size]))
        at = start + size


def converse(port: int, conversations: list[Conversation]) -> None:
    """Run the conversations side by side on their own connections: write each one's
    pieces, read until the gateway closes; once a conversation's answers are in (or
    nothing came for IDLE seconds and one of its requests is malformed, so the gateway may
    be waiting for bytes it declared), send its filler. Past DEADLINE, it hung."""
    sel = selectors.DefaultSelector()
    state: dict[int, dict[str, Any]] = {}
    for index, conv in enumerate(conversations):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, index)
        state[index] = {"sock": sock, "out": conv.pieces(), "last": time.monotonic()}
        state[index]["filled"] = not state[index]["out"] and not conv.exchanges
    deadline = time.monotonic() + DEADLINE
    try:
        while any(not conv.closed for conv in conversations):
            now = time.monotonic()
            if now > deadline:
                for conv in conversations:
                    conv.hung = not conv.closed
                return
            for index, conv in enumerate(conversations):
                if not conv.closed:
                    _advance(conv, state[index], now)
            for key, _ in sel.select(timeout=0.005):
                index = key.data
                _read(conversations[index], state[index])
                if conversations[index].closed:
                    sel.unregister(state[index]["sock"])
    finally:
        for st in state.values():
            st["sock"].close()
        sel.close()


def _advance(conv: Conversation, st: dict[str, Any], now: float) -> None:
    """Write what the conversation has to write next, if anything."""
    sock: socket.socket = st["sock"]
    if st["out"]:
        piece = st["out"].pop(0)
        try:
            sent = sock.send(piece)
        except BlockingIOError:
            sent = 0
        except OSError:  # the gateway closed on us: reading will tell
            st["out"] = []
            st["filled"] = True
            return
        if sent < len(piece):
            st["out"].insert(0, piece[sent:])
        st["last"] = now
        return
    if st["filled"]:
        return
    if len(conv.responses()[0]) >= len(conv.exchanges):
        st["out"] = [conv.filler()]
        st["filled"] = True
    elif now - st["last"] > IDLE and not all(e.clean for e in conv.exchanges):
        # The gateway may wait for bytes a malformed request declared: give them.
        st["out"] = [conv.filler()]
        st["filled"] = conv.early = True


def _read(conv: Conversation, st: dict[str, Any]) -> None:
    sock: socket.socket = st["sock"]
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return
    except OSError as exc:
        if exc.errno not in (errno.ECONNRESET, errno.EPIPE):
            raise
        conv.closed = conv.reset = True
        return
    if not data:
        conv.closed = True
        return
    conv.received += data
    st["last"] = time.monotonic()


@dataclass
class BackendRequest:
    """A request as a backend's h11 parsed it, with its bytes on the wire."""

    session: str
    conn: int
    n: int
    method: bytes
    target: bytes
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes


@dataclass
class Leftover:
    """Bytes a backend connection got after its last complete request."""

    session: str
    conn: int
    raw: bytes
    closed: bool


class FuzzGateway:
    """A `siesta up` with sessions alice and bob on recording backends, kept for a module.

    It remembers every token sent (by whom, to where) and every byte each backend
    connection received, across rounds, so late bytes of an old round are seen too."""

    def __init__(self, folder: Path, gateway: dict[str, Any] | None = None):
        self.folder = folder
        self.routing = (gateway or {}).get("routing", "path")
        self.control = folder / "control"
        self.control.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.streams: dict[tuple[str, int], bytearray] = {}  # (session, conn) -> bytes
        self.parsed: dict[tuple[str, int], int] = {}  # (session, conn) -> end of its last request
        self.owners: dict[bytes, tuple[int, Exchange]] = {}  # token -> (conversation, its exchange)
        self._conversations = itertools.count()
        template = {
            "command": [sys.executable, FUZZ_BACKEND, "{port}", "{session}", str(self.control)],
            "ready": {"tcp": True},
            "idle_timeout": "1h",
            "stop_grace": "3s",
        }
        config = {
            "gateway": {
                "listen": f"127.0.0.1:{self.port}",
                "admin_listen": f"127.0.0.1:{free_port()}",
                "wake_timeout": "20s",
                **(gateway or {}),
            },
            "store": "state/state.db",
            "templates": {"fuzz": template},
            "sessions": {name: {"template": "fuzz"} for name in SESSIONS},
        }
        path = folder / "siesta.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log = folder / "siesta.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "siesta", "up", "-c", str(path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=folder,
            )
        try:
            wait_for(
                lambda: self.proc.poll() is not None or accepts(self.port),
                timeout=START_DEADLINE,
                what="siesta to listen",
            )
            assert self.proc.poll() is None, f"siesta exited:\n{self.output()}"
            self._wake()
        except BaseException:
            self.stop()
            raise

    def _wake(self) -> None:
        """Wake both sessions with one plain request each, then start from a clean record."""
        for name in SESSIONS:
            token = new_token()
            if self.routing == "host":
                head = b"GET /%s HTTP/1.1\r\nHost: %s.localhost\r\n" % (token, name.encode())
            else:
                head = b"GET /s/%s/%s HTTP/1.1\r\nHost: t\r\n" % (name.encode(), token)
            wire = head + b"Connection: close\r\n\r\n"
            conv = Conversation([Exchange(token, name, b"GET", wire, b"", clean=True)])
            converse(self.port, [conv])
            assert conv.received.startswith(b"HTTP/1.1 200"), conv.received
            wait_for(lambda n=name: (self.control / f"{n}.ctl").exists(), what=f"{name}'s control")
        self.collect()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        backends = []
        with contextlib.suppress(psutil.Error):
            backends = psutil.Process(self.proc.pid).children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for backend in backends:  # backends never outlive the test, even after a crash
            with contextlib.suppress(OSError):
                os.killpg(backend.pid, signal.SIGKILL)

    def register(self, conversations: list[Conversation]) -> None:
        for conv in conversations:
            number = next(self._conversations)
            for exchange in conv.exchanges:
                self.owners[exchange.token] = (number, exchange)

    def collect(self) -> tuple[list[BackendRequest], list[dict[str, Any]], list[Leftover]]:
        """What the backends received since the last call: the requests h11 parsed, its
        refusals, and the bytes after the last request of each connection (a request the
        gateway did not finish, say)."""
        requests: list[BackendRequest] = []
        errors: list[dict[str, Any]] = []
        leftovers: list[Leftover] = []
        for name in SESSIONS:
            port = int((self.control / f"{name}.ctl").read_text())
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                chunks = []
                while part := sock.recv(65536):
                    chunks.append(part)
            dump = json.loads(b"".join(chunks))
            for cid, conn in dump["conns"].items():
                stream = self.streams.setdefault((name, int(cid)), bytearray())
                stream += base64.b64decode(conn["raw"])
            for r in dump["requests"]:
                key = (name, r["conn"])
                raw = bytes(self.streams[key][r["start"] : r["end"]])
                requests.append(
                    BackendRequest(
                        name,
                        r["conn"],
                        r["n"],
                        r["method"].encode("latin-1"),
                        r["target"].encode("latin-1"),
                        [(n.lower(), v) for n, v in r["headers"]],
                        base64.b64decode(r["body"]),
                        raw,
                    )
                )
                self.parsed[key] = r["end"]
            errors.extend(dump["errors"])
            for cid, conn in dump["conns"].items():
                key = (name, int(cid))
                rest = bytes(self.streams[key][self.parsed.get(key, 0) :])
                if rest:
                    leftovers.append(Leftover(name, int(cid), rest, conn["closed"]))
                if conn["closed"]:
                    self.streams.pop(key, None)
                    self.parsed.pop(key, None)
        return requests, errors, leftovers

    def alive(self) -> None:
        assert self.proc.poll() is None, f"the gateway exited:\n{self.output()[-4000:]}"
        out = self.output()
        assert "Traceback" not in out, f"the gateway logged a traceback:\n{out[-6000:]}"

    def round(self, conversations: list[Conversation]) -> Round:
        """Run `conversations` side by side and gather what the backends got."""
        self.register(conversations)
        converse(self.port, conversations)
        requests, errors, leftovers = self.collect()
        return Round(self, conversations, requests, errors, leftovers)


@dataclass
class Round:
    """One round of conversations and what the backends received meanwhile."""

    gw: FuzzGateway
    conversations: list[Conversation]
    requests: list[BackendRequest]
    errors: list[dict[str, Any]]
    leftovers: list[Leftover]

    def check(self) -> None:
        """Every property in the module docstring, for this round."""
        self.gw.alive()
        for conv in self.conversations:
            self._check_client(conv)
        self._check_backends()

    def explain(self) -> str:
        lines = []
        for i, conv in enumerate(self.conversations):
            lines.append(f"conversation {i}: sent {conv.wire!r}")
            lines.append(f"  received {conv.received[:3000]!r}")
        for r in self.requests:
            lines.append(f"backend {r.session} conn {r.conn}.{r.n}: {r.raw[:2000]!r}")
        for e in self.errors:
            lines.append(f"backend refused: {e}")
        for left in self.leftovers:
            lines.append(f"backend {left.session} conn {left.conn} left: {left.raw[:2000]!r}")
        return "\n".join(lines)

    def _fail(self, why: str) -> None:
        raise AssertionError(f"{why}\n{self.explain()}")

    def _check_client(self, conv: Conversation) -> None:
        if conv.hung:
            self._fail("the gateway neither answered nor closed in time")
        mine = {e.token for e in conv.exchanges}
        foreign = set(TOKEN.findall(conv.received)) - mine
        if foreign:
            self._fail(f"a client received bytes of other exchanges: {sorted(foreign)}")
        responses, rest = conv.responses()
        if rest and not conv.reset:
            self._fail(f"the client got a broken response: {rest[:200]!r}")
        order = {e.token: i for i, e in enumerate(conv.exchanges)}
        last = -1
        for response in responses:
            seen = response.seen
            if seen is None:
                continue
            session, token = seen
            index = order.get(token, -1)
            if index <= last:
                self._fail(f"answers out of order, or one twice: {token!r}")
            if conv.exchanges[index].session != session:
                self._fail(f"{token!r} was answered by {session}'s backend")
            last = index
        self._check_clean_prefix(conv, responses)

    def _check_clean_prefix(self, conv: Conversation, responses: list[Response]) -> None:
        """While every request so far was well-formed, each got its own answer."""
        for i, exchange in enumerate(conv.exchanges):
            if not exchange.clean:
                return
            if (conv.reset or conv.early) and i >= len(responses):
                return  # a reset took it, or the filler went before it was answered
            if i >= len(responses):
                self._fail(f"a well-formed request got no answer: {exchange.wire[:300]!r}")
            response = responses[i]
            if exchange.session is None:
                if response.status != 404:
                    self._fail(f"a request for no session got {response.status}")
            elif response.seen != (exchange.session, exchange.token):
                self._fail(f"a well-formed request got {response.status}, not its answer")
            if exchange.closes:
                return

    def _check_backends(self) -> None:
        if self.errors:
            self._fail("a backend got bytes h11 refuses as a request")
        targets: dict[bytes, BackendRequest] = {}
        for request in self.requests:
            names = [name for name, _ in request.headers]
            if names[-3:-1] != list(FORWARDED_TAIL) and names[-2:] != list(FORWARDED_TAIL):
                self._fail(f"a backend got a request the gateway did not frame: {request.raw!r}")
            if names.count("x-forwarded-for") != 1:
                self._fail("a backend got X-Forwarded-For more than once")
            found = TOKEN.findall(request.target)
            if len(found) != 1:
                self._fail(f"a backend got a request without one token: {request.target!r}")
            token = found[0]
            if token in targets:
                self._fail(f"a backend got {token!r} twice")
            targets[token] = request
            owner = self.gw.owners.get(token)
            if owner is None:
                self._fail(f"a backend got a token nobody sent: {token!r}")
                return
            conversation, exchange = owner
            if exchange.session != request.session:
                self._fail(f"{request.session}'s backend got {token!r}, sent to {exchange.session}")
            others = {self.gw.owners.get(t, (-1, None))[0] for t in TOKEN.findall(request.raw)}
            if others != {conversation}:
                self._fail(f"a backend request holds bytes of other conversations: {token!r}")
            if exchange.clean and (request.method, request.body) != (
                exchange.method,
                exchange.body,
            ):
                self._fail(f"a well-formed request was changed on the way: {token!r}")
        for left in self.leftovers:
            if not left.closed:
                self._fail("a backend connection kept part of a request (it may be reused)")
            owners = {self.gw.owners.get(t, (-1, None))[0] for t in TOKEN.findall(left.raw)}
            if len(owners) > 1:
                self._fail("bytes of two conversations went down one backend connection")
