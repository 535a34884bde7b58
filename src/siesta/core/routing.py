"""Which session a request is for, and what path the backend sees.

The gateway calls `Router.route` once per request head. It works on the raw
bytes httptools hands over, so the hot path decodes only the session id.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

RoutingMode = Literal["path", "host", "header"]

PATH_PREFIX = b"/s/"


class Route(NamedTuple):
    """Where a request goes.

    Exactly one of `session` (forward, with `target` as the request target the
    backend sees), `redirect` (answer 308 to that location) or `error` (answer
    404 with that reason) is set.
    """

    session: str | None = None
    target: bytes = b"/"
    redirect: bytes | None = None
    error: str | None = None


class Router:
    """Maps a request head to a session, by path, host name or header."""

    __slots__ = ("_domain_suffix", "_mode", "_names", "_strip")

    def __init__(self, mode: RoutingMode, *, domain: str = "localhost", strip_prefix: bool = True):
        self._mode = mode
        self._strip = strip_prefix
        self._domain_suffix = b"." + domain.lower().encode("ascii")
        self._names: dict[bytes, str] = {}  # valid names seen, decoded once

    @property
    def mode(self) -> RoutingMode:
        return self._mode

    def route(self, target: bytes, host: bytes | None, header: bytes | None) -> Route:
        """Route one request: `target` as sent, `host` and routing `header` values or None."""
        if self._mode == "path":
            return self._by_path(target)
        if self._mode == "host":
            return self._by_host(target, host)
        if not header:
            return Route(error="no session: the request has no session header")
        return self._checked(header.strip(), target)

    def _by_path(self, target: bytes) -> Route:
        if not target.startswith(PATH_PREFIX):
            return Route(error="no session in the path: use /s/<session>/")
        if len(target) == 3 or target[3:4] in (b"/", b"?"):
            return Route(error="no session in the path: use /s/<session>/")
        slash = target.find(b"/", 3)
        query = target.find(b"?", 3)
        if slash < 0 or 0 <= query < slash:
            # "/s/alice" or "/s/alice?x": relative links need the trailing slash.
            end = query if query >= 0 else len(target)
            return Route(redirect=target[:end] + b"/" + target[end:])
        return self._checked(target[3:slash], target[slash:] if self._strip else target)

    def _by_host(self, target: bytes, host: bytes | None) -> Route:
        if not host:
            return Route(error="no session: the request has no Host header")
        name = host.lower()
        if name.startswith(b"["):  # an IPv6 literal names no session
            return Route(error="no session in the host name")
        colon = name.rfind(b":")
        if colon >= 0:
            name = name[:colon]
        if not name.endswith(self._domain_suffix):
            return Route(error="no session in the host name")
        return self._checked(name[: -len(self._domain_suffix)], target)

    def _checked(self, name: bytes, target: bytes) -> Route:
        known = self._names.get(name)
        if known is not None:
            return Route(known, target)
        if not name or len(name) > 63 or not _ALLOWED.issuperset(name):
            return Route(error="not a valid session name")
        if len(self._names) >= MAX_CACHED_NAMES:
            self._names.clear()
        known = self._names[name] = name.decode("ascii")
        return Route(known, target)


_ALLOWED = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
MAX_CACHED_NAMES = 100_000
