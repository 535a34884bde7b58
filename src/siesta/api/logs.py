"""`GET /api/sessions/{id}/logs`: the last lines of a session's backend log.

Read by `siesta logs ID`. The log comes from the provider (`Provider.logs`), so it
answers for every provider: a local backend's log file, a container's Docker log
(kept in memory for a while after `on_sleep: remove`), nothing for keda (`kubectl
logs` has it).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from siesta.api.deps import PathSession, Svc
from siesta.api.errors import responses
from siesta.api.models import LogLines

DEFAULT_LINES = 100
MAX_LINES = 10_000
"""Lines at most in one answer: enough to read a start-up, bounded so one request cannot
make siesta read a whole multi-gigabyte log into memory."""

router = APIRouter(prefix="/api/sessions", tags=["sessions"])


@router.get(
    "/{id}/logs",
    summary="The last lines of the session's backend log (a local backend's output, a "
    "container's Docker log)",
    responses=responses(e404="no such session", e422="bad lines"),
)
async def logs(
    session: PathSession,
    svc: Svc,
    lines: Annotated[
        int, Query(ge=1, le=MAX_LINES, description=f"how many lines ({DEFAULT_LINES} by default)")
    ] = DEFAULT_LINES,
) -> LogLines:
    return LogLines(session=session.id, lines=lines, log=await svc.logs(session.id, lines))
