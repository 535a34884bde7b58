"""The savings endpoints of the admin API, and the dashboard at /ui/.

`siesta.api` adds `SavingsApi.routes()` to its routes and wraps its app in
`browser_login` (one line each). Endpoints:

- `GET /api/savings`: the savings report (`siesta.savings.report.to_json`), O(sessions):
  it reads the live ledger, never the event log;
- `GET /api/savings/advise`: `siesta advise` as JSON;
- `GET /ui/` the dashboard, `GET|POST /ui/login`, `POST /ui/logout`,
  `GET /ui/charts/{name}.svg`, `GET /ui/static/...` its assets (in the package).

Browser login: `/ui/login` takes the admin token in a form and sets an HttpOnly,
SameSite=Strict cookie holding an HMAC of it. `browser_login` turns that cookie into
the bearer token for the admin API, so the dashboard uses the same endpoints as the
CLI; a request changing state with the cookie must carry `X-Siesta-UI: 1` (a header a
cross-site form cannot send), so a cookie is no way in for cross-site requests.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from siesta.core.model import Session

from . import advise as advising
from . import report as reporting
from .costing import Configured, Model, model_of
from .keeper import LedgerKeeper

COOKIE = "siesta_admin"
UI_HEADER = "x-siesta-ui"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_LOGIN_BODY = 4096  # bytes: a token fits many times over


class SavingsApi:
    """The savings endpoints, over the live ledger."""

    def __init__(
        self,
        keeper: LedgerKeeper,
        config: Configured,
        sessions: Callable[[], Mapping[str, Session]],
    ):
        self.keeper = keeper
        self.config = config
        self._sessions = sessions

    def routes(self) -> list[BaseRoute]:
        """The API routes (the dashboard's are added by `dashboard_routes`)."""
        return [
            Route("/api/savings", self.savings, methods=["GET"]),
            Route("/api/savings/advise", self.advise, methods=["GET"]),
        ]

    def model(self) -> Model:
        """The costing model of the config."""
        return model_of(self.config)

    def report(self, now: float | None = None) -> reporting.Report:
        """The savings report now."""
        at = time.time() if now is None else now
        accounts = self.keeper.snapshot(at)
        return reporting.build(
            accounts, self.config.savings, self.model(), at, active=self._sessions()
        )

    async def savings(self, request: Request) -> Response:
        """Per session, per template and in total: time, wakes, $ and CO2e saved."""
        return JSONResponse(reporting.to_json(self.report()))

    async def advise(self, request: Request) -> Response:
        """Where each template's sessions would be cleanest and cheapest, and when."""
        conf = self.config.savings
        regions = conf.candidates()
        factors = {name: conf.price_factor(name) for name in regions}
        found = advising.advise(self.keeper.snapshot(), self.model(), regions, factors)
        return JSONResponse(advising.to_json(found, regions))


OPENAPI_PATHS: dict[str, Any] = {
    "/api/savings": {
        "get": {
            "summary": "What sleeping saved: per session, per template and in total, the "
            "awake and asleep seconds, wakes, wake time p50/p95, cost, and $, kWh and "
            "kg CO2e saved against always-on (with every coefficient and its source)",
            "responses": {
                "200": {
                    "description": "the report",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "401": {"description": "missing or wrong token"},
            },
        }
    },
    "/api/savings/advise": {
        "get": {
            "summary": "For each template: the cleanest and the cheapest candidate region "
            "and the best hours of the day, with expected $ and kg CO2e per month",
            "responses": {
                "200": {
                    "description": "the advice",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "401": {"description": "missing or wrong token"},
            },
        }
    },
}
"""The savings endpoints in the admin API's OpenAPI description."""


# -- browser login ------------------------------------------------------------------


def cookie_value(token: str) -> str:
    """What the login cookie holds: an HMAC of the token (never the token itself)."""
    return hmac.new(token.encode(), b"siesta admin dashboard", hashlib.sha256).hexdigest()


class BrowserLogin:
    """ASGI middleware: the dashboard's cookie stands for the admin token.

    A request with a valid cookie and no Authorization header gets the bearer token
    added (unsafe methods only with `X-Siesta-UI`); /ui/ pages without a valid login
    are redirected to /ui/login. Everything else passes untouched to the admin app.
    """

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.token = token
        self.expected = cookie_value(token).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in ("/ui/login", "/ui/static/app.css"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        logged_in = hmac.compare_digest(_cookie(headers, COOKIE).encode(), self.expected)
        if logged_in and b"authorization" not in headers:
            if scope["method"] not in SAFE_METHODS and headers.get(UI_HEADER.encode()) != b"1":
                response: Response = JSONResponse(
                    {"error": f"a change made with the dashboard's cookie needs {UI_HEADER}: 1"},
                    status_code=403,
                )
                await response(scope, receive, send)
                return
            bearer = (b"authorization", f"Bearer {self.token}".encode())
            scope = {**scope, "headers": [*scope["headers"], bearer]}
        elif (path == "/ui" or path.startswith("/ui/")) and not logged_in:
            response = RedirectResponse("/ui/login", status_code=303)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _cookie(headers: Mapping[bytes, bytes], name: str) -> str:
    raw = headers.get(b"cookie", b"").decode("latin-1")
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed Cookie header is no login, never an error
        return ""
    morsel = jar.get(name)
    return morsel.value if morsel is not None else ""


def login_form(request_body: bytes) -> str:
    """The token field of a urlencoded login form ("" when absent)."""
    fields = parse_qs(request_body.decode("utf-8", "replace"), max_num_fields=10)
    return (fields.get("token") or [""])[0].strip()
