"""Errors of the admin API: every one is JSON `{"error": "..."}`, in one line.

Routes raise `ApiProblem`; `HANDLERS` turns it, Starlette's HTTP errors (404, 405),
FastAPI's validation errors and anything unexpected into that shape. Used by
`siesta.api.app`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from siesta.api.models import NEW_SESSION_RULES, ErrorBody

log = logging.getLogger("siesta.api")


class ApiProblem(Exception):
    """An error answer: HTTP `status`, a one-line `message`, and maybe a retry delay (s)."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def error_response(status: int, message: str, retry_after: float | None = None) -> JSONResponse:
    """`{"error": message}` (with `retry_after` and a Retry-After header when given)."""
    body: dict[str, Any] = {"error": message}
    headers = {}
    if retry_after is not None:
        body["retry_after"] = retry_after
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return JSONResponse(body, status_code=status, headers=headers)


def responses(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI error answers of a route, e.g. `responses(e404="no such session")`."""
    return {
        int(code.removeprefix("e")): {"model": ErrorBody, "description": text}
        for code, text in described.items()
    }


async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiProblem)
    return error_response(exc.status, exc.message, exc.retry_after)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _invalid(request: Request, exc: Exception) -> Response:
    """A request that does not fit its route's models: 400 for a body that is not JSON
    (or not sent as JSON), else 422 with each problem in plain words."""
    assert isinstance(exc, RequestValidationError)
    errors: Sequence[Any] = exc.errors()
    if any(_not_json(e) for e in errors):
        return error_response(400, "the body must be JSON, sent as Content-Type: application/json")
    return error_response(422, "; ".join(dict.fromkeys(_plain(e) for e in errors)))


def _not_json(error: dict[str, Any]) -> bool:
    """Invalid JSON, or a body not declared JSON (FastAPI then leaves it as bytes)."""
    raw = tuple(error["loc"]) == ("body",) and isinstance(error.get("input"), bytes)
    return raw or error.get("type") == "json_invalid"


def _plain(error: dict[str, Any]) -> str:
    """One validation error as `<name> must be ...`."""
    where, loc = error["loc"][0], [str(part) for part in error["loc"][1:]]
    if where == "body" and not loc:
        return "the body must be a JSON object"
    if where == "body" and loc[0] in NEW_SESSION_RULES:
        return NEW_SESSION_RULES[loc[0]]
    name = ".".join(loc) or where
    message = str(error.get("msg", "is not valid"))
    if message.startswith("Input should be "):
        return f"{name} must be {message.removeprefix('Input should be ')}"
    if message == "Field required":
        return f"{name} is required"
    return f"{name}: {message}"


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error(
        "admin API: %s %s failed: %s",
        request.method,
        request.url.path,
        exc,
        exc_info=log.isEnabledFor(logging.DEBUG),
    )
    return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)


HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    ApiProblem: _problem,
    HTTPException: _http_error,
    RequestValidationError: _invalid,
    Exception: _server_error,
}
"""Exception handlers of the admin app, by exception class."""
