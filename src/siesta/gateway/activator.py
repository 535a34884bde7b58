"""Holding requests while their session wakes.

The client connection hands over a request for a session that is not awake;
the activator asks the lifecycle to wake it (single-flight there), holds the
request at most `wake_timeout`, then forwards it or answers 503 with
`Retry-After`. Browsers get a waiting page that reloads itself if the wake takes
longer than `waiting_page_after`. The hold queue is bounded per session and in all.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

from siesta.core.model import Session, State
from siesta.lifecycle import WakeError

from .client import COLD
from .pages import waiting_page

if TYPE_CHECKING:
    from .client import ClientConnection, Request
    from .server import Gateway

log = logging.getLogger("siesta.gateway")


class Activator:
    """Holds requests for sleeping sessions and wakes them."""

    def __init__(self, gateway: Gateway):
        self.gw = gateway
        self.held = 0

    def hold(self, conn: ClientConnection, req: Request, session: Session) -> None:
        """Hold `req` until `session` is awake, then forward it; or answer 503."""
        gw = self.gw
        if session.activity.held >= gw.max_held_per_session or self.held >= gw.max_held_total:
            conn.respond(
                req,
                503,
                f"too many requests are waiting for session {session.id!r}",
                headers=((b"Retry-After", b"1"),),
            )
            return
        req.wake = COLD
        self.held += 1  # counted now, not when the task first runs: the bound must hold
        session.activity.held += 1
        req.hold = asyncio.ensure_future(self._hold(conn, req, session))
        req.hold.add_done_callback(lambda _: self._release(session))

    def _release(self, session: Session) -> None:
        self.held -= 1
        session.activity.held -= 1

    async def _hold(self, conn: ClientConnection, req: Request, session: Session) -> None:
        """Wait for the wake, then forward; every other way out is a 503 with Retry-After.

        Nothing here waits without a bound: the wake is given `wake_timeout`, and any
        error on the way (the lifecycle's, a provider's, the store's) is an answer too.
        """
        gw = self.gw
        target = req.target[:80].decode("latin-1")
        reason = f"request {req.method.decode('latin-1')} {target}"
        wake = asyncio.ensure_future(gw.lifecycle.wake(session.id, reason))
        try:
            if gw.waiting_page and _wants_page(req):
                done, _ = await asyncio.wait({wake}, timeout=gw.waiting_page_after)
                if not done:
                    self._waiting_page(conn, req, session, wake)
                    return
            await asyncio.wait_for(wake, gw.wake_timeout)
        except TimeoutError:
            why = f"session {session.id!r} did not wake within {gw.wake_timeout:g}s"
            self._unavailable(conn, req, why, 5.0)
        except WakeError as exc:
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


def _wants_page(req: Request) -> bool:
    if req.method != b"GET":
        return False
    accept = req.header(b"accept")
    return accept is not None and b"text/html" in accept


def _retrieve(future: asyncio.Future[Session]) -> None:
    if not future.cancelled():
        future.exception()
