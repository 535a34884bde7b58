"""`/api/signals`: what every running session's policy reads, at one moment.

`siesta policy record` polls it and writes the differences between snapshots as a
trace `siesta policy replay` reads (`siesta.record`). Only sessions that are not
asleep are listed (sleeping sessions have no traffic, cpu or probe), so a snapshot
costs O(awake sessions); `?all=true` lists every one, for a recorder's first look.
The controller (which the admin API must not import) is reached through the
`SignalSource` protocol.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any, Protocol, runtime_checkable

from fastapi import APIRouter, Query

from siesta.api.deps import Svc
from siesta.api.models import SessionSignals, SignalsSnapshot
from siesta.api.policy import _plain
from siesta.core.model import Session, State
from siesta.signals import Window

router = APIRouter(prefix="/api/signals", tags=["policy"])


@runtime_checkable
class SignalSource(Protocol):
    """What the snapshot reads of the controller: probe maps and resource windows."""

    app_signals: dict[str, Mapping[str, Any]]

    def resource_window(self, session_id: str) -> Window | None: ...


@router.get("", summary="Counters, cpu, memory and probe maps of every session not asleep")
async def snapshot(
    svc: Svc,
    every: Annotated[
        bool, Query(alias="all", description="list the sleeping sessions too (a first look)")
    ] = False,
) -> SignalsSnapshot:
    controller = svc.controller()
    source = controller if isinstance(controller, SignalSource) else None
    wall, mono = time.time(), time.monotonic()
    sessions = [
        _signals(s, source, wall - mono)
        for s in svc.lifecycle.sessions.values()
        if every or s.state is not State.ASLEEP or s.activity.held
    ]
    return SignalsSnapshot(at=wall, sessions=sorted(sessions, key=lambda s: s.id))


def _signals(session: Session, source: SignalSource | None, offset: float) -> SessionSignals:
    activity = session.activity
    window = None if source is None else source.resource_window(session.id)
    app = None if source is None else source.app_signals.get(session.id)
    last = activity.last_activity
    return SessionSignals(
        id=session.id,
        state=session.state,
        requests=activity.requests,
        bytes=activity.bytes,
        connections=activity.connections,
        inflight=activity.inflight,
        last_activity=last + offset if last else None,
        cpu_percent=None if window is None else window.cpu_percent,
        memory_bytes=None if window is None else window.memory_bytes,
        app=None if app is None else _plain(app),
    )
