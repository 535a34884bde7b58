"""The dashboard at /ui/: a live session table, wake and sleep, events, the policy's
explanation and the savings charts, behind the admin auth.

- `BrowserLogin` (middleware, outside `BearerAuth`) gives browsers a login: `/ui/login`
  takes the admin token in a form and sets an HttpOnly, SameSite=Strict cookie holding
  an HMAC of it (never the token); with `admin.auth` mode oidc, `/ui/oidc/login` is a
  login with the provider instead (`siesta.api.oidc`). With either cookie, a request
  gets the bearer token added, so the dashboard calls the same API as the CLI. A
  request that changes something with the cookie must carry `X-Siesta-UI: 1`, a
  header a cross-site form cannot send. /ui/ pages without a login are redirected to it.
- `router`: the page, its script and style (shipped in `siesta/savings/static`, no
  CDN, no build step) and the charts (`siesta.savings.charts`, SVG). Not in /openapi.json.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from functools import partial
from html import escape
from http.cookies import SimpleCookie
from importlib import resources
from typing import TYPE_CHECKING, Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Query
from fastapi.responses import RedirectResponse, Response
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from siesta.api.deps import Svc
from siesta.api.errors import ApiProblem
from siesta.api.events import read_events
from siesta.savings import charts
from siesta.savings import report as reporting
from siesta.savings.costing import model_of

if TYPE_CHECKING:
    from siesta.api.oidc import AdminOidc

COOKIE = "siesta_admin"
UI_HEADER = b"x-siesta-ui"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_LOGIN_BODY = 4096  # bytes: a token fits many times over
COOKIE_MAX_AGE = 8 * 3600  # seconds: a working day; the token itself never expires
STATIC = {"app.js": "text/javascript", "app.css": "text/css", "index.html": "text/html"}
TIMELINE_MAX_HOURS = 24 * 31  # the awake timeline covers at most a month
TIMELINE_MAX_EVENTS = 100_000  # events read for the timeline chart

router = APIRouter(prefix="/ui", include_in_schema=False)


# -- login ----------------------------------------------------------------------------


def cookie_value(token: str) -> str:
    """What the login cookie holds: an HMAC of the token (never the token itself)."""
    return hmac.new(token.encode(), b"siesta admin dashboard", hashlib.sha256).hexdigest()


class BrowserLogin:
    """ASGI middleware: the dashboard's login, and its cookie standing for the token."""

    def __init__(self, app: ASGIApp, token: str, oidc: AdminOidc | None = None):
        self.app = app
        self.token = token
        self.expected = cookie_value(token).encode()
        self.oidc = oidc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in ("/ui/login", "/ui/logout"):
            response = await self._login(scope, receive)
            await response(scope, receive, send)
            return
        if self.oidc is not None and path.startswith("/ui/oidc/"):
            response = await self.oidc.handle(scope, Request(scope, receive))
            await response(scope, receive, send)
            return
        headers = dict(scope["headers"])
        logged_in = hmac.compare_digest(_cookie(headers, COOKIE).encode(), self.expected)
        if not logged_in and self.oidc is not None:
            logged_in = self.oidc.logged_in(headers)
        ui_page = path == "/ui" or path.startswith("/ui/")
        if logged_in and b"authorization" not in headers:
            if scope["method"] not in SAFE_METHODS and headers.get(UI_HEADER) != b"1":
                refused = JSONResponse(
                    {"error": "a change made with the dashboard's login needs X-Siesta-UI: 1"},
                    status_code=403,
                )
                await refused(scope, receive, send)
                return
            bearer = (b"authorization", f"Bearer {self.token}".encode())
            scope = {**scope, "headers": [*scope["headers"], bearer]}
        elif ui_page and not logged_in and b"authorization" not in headers:
            await RedirectResponse("/ui/login", status_code=303)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _login(self, scope: Scope, receive: Receive) -> Response:
        request = Request(scope, receive)
        if scope["path"] == "/ui/logout":
            if request.method != "POST":
                return JSONResponse({"error": "log out with POST"}, status_code=405)
            done = RedirectResponse("/ui/login", status_code=303)
            done.delete_cookie(COOKIE, path="/")
            done.delete_cookie("siesta_admin_oidc", path="/")
            return done
        if request.method == "GET":
            return HTMLResponse(login_page(sso=self.oidc is not None))
        if request.method != "POST":
            return JSONResponse({"error": "GET or POST /ui/login"}, status_code=405)
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{scope['scheme']}://{request.headers.get('host')}":
            return HTMLResponse(login_page("a login from another site is refused"), 403)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BODY:
                return HTMLResponse(login_page("that is not a token"), 413)
        given = login_form(body)
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            why = "wrong admin token" if given else "enter the admin token"
            return HTMLResponse(login_page(why), 401)
        done = RedirectResponse("/ui/", status_code=303)
        done.set_cookie(
            COOKIE,
            cookie_value(self.token),
            max_age=COOKIE_MAX_AGE,
            path="/",
            httponly=True,
            samesite="strict",
            secure=scope["scheme"] == "https",
        )
        return done


