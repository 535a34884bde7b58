"""The admin app: FastAPI over the routers of each area, the token, the errors, the docs.

To add routes, write a module in `siesta.api` with `router = APIRouter(prefix=...,
tags=[...])` whose functions take `svc: Svc` (and `session: PathSession` for
`/{id}` paths), declare pydantic models from `siesta.api.models` as their answers,
and add the router to `ROUTERS` below. It is protected by the token unless its path
is listed in `siesta.api.auth`, and it appears in /openapi.json and /docs.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from starlette.middleware import Middleware

from siesta import __version__
from siesta.api import events, logs, policy, savings, sessions, signals, system, ui
from siesta.api.auth import BearerAuth, is_open
from siesta.api.deps import Services
from siesta.api.errors import HANDLERS, responses
from siesta.api.oidc import AdminOidc

ROUTERS: list[APIRouter] = [
    system.router,
    sessions.router,
    logs.router,
    policy.router,
    signals.router,
    events.router,
    savings.router,
    ui.router,
]
"""Every route of the admin API, by area."""

TITLE = "siesta admin API"
DESCRIPTION = (
    "Sessions, their events, policies and savings of a running siesta. Every route but "
    "/healthz, /metrics, /openapi.json and /docs needs `Authorization: Bearer <token>`: the "
    "token is in the state folder's `admin-token` file, or SIESTA_ADMIN_TOKEN."
)
DOCS_ASSETS = "/docs/assets"
"""Where Swagger UI's own files are served from (shipped with fastapi-offline: no CDN)."""


def build_app(services: Services, token: str, oidc: AdminOidc | None = None) -> FastAPI:
    """The ASGI app over `services`, with `token` required on every route that is not open
    (or, for the dashboard, an `oidc` login)."""
    app: FastAPI = FastAPIOffline(
        docs_url="/docs",
        redoc_url=None,
        static_url=DOCS_ASSETS,
        title=TITLE,
        version=__version__,
        description=DESCRIPTION,
        middleware=[
            Middleware(ui.BrowserLogin, token=token, oidc=oidc),
            Middleware(BearerAuth, token=token),
        ],
        exception_handlers=HANDLERS,
    )
    for router in ROUTERS:
        app.include_router(router, responses=responses(e401="missing or wrong token"))
    app.state.services = services
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, generated once from the routes and their models; the bearer
    token is required everywhere but on the open paths."""
    if app.openapi_schema is None:
        doc = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        components = doc.setdefault("components", {})
        components["securitySchemes"] = {"token": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"token": []}]
        for path, item in doc.get("paths", {}).items():
            if is_open(path):
                for operation in item.values():
                    operation["security"] = []
                    operation["responses"].pop("401", None)
        app.openapi_schema = doc
    return app.openapi_schema
