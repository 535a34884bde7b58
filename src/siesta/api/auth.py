"""Who may call the admin API: the bearer token, and the few paths open without it.

`siesta.api.app` wraps the whole app in `BearerAuth`, so a route added later is
protected unless its path is listed here as open; the OpenAPI document marks the
same open paths (`security: []`), from the same lists. The token is made by
`load_token` at first start.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from siesta.adminclient import TOKEN_ENV, TOKEN_FILE

OPEN_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json", "/docs"})
"""Paths served without the token."""

OPEN_PREFIXES = ("/docs/",)
"""Path prefixes served without the token (the API docs' own files)."""


def is_open(path: str) -> bool:
    """Whether `path` is served without the token."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def load_token(state_dir: Path, environ: Mapping[str, str]) -> tuple[str, bool]:
    """The admin token, and whether it was just created.

    `SIESTA_ADMIN_TOKEN` wins; else the state folder's token file is read, or
    created (mode 0600) with a new random token.
    """
    given = environ.get(TOKEN_ENV, "").strip()
    if given:
        return given, False
    path = state_dir / TOKEN_FILE
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        existing = path.read_text().strip()
        if existing:
            return existing, False
        path.unlink()  # an empty file (a crash while writing): start again
        return load_token(state_dir, environ)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token, True


class BearerAuth:
    """ASGI middleware: every path but the open ones needs the bearer token."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_open(scope["path"]):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                why = "wrong admin token" if given else "missing admin token"
                response = JSONResponse(
                    {"error": f"{why}: send Authorization: Bearer <token>"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
