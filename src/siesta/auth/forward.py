"""Forward auth: ask an auth server about a request (Traefik's forwardAuth, nginx's
auth_request), with a short cache of the answers that let through.

`ForwardAuth.ask` sends GET to the configured URL with the request's headers and
X-Forwarded-Method, -Proto, -Host, -Uri and -For; the answer is an `Answer`. A 2xx
answer is kept `cache_ttl` seconds for the same credentials (the Cookie and
Authorization headers) and host; concurrent asks with the same key share one call.
An auth server that is unreachable, or slower than `timeout`, raises `Unavailable`
(the gateway answers 503): nothing is ever let through without a 2xx.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import httpx

from siesta.health import Health
from siesta.httpclient import async_client

log = logging.getLogger("siesta.auth")

MAX_BODY = 64 * 1024
"""Bytes of a refusal's body passed on to the client at most (a login page fits)."""

MAX_CACHED = 10_000
"""Answers kept at most; past this, expired ones go, then all."""

PASSED_BACK = ("location", "www-authenticate", "set-cookie", "content-type", "retry-after")
"""Headers of a refusal passed on to the client with its status and body."""

NOT_SENT = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
     b"upgrade", b"te", b"trailer", b"proxy-connection", b"expect"}
)  # fmt: skip
"""Request headers not sent to the auth server (the auth request has no body, and its
own host and connection)."""


HEALTH_NAME = "auth_server"
"""The dependency's name in /healthz and siesta_dependency_degraded."""


class Unavailable(Exception):
    """The auth server did not answer in time (or at all)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What the auth server said."""

    status: int
    headers: dict[str, str]  # lower-case name -> value (the last, when repeated)
    passed: tuple[tuple[bytes, bytes], ...] = ()  # refusal: headers for the client
    body: bytes = b""  # refusal: the body for the client
    copied: list[bytes] = field(default_factory=list)  # 2xx: header lines for the backend

    @property
    def allows(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class Asked:
    """The request the auth server is asked about."""

    method: bytes
    uri: bytes
    host: bytes
    proto: bytes
    client: bytes
    headers: Sequence[tuple[bytes, bytes]]


class ForwardAuth:
    """The auth server's client, its cache and its single-flight calls."""

    def __init__(
        self,
        url: str,
        *,
        copy_headers: Iterable[str],
        timeout: float,
        cache_ttl: float,
        dropped: frozenset[bytes] = frozenset(),
        health: Health | None = None,
    ):
        self.url = url
        self.copy = tuple(h.lower() for h in copy_headers)
        self.timeout = timeout
        self.cache_ttl = cache_ttl
        self.dropped = dropped  # request headers siesta sets itself: not sent as the client did
        self._client: httpx.AsyncClient | None = None
        self._cache: dict[tuple[bytes, bytes, bytes], tuple[float, Answer]] = {}
        self._asking: dict[tuple[bytes, bytes, bytes], asyncio.Future[Answer]] = {}
        self.calls = 0  # requests sent to the auth server (tests and metrics read it)
        self.health = health  # "auth_server": degraded while it does not answer
        if health is not None:
            health.of(HEALTH_NAME)

    def cached(self, asked: Asked) -> Answer | None:
        """A fresh cached answer for `asked`'s credentials, if any (no I/O)."""
        if not self.cache_ttl:
            return None
        hit = self._cache.get(_key(asked))
        if hit is None:
            return None
        if hit[0] < time.monotonic():
            self._cache.pop(_key(asked), None)
            return None
        return hit[1]

    async def ask(self, asked: Asked) -> Answer:
        """The auth server's answer about `asked` (cached, or shared with a concurrent ask
        of the same credentials); `Unavailable` when it does not answer in time."""
        key = _key(asked)
        shared = self._asking.get(key)
        if shared is None:
            shared = asyncio.ensure_future(self._call(asked))
            self._asking[key] = shared
            shared.add_done_callback(lambda _: self._asking.pop(key, None))
        answer = await asyncio.shield(shared)
        if answer.allows and self.cache_ttl:
            self._remember(key, answer)
        return answer

    async def _call(self, asked: Asked) -> Answer:
        client = self._client
        if client is None:
            client = self._client = async_client(self.timeout)
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in asked.headers
            if name.lower() not in NOT_SENT and name.lower() not in self.dropped
        ]
        headers += [
            ("X-Forwarded-Method", asked.method.decode("latin-1")),
            ("X-Forwarded-Proto", asked.proto.decode("latin-1")),
            ("X-Forwarded-Host", asked.host.decode("latin-1")),
            ("X-Forwarded-Uri", asked.uri.decode("latin-1")),
            ("X-Forwarded-For", asked.client.decode("latin-1")),
        ]
        self.calls += 1
        try:
            async with asyncio.timeout(self.timeout):
                async with client.stream("GET", self.url, headers=headers) as response:
                    body = b""
                    if not 200 <= response.status_code < 300:
                        async for part in response.aiter_bytes():
                            body += part
                            if len(body) >= MAX_BODY:
                                body = body[:MAX_BODY]
                                break
        except (TimeoutError, httpx.HTTPError, OSError) as exc:
            detail = f"{self.url}: {type(exc).__name__} {exc}".strip()
            if self.health is not None and self.health.degraded(HEALTH_NAME, detail):
                log.error("the auth server does not answer (%s): requests get 503", detail)
            raise Unavailable(detail) from None
        if self.health is not None and self.health.ok(HEALTH_NAME):
            log.warning("the auth server answers again")
        return self._answer(response, body)

    def _answer(self, response: httpx.Response, body: bytes) -> Answer:
        status = response.status_code
        values = {k.lower(): v for k, v in response.headers.items() if _clean(v)}
        if 200 <= status < 300:
            copied = [
                name.encode("latin-1") + b": " + values[name].encode("latin-1") + b"\r\n"
                for name in self.copy
                if name in values
            ]
            return Answer(status, values, copied=copied)
        passed = tuple(
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers.multi_items()
            if name.lower() in PASSED_BACK and name.lower() != "content-type" and _clean(value)
        )
        return Answer(status, values, passed=passed, body=body)

    def _remember(self, key: tuple[bytes, bytes, bytes], answer: Answer) -> None:
        cache = self._cache
        if len(cache) >= MAX_CACHED:
            now = time.monotonic()
            for stale in [k for k, (until, _) in cache.items() if until < now]:
                del cache[stale]
            if len(cache) >= MAX_CACHED:
                cache.clear()
        cache[key] = (time.monotonic() + self.cache_ttl, answer)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def _key(asked: Asked) -> tuple[bytes, bytes, bytes]:
    cookie = authorization = b""
    for name, value in asked.headers:
        lname = name.lower()
        if lname == b"cookie":
            cookie += value + b";"
        elif lname == b"authorization":
            authorization += value + b"\n"
    return cookie, authorization, asked.host


def _clean(value: str) -> bool:
    """A header value that can be written back as it is (no line breaks)."""
    return "\r" not in value and "\n" not in value
