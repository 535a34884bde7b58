"""Wake on request: a sleeping session's first request starts its backend and is served."""

from __future__ import annotations

import httpx

from siesta.core.model import State

from .conftest import Launcher


def test_first_request_wakes_a_sleeping_session(siesta: Launcher) -> None:
    """The request that finds alice asleep is held, alice starts, the request is served."""
    run = siesta()
    assert run.state("alice") is State.ASLEEP
    response = httpx.get(run.url("alice"), timeout=30)
    assert response.status_code == 200
    assert response.text.startswith("hello from alice")
    assert response.headers["x-siesta-wake"] == "cold"
    assert run.state("alice") is State.AWAKE
    again = httpx.get(run.url("alice"), timeout=30)
    assert again.headers["x-siesta-wake"] == "warm"
    assert run.start_count() == 1
    moves = [(e.old, e.new) for e in run.events("alice")]
    assert moves == [(State.ASLEEP, State.WAKING), (State.WAKING, State.AWAKE)]
    assert run.events("alice")[-1].wake_seconds > 0
