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
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from siesta.auth import cookies
from siesta.auth.forward import Answer, Asked, ForwardAuth, Unavailable
from siesta.auth.oidc import FLOW_TTL, OidcClient, OidcError
from siesta.auth.oidc import Unavailable as ProviderUnavailable
from siesta.auth.signed import Signer
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


OIDC_PREFIX = b"/.siesta/oidc/"
CALLBACK = OIDC_PREFIX + b"callback"
LOGOUT = OIDC_PREFIX + b"logout"
LOGIN_COOKIE = b"siesta_oidc"
FLOW_COOKIE = b"siesta_oidc_flow_"  # + the start of the login's state
MAX_COOKIE = 3800  # bytes of a login cookie at most (browsers keep 4096 per cookie)
MAX_VERIFIED = 10_000  # login cookies whose check is remembered


class OidcGate(Gate):
    """Mode oidc: a login with the provider, a signed cookie, the allow rule over claims.

    Its own paths, under /.siesta/oidc/ on any host (so path, host and header routing
    all reach them): `callback` (the provider sends the browser back there) and
    `logout`.
    """

    def __init__(
        self,
        gateway: Gateway,
        client: OidcClient,
        key: bytes,
        allow: AllowRule | None,
        *,
        redirect_uri: str | None,
        cookie_domain: str | None,
        login_ttl: float,
    ):
        super().__init__(gateway)
        self.client = client
        self.allow = allow
        self.login = Signer(key, "gateway login")
        self.flow = Signer(key, "gateway login flow")
        self.redirect_uri = redirect_uri
        self.domain = cookie_domain.encode() if cookie_domain else None
        self.login_ttl = login_ttl
        self._verified: dict[bytes, tuple[float, dict[str, Any]]] = {}

    def admit(self, conn: ClientConnection, req: Request, route: Route) -> None:
        if req.target.startswith(OIDC_PREFIX):
            self._own(conn, req)
            return
        if route.session is None:
            conn.unrouted(req, route)
            return
        claims = self._claims(req)
        if claims is None:
            if wants_login_page(req):
                self._start(conn, req)
            else:
                self.unauthenticated(conn, req, b'Bearer realm="siesta"')
            return
        if req.head is None:
            req.lines = cookies.strip_lines(
                req.lines, cookie_prefix=LOGIN_COOKIE, authorization=False
            )
        self.allowed(self.allow, conn, req, route, ("claims", claims))

    def _claims(self, req: Request) -> dict[str, Any] | None:
        """The claims of the request's login cookie, when it is ours and not expired."""
        value = cookies.cookie(req.headers, LOGIN_COOKIE)
        if value is None:
            return None
        now = time.time()
        known = self._verified.get(value)
        if known is not None and known[0] > now:
            return known[1]
        login = self.login.verify(value.decode("latin-1"), now)
        if login is None or not isinstance(login.get("claims"), dict):
            return None
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.clear()
        claims: dict[str, Any] = login["claims"]
        self._verified[value] = (float(login["exp"]), claims)
        return claims

    # -- a login under way ------------------------------------------------------------

    def _start(self, conn: ClientConnection, req: Request) -> None:
        """Send a browser to the provider (reading its discovery document first, once)."""
        if self.client.ready:
            self._redirect(conn, req)
        else:
            self._hold(conn, req, self._discover_then_redirect(conn, req))

    def _hold(self, conn: ClientConnection, req: Request, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as the request's hold task; an unexpected error is an answer too."""

        async def guarded() -> None:
            try:
                await work
            except Exception as exc:
                req.hold = None
                log.exception("an OIDC step failed")
                conn.respond(req, 503, "the login failed", detail=repr(exc))

        req.hold = asyncio.ensure_future(guarded())

    async def _discover_then_redirect(self, conn: ClientConnection, req: Request) -> None:
        try:
            await self.client.metadata()
        except OidcError as exc:
            req.hold = None
            self._failed(conn, req, exc)
            return
        req.hold = None
        if req is conn.current and not conn.closing:
            self._redirect(conn, req)

    def _redirect(self, conn: ClientConnection, req: Request) -> None:
        proto, host = self.proto(conn, req), self.host(conn, req)
        base = proto + b"://" + host
        redirect_uri = self.redirect_uri or (base + CALLBACK).decode("latin-1")
        back = req.target if self.redirect_uri is None else base + req.target
        flow, url = self.client.begin(redirect_uri, back.decode("latin-1"))
        signed = self.flow.sign(flow, FLOW_TTL).encode()
        name = FLOW_COOKIE + flow["state"][:16].encode()
        cookie = self._cookie(name, signed, proto, path=OIDC_PREFIX[:-1], max_age=int(FLOW_TTL))
        headers = ((b"Location", url.encode()), (b"Set-Cookie", cookie))
        conn.respond(req, 302, "log in first", headers=headers)

    def _own(self, conn: ClientConnection, req: Request) -> None:
        """/.siesta/oidc/callback and /.siesta/oidc/logout."""
        path, _, query = req.target.partition(b"?")
        if path == CALLBACK and req.method in (b"GET", b"POST"):
            self._hold(conn, req, self._callback(conn, req, query))
        elif path == LOGOUT:
            self._hold(conn, req, self._logout(conn, req))
        else:
            conn.respond(req, 404, "no such path")

    async def _callback(self, conn: ClientConnection, req: Request, query: bytes) -> None:
        params = {k: v[0] for k, v in parse_qs(query.decode("latin-1")).items()}
        try:
            claims, back = await self._finish(req, params)
        except OidcError as exc:
            req.hold = None
            self._failed(conn, req, exc)
            return
        req.hold = None
        if req is not conn.current or conn.closing:
            return
        proto = self.proto(conn, req)
        login = self.login.sign({"claims": claims}, self.login_ttl).encode()
        if len(login) > MAX_COOKIE:
            why = OidcError("the identity is too large for a cookie", f"{len(login)} bytes")
            self._failed(conn, req, why)
            return
        state = params.get("state", "")[:16].encode()
        headers = (
            (b"Location", back.encode("latin-1")),
            (b"Set-Cookie", self._cookie(LOGIN_COOKIE, login, proto, max_age=int(self.login_ttl))),
            (
                b"Set-Cookie",
                self._cookie(FLOW_COOKIE + state, b"", proto, path=OIDC_PREFIX[:-1], max_age=0),
            ),
        )
        who = claims.get("email") or claims.get("sub")
        log.info("logged in through OIDC: %s", who)
        conn.respond(req, 303, "logged in", headers=headers)

    async def _finish(self, req: Request, params: dict[str, str]) -> tuple[dict[str, Any], str]:
        """The claims of a finished login, and where its browser goes back to."""
        if "error" in params:
            error = "".join(c for c in params["error"][:64] if c.isalnum() or c in "_-")
            raise OidcError(f"the login provider refused the login ({error})", params["error"])
        state, code = params.get("state", ""), params.get("code", "")
        if not state or not code:
            raise OidcError("this is not a login's answer: log in again", "no state or code")
        signed = cookies.cookie(req.headers, FLOW_COOKIE + state[:16].encode())
        flow = self.flow.verify(signed.decode("latin-1")) if signed is not None else None
        if flow is None or not hmac.compare_digest(str(flow.get("state", "")), state):
            raise OidcError(
                "this login expired or was started elsewhere: log in again",
                "no flow cookie for the state, or a stale one",
            )
        return await self.client.finish(code, flow), str(flow["back"])

    async def _logout(self, conn: ClientConnection, req: Request) -> None:
        url = await self.client.logout_url(None)
        req.hold = None
        if req is not conn.current or conn.closing:
            return
        proto = self.proto(conn, req)
        gone = (b"Set-Cookie", self._cookie(LOGIN_COOKIE, b"", proto, max_age=0))
        if url is not None:
            conn.respond(req, 303, "logged out", headers=((b"Location", url.encode()), gone))
        else:
            conn.respond(req, 200, "logged out", headers=(gone,))

    def _failed(self, conn: ClientConnection, req: Request, exc: OidcError) -> None:
        if isinstance(exc, ProviderUnavailable):
            retry = ((b"Retry-After", UNAVAILABLE_RETRY),)
            conn.respond(req, 503, exc.public, detail=str(exc), headers=retry)
        else:
            log.warning("an OIDC login failed: %s", exc)
            conn.respond(req, 403, exc.public, detail=str(exc))

    def _cookie(
        self, name: bytes, value: bytes, proto: bytes, *, path: bytes = b"/", max_age: int
    ) -> bytes:
        parts = [name + b"=" + value, b"Path=" + path, b"Max-Age=%d" % max_age, b"HttpOnly"]
        parts.append(b"SameSite=Lax")
        if self.domain is not None:
            parts.append(b"Domain=" + self.domain)
        if proto == b"https":
            parts.append(b"Secure")
        return b"; ".join(parts)

    async def close(self) -> None:
        await self.client.close()


def wants_login_page(req: Request) -> bool:
    """A browser navigating (a page it shows), not a script: GET or HEAD, Accept with
    text/html, and not marked as XHR or as a fetch that is not a navigation."""
    if req.method != b"GET" and req.method != b"HEAD":
        return False
    accept = req.header(b"accept")
    if accept is None or b"text/html" not in accept:
        return False
    if (req.header(b"x-requested-with") or b"").lower() == b"xmlhttprequest":
        return False
    mode = req.header(b"sec-fetch-mode")
    return mode is None or mode == b"navigate"