def _cookie(headers: Mapping[bytes, bytes], name: str) -> str:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get(b"cookie", b"").decode("latin-1"))
    except Exception:  # a malformed Cookie header is no login, never an error
        return ""
    morsel = jar.get(name)
    return morsel.value if morsel is not None else ""


def login_form(body: bytes) -> str:
    """The token field of a urlencoded login form ("" when absent)."""
    fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
    return (fields.get("token") or [""])[0].strip()


LOGIN_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;margin:0;display:grid;place-items:center;"
    "min-height:100vh;background:#f4f6f8;color:#1d2733}"
    "form{background:#fff;padding:1.5rem;border-radius:10px;box-shadow:0 1px 4px #0002;"
    "width:min(92vw,24rem)}label{display:block;font-weight:600;margin-bottom:.3rem}"
    "input{width:100%;box-sizing:border-box;font:inherit;padding:.5rem;border:1px solid "
    "#8a96a3;border-radius:6px}button{margin-top:1rem;font:inherit;padding:.5rem 1rem;"
    "border:0;border-radius:6px;background:#1f6f66;color:#fff;cursor:pointer}"
    "button:focus-visible,input:focus-visible{outline:3px solid #e9a23b;outline-offset:2px}"
    "[role=alert]{color:#a4262c;margin:.6rem 0 0}p{color:#4a5868;font-size:.9rem}"
)


def login_page(problem: str | None = None, *, sso: bool = False) -> str:
    """The login form (self-contained: no other file is reachable before login); with
    `sso`, a link to the OIDC login above it."""
    alert = f'<p role="alert">{escape(problem)}</p>' if problem else ""
    single = '<p><a id="sso" href="/ui/oidc/login">Log in with single sign-on</a></p>'
    alert = (single if sso else "") + alert
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>siesta: log in</title><style>{LOGIN_STYLE}</style></head><body>"
        '<form method="post" action="/ui/login"><h1>siesta</h1>'
        '<label for="token">Admin token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        'required autofocus aria-describedby="where">'
        '<p id="where">In the state folder\'s <code>admin-token</code> file, or '
        "<code>SIESTA_ADMIN_TOKEN</code>.</p>"
        f'{alert}<button type="submit">Log in</button></form></body></html>'
    )


# -- the page, its files and its charts ---------------------------------------------------


def _static(name: str) -> bytes:
    return resources.files("siesta.savings").joinpath("static", name).read_bytes()


@router.get("")
async def ui_root() -> Response:
    return RedirectResponse("/ui/", status_code=308)


@router.get("/")
async def page() -> Response:
    return Response(_static("index.html"), media_type="text/html", headers=_NO_STORE)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    media = STATIC.get(name)
    if media is None:
        raise ApiProblem(404, f"no file {name!r}")
    return Response(_static(name), media_type=media, headers={"Cache-Control": "no-cache"})


_NO_STORE = {"Cache-Control": "no-store"}


@router.get("/charts/{name}.svg")
async def chart(
    svc: Svc,
    name: str,
    hours: Annotated[float, Query(gt=0, le=TIMELINE_MAX_HOURS)] = 24,
) -> Response:
    if svc.ledger is None or svc.config is None:
        raise ApiProblem(503, "the savings ledger is not running")
    now = time.time()
    accounts = svc.ledger.snapshot(now)
    built = reporting.build(accounts, svc.config.savings, model_of(svc.config), now)
    draw: Callable[[], str]
    if name == "templates":
        draw = partial(charts.templates, built)
    elif name == "intensity":
        draw = partial(charts.intensity, built)
    elif name == "timeline":
        start = now - hours * 3600
        events = await read_events(svc.lifecycle.recorder, None, start, TIMELINE_MAX_EVENTS)
        live = svc.lifecycle.sessions
        running = {a.session: a.running for a in accounts if a.session in live}
        spans = reporting.awake_spans(events, start, now, running)
        draw = partial(charts.timeline, {s: spans[s] for s in running}, start, now)
    else:
        raise ApiProblem(404, f"no chart {name!r}: templates, intensity or timeline")
    try:  # matplotlib takes a few hundred ms: off the event loop the gateway runs on
        svg = await asyncio.to_thread(draw)
    except charts.ChartsUnavailable as exc:
        raise ApiProblem(503, str(exc)) from None
    return Response(svg, media_type="image/svg+xml", headers=_NO_STORE)
