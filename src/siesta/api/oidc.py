"""The admin dashboard's OIDC login (`admin.auth` mode oidc), besides the admin token.

`/ui/oidc/login` sends the browser to the provider (authorization code with PKCE,
`siesta.auth.oidc`); `/ui/oidc/callback` finishes the login, and when the `allow`
rule admits the claims, sets an HttpOnly, SameSite=Strict cookie holding them,
signed. `ui.BrowserLogin` takes that cookie as it takes its own: the request gets
the admin token added, so the dashboard calls the same API as the CLI (which keeps
using the token). The rule is applied at login; the cookie lasts `login_ttl`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from siesta.auth.cookies import cookie
from siesta.auth.oidc import FLOW_TTL, OidcClient, OidcError, Unavailable
from siesta.auth.signed import Signer
from siesta.core.allow import AllowRule

log = logging.getLogger("siesta.api")

COOKIE = "siesta_admin_oidc"
FLOW_COOKIE = "siesta_admin_oidc_flow"
LOGIN_PATH = "/ui/oidc/login"
CALLBACK_PATH = "/ui/oidc/callback"


class AdminOidc:
    """The provider, the cookie key and the rule saying who is an administrator."""

    def __init__(
        self,
        client: OidcClient,
        key: bytes,
        allow: AllowRule,
        *,
        redirect_uri: str | None,
        login_ttl: float,
    ):
        self.client = client
        self.allow = allow
        self.redirect_uri = redirect_uri
        self.login_ttl = login_ttl
        self._login = Signer(key, "admin login")
        self._flow = Signer(key, "admin login flow")

    def logged_in(self, headers: Mapping[bytes, bytes]) -> bool:
        """Whether the request carries a valid admin login cookie."""
        value = cookie(headers.items(), COOKIE.encode())
        return value is not None and self._login.verify(value.decode("latin-1")) is not None

    async def handle(self, scope: MutableMapping[str, Any], request: Request) -> Response:
        """/ui/oidc/login and /ui/oidc/callback."""
        try:
            if scope["path"] == LOGIN_PATH:
                return await self._begin(scope, request)
            if scope["path"] == CALLBACK_PATH:
                return await self._finish(scope, request)
        except Unavailable as exc:
            log.warning("admin OIDC login: %s", exc)
            return _page(exc.public, 503, retry=True)
        except OidcError as exc:
            log.warning("admin OIDC login failed: %s", exc)
            return _page(exc.public, 403)
        return _page("no such page", 404)

    async def _begin(self, scope: MutableMapping[str, Any], request: Request) -> Response:
        await self.client.metadata()
        secure = scope["scheme"] == "https"
        redirect_uri = self.redirect_uri or f"{scope['scheme']}://{_host(request)}{CALLBACK_PATH}"
        flow, url = self.client.begin(redirect_uri, "/ui/")
        response = RedirectResponse(url, status_code=302)
        response.set_cookie(
            FLOW_COOKIE,
            self._flow.sign(flow, FLOW_TTL),
            max_age=int(FLOW_TTL),
            path="/ui/oidc",
            httponly=True,
            samesite="lax",  # the provider sends the browser back from another site
            secure=secure,
        )
        return response

    async def _finish(self, scope: MutableMapping[str, Any], request: Request) -> Response:
        params = request.query_params
        if "error" in params:
            raise OidcError("the login provider refused the login", params["error"])
        signed = request.cookies.get(FLOW_COOKIE)
        flow = self._flow.verify(signed) if signed else None
        state = params.get("state", "")
        if flow is None or not state or not hmac.compare_digest(str(flow["state"]), state):
            raise OidcError("this login expired or was started elsewhere: log in again")
        claims = await self.client.finish(params.get("code", ""), flow)
        who = claims.get("email") or claims.get("sub")
        if not self.allow.allows({"claims": claims}):
            log.warning("admin OIDC login refused by admin.auth.allow: %s", who)
            return _page(f"{who} is not an administrator of this siesta", 403)
        log.info("admin dashboard login through OIDC: %s", who)
        response = RedirectResponse("/ui/", status_code=303)
        response.set_cookie(
            COOKIE,
            self._login.sign({"claims": claims}, self.login_ttl),
            max_age=int(self.login_ttl),
            path="/",
            httponly=True,
            samesite="strict",
            secure=scope["scheme"] == "https",
        )
        response.delete_cookie(FLOW_COOKIE, path="/ui/oidc")
        return response

    async def close(self) -> None:
        await self.client.close()


def _host(request: Request) -> str:
    return request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"


def _page(problem: str, status: int, *, retry: bool = False) -> Response:
    from siesta.api.ui import login_page  # the dashboard's login form, with the problem

    headers = {"Retry-After": "5"} if retry else None
    return HTMLResponse(login_page(problem, sso=True), status, headers=headers)
