"""`gateway.auth`: the gate every request passes before routing reveals anything.

`ClientConnection._dispatch` hands each parsed request to the gate (when auth is on)
with its route. The gate answers it (401, 403, a login redirect, the token
exchange) or hands it on with `conn.routed`, which forwards it or holds it while
its session wakes: a refused request never wakes a session. Unknown and refused
sessions get the same answer, so a client cannot learn which sessions exist.

A check that needs I/O (the auth server, the OIDC provider) runs as the request's
`hold` task, as a wake does: the connection keeps reading the body (buffered, then
paused at the gateway's limit), a client that goes away cancels the task, and every
way out is an answer (an auth server that does not answer in time: 503 with
Retry-After, never let through).

- `TokenGate`: each session's token (`siesta.auth.tokens`), as a bearer token, the
  session's cookie, or once `?siesta_token=`, exchanged for the cookie.
- `ForwardGate`: an auth server decides (`siesta.auth.forward`).
- `OidcGate`: a login with an OpenID Connect provider (`siesta.auth.oidc`), whose
  callback and logout are served under `/.siesta/oidc/`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from typing import TYPE_CHECKING, Any

from siesta.auth import cookies
from siesta.auth.forward import Answer, Asked, ForwardAuth, Unavailable
from siesta.auth.tokens import TokenBook
from siesta.core.allow import AllowRule, session_values
from siesta.core.routing import Route

if TYPE_CHECKING:
    from .client import ClientConnection, Request
    from .server import Gateway

log = logging.getLogger("siesta.auth")

TOKEN_PARAM = b"siesta_token"
TOKEN_COOKIE = b"siesta_token_"  # + the session id
UNAVAILABLE_RETRY = b"5"  # seconds a client is told to wait when the auth server is down

UNAUTHENTICATED = "authentication required"
FORBIDDEN = "not allowed"


class Gate:
    """What every gate shares: answers, and what it reads of a request."""

    memo_safe = True  # the head forwarded depends only on the request's own bytes

    def __init__(self, gateway: Gateway):
        self.gw = gateway
        self.lifecycle = gateway.lifecycle

    def admit(self, conn: ClientConnection, req: Request, route: Route) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        return None

    @staticmethod
    def unauthenticated(conn: ClientConnection, req: Request, challenge: bytes) -> None:
        conn.respond(req, 401, UNAUTHENTICATED, headers=((b"WWW-Authenticate", challenge),))

    @staticmethod
    def forbidden(conn: ClientConnection, req: Request) -> None:
        conn.respond(req, 403, FORBIDDEN)

    def allowed(
        self, rule: AllowRule | None, conn: ClientConnection, req: Request, route: Route,
        identity: tuple[str, Any],
    ) -> None:  # fmt: skip
        """The identity is known: apply the allow rule, then forward (or answer 403; an
        unknown session is 403 too when a rule decides, else 404)."""
        sid = route.session
        assert sid is not None
        session = self.lifecycle.get(sid)
        if rule is not None:
            values = {identity[0]: identity[1], "session": None}
            if session is not None:
                values["session"] = session_values(session.id, session.labels)
            if session is None or not rule.allows(values):
                if session is not None and log.isEnabledFor(logging.DEBUG):
                    log.debug("%s: refused by the allow rule: %s", sid, rule.explain(values))
                self.forbidden(conn, req)
                return
        elif session is None:
            conn.respond(req, 404, f"unknown session {sid!r}")
            return
        conn.routed(req, route, session)

    def proto(self, conn: ClientConnection, req: Request) -> bytes:
        """The scheme the client used: https only when a trusted proxy says so."""
        if conn.trusted:
            given = req.header(b"x-forwarded-proto")
            if given is not None and given.strip().lower() == b"https":
                return b"https"
        return b"http"

    def host(self, conn: ClientConnection, req: Request) -> bytes:
        """The host the client asked for (a trusted proxy's X-Forwarded-Host first)."""
        if conn.trusted:
            given = req.header(b"x-forwarded-host")
            if given:
                return given.split(b",")[0].strip()
        return req.header(b"host") or b""


class TokenGate(Gate):
    """Mode token: the session's own secret, as a bearer token or its cookie."""

    def __init__(self, gateway: Gateway, tokens: TokenBook):
        super().__init__(gateway)
        self.tokens = tokens
        self.path_routing = gateway.router.mode == "path"
        self._decoy = secrets.token_urlsafe(32).encode()  # compared when there is no token

    def admit(self, conn: ClientConnection, req: Request, route: Route) -> None:
        sid = route.session
        if sid is None:  # names no session: the same answer whatever exists
            conn.unrouted(req, route)
            return
        session = self.lifecycle.get(sid)
        entry = self.tokens.get(sid) if session is not None else None
        raw = entry.raw if entry is not None else self._decoy
        cookie = entry.cookie if entry is not None else self._decoy
        if TOKEN_PARAM in req.target:
            given, clean = cookies.query_param(req.target, TOKEN_PARAM)
            if given is not None:
                if entry is not None and hmac.compare_digest(given, raw):
                    self._exchange(conn, req, sid, cookie, clean)
                else:
                    self.unauthenticated(conn, req, b'Bearer realm="siesta"')
                return
        by_bearer = False
        bearer = cookies.bearer(req.headers)
        if bearer is not None:
            by_bearer = hmac.compare_digest(bearer, raw)
        ok = by_bearer
        if not ok:  # no bearer, or the app's own: the session's cookie
            given = cookies.cookie(req.headers, TOKEN_COOKIE + sid.encode())
            ok = given is not None and hmac.compare_digest(given, cookie)
        if not ok or session is None or entry is None:
            self.unauthenticated(conn, req, b'Bearer realm="siesta"')
            return
        if req.head is None:  # built here (a repeated request reuses the head built once)
            req.lines = cookies.strip_lines(
                req.lines, cookie_prefix=TOKEN_COOKIE, authorization=by_bearer
            )
        conn.routed(req, route, session)

    def _exchange(
        self, conn: ClientConnection, req: Request, sid: str, value: bytes, clean: bytes
    ) -> None:
        """`?siesta_token=` was right: set the session's cookie, and send the client to the
        same URL without the token (303: a browser asks it with GET)."""
        path = b"/s/" + sid.encode() if self.path_routing else b"/"
        parts = [TOKEN_COOKIE + sid.encode() + b"=" + value, b"Path=" + path, b"HttpOnly"]
        parts.append(b"SameSite=Lax")
        if self.proto(conn, req) == b"https":
            parts.append(b"Secure")
        headers = ((b"Location", clean or b"/"), (b"Set-Cookie", b"; ".join(parts)))
        conn.respond(req, 303, "token accepted", headers=headers)


class ForwardGate(Gate):
    """Mode forward_auth: an auth server decides, then the allow rule over its headers."""

    memo_safe = False  # the identity headers copied to the backend come from the answer

    def __init__(self, gateway: Gateway, forward: ForwardAuth, allow: AllowRule | None):
        super().__init__(gateway)
        self.forward = forward
        self.allow = allow

    def admit(self, conn: ClientConnection, req: Request, route: Route) -> None:
        if route.session is None:
            conn.unrouted(req, route)
            return
        asked = Asked(
            req.method,
            req.target,
            self.host(conn, req),
            self.proto(conn, req),
            conn.peer,
            req.headers,
        )
        answer = self.forward.cached(asked)
        if answer is not None:
            self._decide(conn, req, route, answer)
        else:
            req.hold = asyncio.ensure_future(self._ask(conn, req, route, asked))

    async def _ask(self, conn: ClientConnection, req: Request, route: Route, asked: Asked) -> None:
        try:
            answer = await self.forward.ask(asked)
        except Unavailable as exc:
            req.hold = None
            conn.respond(
                req,
                503,
                "the auth server did not answer",
                detail=str(exc),
                headers=((b"Retry-After", UNAVAILABLE_RETRY),),
            )
            return
        except Exception as exc:  # never let through, never leave it hanging
            req.hold = None
            log.exception("forward auth failed")
            conn.respond(req, 503, "the auth check failed", detail=repr(exc))
            return
        req.hold = None
        if req is not conn.current or conn.closing:
            return  # the client went away meanwhile
        self._decide(conn, req, route, answer)

    def _decide(self, conn: ClientConnection, req: Request, route: Route, answer: Answer) -> None:
        if not answer.allows:  # the auth server's answer is the client's
            content_type = answer.headers.get("content-type", "text/plain; charset=utf-8")
            conn.respond(
                req,
                answer.status,
                "refused by the auth server",
                headers=answer.passed,
                body=answer.body,
                content_type=content_type.encode("latin-1"),
            )
            return
        if answer.copied:
            req.lines = req.lines + answer.copied
        self.allowed(self.allow, conn, req, route, ("headers", answer.headers))

    async def close(self) -> None:
        await self.forward.close()
