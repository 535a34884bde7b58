"""HTTP/1.1 wire helpers for the gateway: header filtering and local answers.

Used by `client` (requests to backends, answers of the gateway's own) and
`upstream` (responses to clients). Works on bytes; nothing here does I/O.
"""

from __future__ import annotations

import http
import secrets

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded as they came.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"

_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}


def reason(status: int) -> bytes:
    """The standard reason phrase of `status`."""
    return _REASONS.get(status, b"Unknown")


# Connection options that name no header: nothing more to drop when only these are used.
PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"upgrade"})


_NOTHING: frozenset[bytes] = frozenset()
# Each hop-by-hop header as it starts a line of a lower-cased header block.
_HOP_MARKERS = tuple(b"\n" + name + b":" for name in sorted(HOP_BY_HOP))


def extra_hop_headers(connection: bytes | None) -> frozenset[bytes]:
    """Header names (lower case) that `Connection: <value>` makes hop-by-hop, beyond the
    standard ones; empty in the common case (`keep-alive`, `close`, `upgrade`)."""
    if not connection or connection.strip().lower() in PLAIN_CONNECTION:
        return _NOTHING
    tokens = {t.strip().lower() for t in connection.split(b",")}
    return frozenset(tokens - PLAIN_CONNECTION)


class HeadFacts:
    """What the gateway needs from a raw header block, found with C-level searches."""

    __slots__ = ("chunked", "connection", "kept", "sized")

    def __init__(self, lines: bytes):
        """`lines`: header lines, each ending in CRLF (no status line, no blank line)."""
        low = b"\n" + lines.lower()
        self.chunked = b"\ntransfer-encoding:" in low
        self.sized = b"\ncontent-length:" in low and not self.chunked
        self.connection: bytes | None = None
        cuts = [at for marker in _HOP_MARKERS if (at := low.find(marker)) >= 0]
        if not cuts:
            self.kept = lines
            return
        self.kept = _cut_lines(lines, low, cuts, self)

    def drop(self, names: frozenset[bytes]) -> None:
        """Also remove the header lines called `names` (lower case)."""
        low = b"\n" + self.kept.lower()
        cuts = [at for name in names if (at := low.find(b"\n" + name + b":")) >= 0]
        if cuts:
            self.kept = _cut_lines(self.kept, low, cuts, None)


def _cut_lines(lines: bytes, low: bytes, cuts: list[int], facts: HeadFacts | None) -> bytes:
    """`lines` without the lines starting at offsets `cuts` of `low` (which is
    `b"\\n" + lines.lower()`), and without any later line of the same name."""
    out = []
    start = 0
    for at in sorted(_all_lines(low, cuts)):
        end = lines.find(b"\n", at) + 1 or len(lines)
        if facts is not None and low.startswith(b"\nconnection:", at):
            facts.connection = lines[at + len(b"connection:") : end].strip()
        out.append(lines[start:at])
        start = end
    out.append(lines[start:])
    return b"".join(out)


def _all_lines(low: bytes, cuts: list[int]) -> set[int]:
    """Every line offset with the same name as a line in `cuts` (a header may repeat)."""
    found = set()
    for at in cuts:
        marker = low[at : low.index(b":", at) + 1]
        while at >= 0:
            found.add(at)
            at = low.find(marker, at + 1)
    return found


def chunk(data: bytes) -> list[bytes]:
    """`data` framed as one chunk of a chunked body."""
    return [b"%x\r\n" % len(data), data, CRLF]


def local_response(
    status: int,
    body: str | bytes,
    *,
    keep_alive: bool = True,
    content_type: bytes = b"text/plain; charset=utf-8",
    headers: tuple[tuple[bytes, bytes], ...] = (),
    head_only: bool = False,
) -> bytes:
    """A complete response of the gateway's own (errors, redirects, the waiting page)."""
    payload = body.encode() if isinstance(body, str) else body
    lines = [
        b"HTTP/1.1 %d %s" % (status, reason(status)),
        b"Content-Type: " + content_type,
        b"Content-Length: %d" % len(payload),
        b"Cache-Control: no-store",
        b"Server: siesta",
    ]
    lines.extend(name + b": " + value for name, value in headers)
    if not keep_alive:
        lines.append(b"Connection: close")
    head = CRLF.join(lines) + CRLF + CRLF
    return head if head_only else head + payload


def error_body(status: int, why: str, event: str | None = None) -> str:
    """The text of an error answer: status, phrase, the class of problem and the event id
    that finds its detail in siesta's log, on one line."""
    tail = f" (event {event})" if event else ""
    return f"{status} {reason(status).decode()}: {why}{tail}\n"


def new_event_id() -> str:
    """A short random id naming one error answer in the log (not guessable, not a count)."""
    return secrets.token_hex(6)
