"""Holding requests while their session wakes.

The client connection hands over a request for a session that is not awake;
the activator asks the lifecycle to wake it (single-flight there), holds the
request at most `wake_timeout`, then forwards it or answers 503 with
`Retry-After`. Browsers get a waiting page that reloads itself if the wake takes
longer than `waiting_page_after`. The hold queue is bounded per session, per client
and in all; a client that starts too many wakes gets 429 (`wake_rate`). A client is
its address, or behind a trusted proxy the last X-Forwarded-For hop that is not one.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

from siesta.core.limits import ClientCounts, WakeRates, client_key, retry_seconds
from siesta.core.model import Session, State
from siesta.lifecycle import AtCapacity, WakeError
from siesta.logconfig import fields

from .client import COLD
from .http import new_event_id
from .pages import failure_page, waiting_page

if TYPE_CHECKING:
    from .client import ClientConnection, Request
    from .server import Gateway

log = logging.getLogger("siesta.gateway")

FAILURE_LOG_TIMEOUT = 2.0  # seconds to read a backend's log for the failure page


class Activator:
    """Holds requests for sleeping sessions and wakes them."""

    def __init__(self, gateway: Gateway):
        self.gw = gateway
        self.held = 0
        self.held_by = ClientCounts()  # requests held, by client
        rate = gateway.wake_rate
        self.rates = WakeRates(rate) if rate is not None else None

    def hold(self, conn: ClientConnection, req: Request, session: Session) -> None:
        """Hold `req` until `session` is awake, then forward it; or answer 503 (429 for a
        client over its wake rate)."""
        gw = self.gw
        if session.activity.held >= gw.max_held_per_session or self.held >= gw.max_held_total:
            conn.respond(
                req,
                503,
                f"too many requests are waiting for session {session.id!r}",
                headers=((b"Retry-After", b"1"),),
            )
            return
        client = client_of(gw, conn, req)
        if self.held_by.get(client) >= gw.max_held_per_client:
            conn.respond(
                req,
                503,
                "too many of this client's requests are waiting for sessions to wake",
                headers=((b"Retry-After", b"1"),),
            )
            return
        if self.rates is not None and self._starts_wake(session):
            wait = self.rates.take(client, gw.now())
            if wait:
                retry = retry_seconds(wait)
                conn.respond(
                    req,
                    429,
                    f"this client woke too many sessions: try again in {retry}s",
                    headers=((b"Retry-After", str(retry).encode()),),
                )
                return
        req.wake = COLD
        self.held += 1  # counted now, not when the task first runs: the bound must hold
        session.activity.held += 1
        self.held_by.add(client)
        req.hold = asyncio.ensure_future(self._hold(conn, req, session))
        req.hold.add_done_callback(lambda _: self._release(session, client))

    def _starts_wake(self, session: Session) -> bool:
        """Whether a request held for `session` would start a wake (what `wake_rate`
        counts): none is under way, and no request waits for one about to begin."""
        return not session.activity.held and not self.gw.lifecycle.waking(session.id)

    def _release(self, session: Session, client: str | None = None) -> None:
        self.held -= 1
        session.activity.held -= 1
        if client is not None:
            self.held_by.remove(client)

    async def _hold(self, conn: ClientConnection, req: Request, session: Session) -> None:
        """Wait for the wake, then forward; every other way out is a 503 with Retry-After.

        Nothing here waits without a bound: the wake is given `wake_timeout`, and any
        error on the way (the lifecycle's, a provider's, the store's) is an answer too.
        """
        gw = self.gw
        target = req.target[:80].decode("latin-1")
        reason = f"request {req.method.decode('latin-1')} {target}"
        wake = asyncio.ensure_future(_until_awake(gw, session, reason))
        try:
            if gw.waiting_page and _wants_page(req):
                done, _ = await asyncio.wait({wake}, timeout=gw.waiting_page_after)
                if not done:
                    self._waiting_page(conn, req, session, wake)
                    return
            await asyncio.wait_for(wake, gw.wake_timeout)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the client went away, or the gateway closes
            why = f"session {session.id!r}: its wake was abandoned"
            self._unavailable(conn, req, why, 1.0)  # the wake's own cancel is an answer too
        except TimeoutError:
            why = f"session {session.id!r} did not wake within {gw.wake_timeout:g}s"
            self._unavailable(conn, req, why, 5.0)
        except AtCapacity as exc:  # not the session's fault: no failure page
            why = "too many sessions are awake; try again later"
            self._unavailable(conn, req, why, exc.retry_after, detail=str(exc))
        except WakeError as exc:
            if gw.waiting_page and _wants_page(req):
                await self._failure_page(conn, req, session, exc)
                return
            why = f"session {session.id!r} could not be woken"
            # the error may name commands and paths: for the log only
            self._unavailable(conn, req, why, exc.retry_after, detail=str(exc))
        except Exception as exc:
            log.exception("%s: waking for a held request failed", session.id)
            why = f"session {session.id!r} could not be woken"
            self._unavailable(conn, req, why, 5.0, detail=f"{type(exc).__name__}: {exc}")
        else:
            if req is not conn.current or conn.closing:
                return  # the client went away meanwhile
            endpoint = session.endpoint
            if session.state is State.AWAKE and endpoint is not None:
                req.hold = None
                conn.forward(req, endpoint)
            else:
                why = f"session {session.id!r} went to sleep again before it could serve"
                self._unavailable(conn, req, why, 1.0)

    def _unavailable(
        self,
        conn: ClientConnection,
        req: Request,
        why: str,
        retry_after: float,
        *,
        detail: str | None = None,
    ) -> None:
        retry = str(max(1, math.ceil(retry_after))).encode()
        conn.respond(req, 503, why, detail=detail, headers=((b"Retry-After", retry),))

    def recheck(self, conn: ClientConnection, req: Request) -> bool:
        """Hold `req`, whose remote backend refused a connection after its wake, while the
        lifecycle checks readiness again; then forward it, or answer 503. False (the
        caller answers 502) for a local backend, or a request already held so once."""
        session = req.session
        gw = self.gw
        if session is None or req.rechecked or not gw.lifecycle.remote(session):
            return False
        req.rechecked = True
        self.held += 1
        session.activity.held += 1  # KEDA sees the session active meanwhile
        req.hold = asyncio.ensure_future(self._recheck(conn, req, session))
        req.hold.add_done_callback(lambda _: self._release(session))
        return True

    async def _recheck(self, conn: ClientConnection, req: Request, session: Session) -> None:
        if not await self.gw.lifecycle.recheck(session.id):
            conn.respond(
                req,
                503,
                f"session {session.id!r} does not answer at its address",
                headers=((b"Retry-After", b"5"),),
            )
        elif req is conn.current and not conn.closing and session.endpoint is not None:
            req.hold = None
            conn.forward(req, session.endpoint)

    async def _failure_page(
        self, conn: ClientConnection, req: Request, session: Session, exc: WakeError
    ) -> None:
        """A browser's answer to a start that failed: the reason, the end of the backend's
        log (where the template allows it), and a countdown to the next try."""
        try:
            shown = await asyncio.wait_for(self.gw.failure_log(session), FAILURE_LOG_TIMEOUT)
        except Exception:  # no log is no reason to withhold the page
            shown = None
        if req is not conn.current or conn.closing:
            return
        retry = max(1, math.ceil(exc.retry_after))
        event = new_event_id()
        why = session.failure or str(exc)
        log.warning(
            "%s: start failed, failure page shown (event %s): %s",
            session.id,
            event,
            exc,
            extra=fields(session=session.id, event_id=event, reason=why),
        )
        conn.respond(
            req,
            503,
            "could not start",
            headers=((b"Retry-After", str(retry).encode()), (b"X-Siesta-Event", event.encode())),
            body=failure_page(session.id, why, retry, event, shown).encode(),
            content_type=b"text/html; charset=utf-8",
        )

    def _waiting_page(
        self, conn: ClientConnection, req: Request, session: Session, wake: asyncio.Future[Session]
    ) -> None:
        wake.add_done_callback(_retrieve)  # the wake goes on; the page reloads until it is done
        conn.respond(
            req,
            503,
            "waking",
            headers=((b"Retry-After", b"1"),),
            body=waiting_page(session.id).encode(),
            content_type=b"text/html; charset=utf-8",
        )


async def _until_awake(gw: Gateway, session: Session, reason: str) -> Session:
    """Wake `session` until it is AWAKE: with replicas, a session just woken may be taken
    over by another replica's wake before the request is forwarded; then it waits for
    that one (the caller bounds the whole by wake_timeout)."""
    while True:
        await gw.lifecycle.wake(session.id, reason)
        if session.state is State.AWAKE and session.endpoint is not None:
            return session
        await asyncio.sleep(0)


def client_of(gw: Gateway, conn: ClientConnection, req: Request) -> str:
    """Who `req` comes from, for per-client limits: the peer's address; behind a trusted
    proxy, the last X-Forwarded-For hop that is not a trusted proxy itself (the first one
    a trusted proxy saw). IPv6 clients count by /64 (`client_key`)."""
    if not conn.trusted:
        return client_key(conn.peer.decode("latin-1"))
    hops: list[str] = []
    for name, value in req.headers:
        if name.lower() == b"x-forwarded-for":
            hops += [hop.strip() for hop in value.decode("latin-1").split(",")]
    for hop in reversed(hops):
        if hop and not gw.trusts(hop.encode("latin-1")):
            return client_key(hop)
    return client_key(hops[0] if hops and hops[0] else conn.peer.decode("latin-1"))


def _wants_page(req: Request) -> bool:
    if req.method != b"GET":
        return False
    accept = req.header(b"accept")
    return accept is not None and b"text/html" in accept


def _retrieve(future: asyncio.Future[Session]) -> None:
    if not future.cancelled():
        future.exception()
