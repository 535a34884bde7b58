"""`GET /api/sessions/{id}/logs`: the last lines of a session's backend log.

Mounted by the admin API (`siesta.api`) and read by `siesta logs ID`. The log comes from
the provider (`Provider.logs`), so it answers for every provider: a local backend's log
file, a container's Docker log (kept in memory for a while after `on_sleep: remove`),
nothing for keda (`kubectl logs` has it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DEFAULT_LINES = 100
MAX_LINES = 10_000
"""Lines at most in one answer: enough to read a start-up, bounded so one request cannot
make siesta read a whole multi-gigabyte log into memory."""

LogReader = Callable[[str, int], Awaitable[str]]
"""`Provider.logs`: (session, lines) -> text."""


class Sessions(Protocol):
    """Where the route checks that a session exists (the lifecycle)."""

    def get(self, session_id: str) -> object | None: ...


def logs_route(sessions: Sessions, read: LogReader) -> Route:
    """The route, over the lifecycle's sessions and the provider's logs."""

    async def logs(request: Request) -> Response:
        sid = request.path_params["id"]
        if sessions.get(sid) is None:
            raise HTTPException(404, f"no session {sid!r}")
        lines = _lines(request.query_params.get("lines"))
        return JSONResponse({"session": sid, "lines": lines, "log": await read(sid, lines)})

    return Route("/api/sessions/{id}/logs", logs, methods=["GET"])


def _lines(value: str | None) -> int:
    if not value:
        return DEFAULT_LINES
    if not value.isdigit() or not 1 <= int(value) <= MAX_LINES:
        raise HTTPException(422, f"lines must be a whole number from 1 to {MAX_LINES}")
    return int(value)


def openapi_path(session_id: Any, error: Any, answer: Callable[..., Any]) -> dict[str, Any]:
    """The route's OpenAPI path item (`session_id`: the id parameter; `error`: the Error
    schema; `answer`: api.py's response builder)."""
    log_answer = {
        "type": "object",
        "properties": {
            "session": {"type": "string"},
            "lines": {"type": "integer"},
            "log": {"type": "string", "description": "the last lines, oldest first"},
        },
        "required": ["session", "lines", "log"],
    }
    return {
        "parameters": [session_id],
        "get": {
            "summary": "The last lines of the session's backend log (a local backend's "
            "output, a container's Docker log)",
            "parameters": [
                {
                    "name": "lines",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LINES},
                    "description": f"how many lines ({DEFAULT_LINES} by default)",
                }
            ],
            "responses": {
                "200": answer("the log", log_answer),
                "404": answer("no such session", error),
                "422": answer("bad lines", error),
                "401": answer("missing or wrong token", error),
            },
        },
    }
