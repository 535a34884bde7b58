"""What routes are given (FastAPI dependencies): siesta's parts, and the session of a path.

A route takes `svc: Svc` to reach the lifecycle, the store, the metrics, the event
hub and the controller, and `session: PathSession` for the session named by `{id}`
(404 when there is none). `siesta.api.app` puts the `Services` on the app.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, cast

from fastapi import Depends, Path, Request

from siesta.api.errors import ApiProblem
from siesta.api.models import SessionInfo
from siesta.auth.tokens import TokenBook
from siesta.config import Config
from siesta.core.model import Session, State
from siesta.lifecycle import Lifecycle
from siesta.metrics import SiestaMetrics
from siesta.savings.keeper import LedgerKeeper
from siesta.store.base import Store

if TYPE_CHECKING:
    from siesta.api.events import EventHub


async def no_logs(session: str, lines: int) -> str:
    """The log reader when siesta has no provider to ask (tests of the API alone)."""
    return ""


@dataclass(frozen=True)
class Services:
    """siesta's parts the admin API works through."""

    lifecycle: Lifecycle
    store: Store
    metrics: SiestaMetrics
    hub: EventHub
    controller: Callable[[], object | None]
    """The controller once it runs (None before): read `next_due`, `policy_of`, ..."""
    logs: Callable[[str, int], Awaitable[str]] = no_logs
    """`Provider.logs`: (session, lines) -> the last lines of its backend's output."""
    check_new: Callable[[str, str], str | None] = lambda session, template: None
    """`Config.session_problem`: why a new session (id, template) cannot be, or None."""
    ledger: LedgerKeeper | None = None
    """The savings ledger (`siesta.savings.keeper`), read by /api/savings and the dashboard."""
    config: Config | None = None
    """The config siesta runs with (the savings section, the templates' resources)."""
    tokens: TokenBook | None = None
    """Each session's access token (`gateway.auth` mode token); None in tests of the API alone."""

    def next_due(self, session_id: str) -> float | None:
        """The controller's next policy check of a session (monotonic), if it knows one."""
        next_due = getattr(self.controller(), "next_due", None)
        due = next_due(session_id) if callable(next_due) else None
        return due if isinstance(due, float) else None

    def session_info(self, session: Session) -> SessionInfo:
        """`session` as the API shows it."""
        return session_info(session, time.monotonic(), self.next_due(session.id))


def session_info(session: Session, now: float, next_due: float | None) -> SessionInfo:
    """A session as the API shows it; `now` and `next_due` are monotonic."""
    activity = session.activity
    awake = session.state is State.AWAKE
    return SessionInfo(
        id=session.id,
        template=session.template,
        labels=session.labels,
        state=session.state,
        endpoint=str(session.endpoint) if session.endpoint else None,
        pid=session.pid,
        created=session.created,
        awake_for=now - session.awake_since if session.awake_since is not None else None,
        idle_for=now - activity.last_activity if awake and activity.last_activity else None,
        next_check_in=max(0.0, next_due - now) if awake and next_due is not None else None,
        connections=activity.connections,
        inflight=activity.inflight,
        held=activity.held,
        requests=activity.requests,
        bytes=activity.bytes,
        failures=session.failures,
        failure=session.failure or None,
        retry_in=max(0.0, session.retry_at - now) if session.state is State.FAILED else None,
    )


def services(request: Request) -> Services:
    """The `Services` of the app serving `request`."""
    return cast(Services, request.app.state.services)


Svc = Annotated[Services, Depends(services)]


def path_session(svc: Svc, id: Annotated[str, Path(description="The session id.")]) -> Session:
    """The session named by the path's `{id}`; 404 when there is none."""
    session = svc.lifecycle.get(id)
    if session is None:
        raise ApiProblem(404, f"no session {id!r}")
    return session


PathSession = Annotated[Session, Depends(path_session)]
