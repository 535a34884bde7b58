"""Cookies and query parameters in raw request bytes: find one, or take ours out.

The gateway works on the bytes httptools hands over; these helpers read a cookie
by name from `Cookie` header values, remove siesta's own cookies before a request
is forwarded (a backend never sees them), and take `siesta_token` out of a target.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote_to_bytes


def cookie(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of cookie `name` in the request's `Cookie` headers, or None."""
    for key, value in headers:
        if len(key) == 6 and key.lower() == b"cookie" and name in value:
            for part in value.split(b";"):
                k, eq, v = part.strip().partition(b"=")
                if eq and k == name:
                    return v.strip().strip(b'"')
    return None


def without_cookies(value: bytes, prefix: bytes) -> bytes | None:
    """A `Cookie` header value without the cookies whose names start with `prefix`;
    None when nothing is left (the header is then dropped)."""
    kept = [
        part.strip()
        for part in value.split(b";")
        if part.strip() and not part.strip().startswith(prefix)
    ]
    return b"; ".join(kept) if kept else None


def strip_lines(
    lines: list[bytes], *, cookie_prefix: bytes | None, authorization: bool
) -> list[bytes]:
    """Header lines to forward, without siesta's cookies (names starting with
    `cookie_prefix`) and, if `authorization`, without the Authorization header."""
    out: list[bytes] = []
    for line in lines:
        name, _, rest = line.partition(b":")
        lname = name.lower()
        if authorization and lname == b"authorization":
            continue
        if cookie_prefix is not None and lname == b"cookie" and cookie_prefix in rest:
            kept = without_cookies(rest.strip(), cookie_prefix)
            if kept is not None:
                out.append(name + b": " + kept + b"\r\n")
            continue
        out.append(line)
    return out


def query_param(target: bytes, name: bytes) -> tuple[bytes | None, bytes]:
    """The value of query parameter `name` in `target` (percent-decoded), and `target`
    without it; (None, target) when it is not there."""
    path, mark, query = target.partition(b"?")
    if not mark or name not in query:
        return None, target
    found: bytes | None = None
    kept = []
    for pair in query.split(b"&"):
        key, _, value = pair.partition(b"=")
        if key == name and found is None:
            found = unquote_to_bytes(value)
        elif key != name:
            kept.append(pair)
    if found is None:
        return None, target
    return found, path + (b"?" + b"&".join(kept) if kept else b"")


def bearer(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    for key, value in headers:
        if len(key) == 13 and key.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip()
            return None
    return None
