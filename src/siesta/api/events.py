"""`/api/events`: the stored transitions, and new ones as server-sent events.

`EventHub` is a lifecycle observer that fans every event out to the open streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from siesta.api.deps import Svc
from siesta.api.errors import ApiProblem, responses
from siesta.api.models import Event
from siesta.core.model import Transition
from siesta.lifecycle import Lifecycle
from siesta.store.writer import Recorder

log = logging.getLogger("siesta.api")

KEEPALIVE_EVERY = 15.0  # seconds between SSE comments: under common 30-60s proxy idle timeouts
STREAM_BACKLOG = 10_000  # events queued for one slow SSE client before its stream is ended
MAX_EVENTS = 10_000  # most events one GET /api/events returns

router = APIRouter(prefix="/api/events", tags=["events"])

SessionFilter = Annotated[str | None, Query(description="only this session's events")]
Since = Annotated[
    float | None,
    Query(
        allow_inf_nan=False,
        description="only events after this time (seconds since the epoch)",
    ),
]


async def read_events(
    store: Recorder, session: str | None, since: float | None, limit: int
) -> list[Transition]:
    """Stored events (off the event loop) and those still queued for the store; a store
    that cannot be read is a 503."""
    try:
        return await store.events(session, since, limit)
    except Exception as exc:
        raise ApiProblem(503, f"the store cannot be read: {exc}", retry_after=5.0) from None


async def _backlog(store: Recorder, session: str | None, since: float) -> list[Transition]:
    """The stored events a resumed stream replays; none when the store cannot be read
    (the live events still flow)."""
    try:
        return await store.events(session, since, MAX_EVENTS)
    except Exception as exc:
        log.warning("event stream: the backlog could not be read: %s", exc)
        return []


def event_view(event: Transition) -> Event:
    """An event as the API shows it."""
    return Event(
        session=event.session,
        at=event.at,
        old=event.old,
        new=event.new,
        reason=event.reason,
        wake_seconds=event.wake_seconds,
    )


@router.get("", summary="Stored events, oldest first", responses=responses(e422="a bad parameter"))
async def events(
    svc: Svc,
    session: SessionFilter = None,
    since: Since = None,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = 1000,
) -> list[Event]:
    return [
        event_view(e)
        for e in await read_events(svc.lifecycle.recorder, session or None, since, limit)
    ]


@router.get(
    "/stream",
    summary="New events as server-sent events (event: transition, data: Event)",
    description="With `since` (or a Last-Event-ID header), stored events after that time "
    "come first. An event's id is its time.",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "an endless stream",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **responses(e422="a bad parameter"),
    },
)
async def stream(
    svc: Svc,
    session: SessionFilter = None,
    since: Since = None,
    last_event_id: Annotated[
        float | None, Header(alias="Last-Event-ID", allow_inf_nan=False, include_in_schema=False)
    ] = None,
) -> StreamingResponse:
    return StreamingResponse(
        _sse(
            svc.hub,
            svc.lifecycle.recorder,
            session or None,
            since if since is not None else last_event_id,
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse(
    hub: EventHub, store: Recorder, session: str | None, since: float | None
) -> AsyncIterator[str]:
    with hub.subscribe(session) as subscription:
        yield "retry: 1000\n\n"
        sent: set[Transition] = set()
        if since is not None:
            for event in await _backlog(store, session, since):
                sent.add(event)
                yield _sse_event(event)
        while not subscription.closed:
            taken = await subscription.take(KEEPALIVE_EVERY)
            for event in taken:
                if event not in sent:
                    yield _sse_event(event)
            sent.clear()  # the backlog overlaps only the first batch
            if not taken:
                yield ": keep-alive\n\n"


def _sse_event(event: Transition) -> str:
    data = event_view(event).model_dump_json()
    return f"id: {event.at!r}\nevent: transition\ndata: {data}\n\n"


class _Subscription:
    """Events for one SSE client, queued until it takes them."""

    def __init__(self, session: str | None):
        self.session = session
        self.pending: deque[Transition] = deque()
        self.ready = asyncio.Event()
        self.closed = False

    def push(self, event: Transition) -> None:
        if self.session is not None and event.session != self.session:
            return
        if len(self.pending) >= STREAM_BACKLOG:
            self.closed = True  # a client this far behind reconnects with Last-Event-ID
        else:
            self.pending.append(event)
        self.ready.set()

    async def take(self, timeout: float) -> list[Transition]:
        """What arrived, waiting at most `timeout` seconds for something."""
        if not self.pending and not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ready.wait(), timeout)
        self.ready.clear()
        taken = list(self.pending)
        self.pending.clear()
        return taken

    def close(self) -> None:
        self.closed = True
        self.ready.set()


class EventHub:
    """Fans the lifecycle's events out to the SSE clients (a lifecycle observer)."""

    def __init__(self, lifecycle: Lifecycle):
        self._subscriptions: set[_Subscription] = set()
        lifecycle.observers.append(self.publish)

    def publish(self, event: Transition) -> None:
        for subscription in self._subscriptions:
            subscription.push(event)

    @contextlib.contextmanager
    def subscribe(self, session: str | None) -> Iterator[_Subscription]:
        subscription = _Subscription(session)
        self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)

    def close(self) -> None:
        """End every stream (siesta is stopping)."""
        for subscription in self._subscriptions:
            subscription.close()
