"""HTTP/1.1 wire helpers for the gateway: header filtering and local answers.

Used by `client` (requests to backends, answers of the gateway's own) and
`upstream` (responses to clients). Works on bytes; nothing here does I/O.
"""

from __future__ import annotations

import http

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


def extra_hop_headers(connection: bytes | None) -> frozenset[bytes]:
    """Header names (lower case) that `Connection: <value>` makes hop-by-hop, beyond the
    standard ones; empty in the common case (`keep-alive`, `close`, `upgrade`)."""
    if not connection:
        return frozenset()
    tokens = {t.strip().lower() for t in connection.split(b",")}
    return frozenset(tokens - PLAIN_CONNECTION)


def without(lines: list[tuple[bytes, bytes]], names: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    """`lines` (lower-case name, header line) minus those whose name is in `names`."""
    return [item for item in lines if item[0] not in names]


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


def error_body(status: int, why: str) -> str:
    """The text of an error answer: status, phrase and the reason, on one line."""
    return f"{status} {reason(status).decode()}: {why}\n"
