"""`/api/savings`: awake, asleep and always-on seconds, per session and in total."""

from __future__ import annotations

import time

from fastapi import APIRouter

from siesta import ledger
from siesta.api.deps import Svc
from siesta.api.models import Savings, Usage

router = APIRouter(prefix="/api/savings", tags=["savings"])


def usage_view(usage: ledger.Usage) -> Usage:
    """A ledger entry as the API shows it."""
    return Usage(
        awake_seconds=usage.awake_seconds,
        asleep_seconds=usage.asleep_seconds,
        always_on_seconds=usage.always_on_seconds,
        saved_fraction=usage.saved_fraction,
        wakes=usage.wakes,
        sleeps=usage.sleeps,
    )


@router.get("", summary="Awake, asleep and always-on seconds, per session and in total")
async def savings(svc: Svc) -> Savings:
    now = time.time()
    since = {s.id: s.created for s in svc.lifecycle.sessions.values() if s.created > 0}
    events = [e for e in svc.store.events(limit=2**62) if e.session in since]
    per = ledger.usage(events, now, since)
    return Savings(
        at=now,
        sessions={sid: usage_view(u) for sid, u in sorted(per.items())},
        total=usage_view(ledger.total(per.values())),
    )
