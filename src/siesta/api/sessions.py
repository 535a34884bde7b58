"""`/api/sessions`: list, create, show, delete, wake and put to sleep; read and rotate
a session's access token.

Every change goes through the lifecycle, so it is recorded as an event with
"... through the admin API" as its reason.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from siesta.api.deps import PathSession, Svc
from siesta.api.errors import ApiProblem, responses
from siesta.api.models import Deleted, NewSession, SessionInfo, SessionToken
from siesta.core.model import State
from siesta.lifecycle import SessionExists, UnknownTemplate, WakeError

router = APIRouter(prefix="/api/sessions", tags=["sessions"])


@router.get("", summary="Every session")
async def list_sessions(svc: Svc) -> list[SessionInfo]:
    sessions = sorted(svc.lifecycle.sessions.values(), key=lambda s: s.id)
    return [svc.session_info(s) for s in sessions]


@router.post(
    "",
    status_code=201,
    summary="Create a session (ASLEEP) from a template",
    responses=responses(
        e400="the body is not JSON",
        e409="the id is taken",
        e422="invalid id, labels or unknown template",
    ),
)
async def create_session(new: NewSession, svc: Svc) -> SessionInfo:
    problem = svc.check_new(new.id, new.template)
    if problem is not None:
        raise ApiProblem(422, problem)
    try:
        session = await svc.lifecycle.add_session(new.id, new.template, new.labels)
    except SessionExists as exc:
        raise ApiProblem(409, str(exc)) from None
    except UnknownTemplate as exc:
        raise ApiProblem(422, str(exc)) from None
    if svc.tokens is not None:
        svc.tokens.issue(session.id)  # a session's token is made with it
    return svc.session_info(session)


@router.get("/{id}", summary="One session", responses=responses(e404="no such session"))
async def get_session(session: PathSession, svc: Svc) -> SessionInfo:
    return svc.session_info(session)


@router.delete(
    "/{id}",
    summary="Stop the session's backend and forget it (its events stay)",
    responses=responses(e404="no such session"),
)
async def delete_session(session: PathSession, svc: Svc) -> Deleted:
    try:
        await svc.lifecycle.remove_session(session.id, "session deleted through the admin API")
    except KeyError:
        raise ApiProblem(404, f"no session {session.id!r}") from None
    svc.metrics.retire(session)
    if svc.tokens is not None:
        svc.tokens.forget(session.id)
    return Deleted(deleted=session.id)


@router.post(
    "/{id}/wake",
    summary="Wake the session; answers once it is awake",
    responses=responses(
        e404="no such session", e503="the wake failed; retry_after says when to try again"
    ),
)
async def wake(session: PathSession, svc: Svc) -> SessionInfo:
    try:
        await svc.lifecycle.wake(session.id, "woken through the admin API")
    except WakeError as exc:
        raise ApiProblem(503, str(exc), retry_after=exc.retry_after) from None
    return svc.session_info(session)


@router.post(
    "/{id}/sleep",
    summary="Put the session to sleep; answers once its backend stopped",
    response_model=SessionInfo,
    responses={
        202: {"model": SessionInfo, "description": "it was already stopping"},
        **responses(e404="no such session", e409="it is waking"),
    },
)
async def sleep(session: PathSession, svc: Svc) -> JSONResponse:
    """200 once asleep (or when it was not awake); 202 when it was already stopping."""
    if session.state is State.WAKING:
        raise ApiProblem(409, f"session {session.id!r} is waking; put it to sleep once awake")
    if session.state is State.AWAKE:
        await svc.lifecycle.sleep(session.id, "put to sleep through the admin API")
    status = 202 if session.state is State.STOPPING else 200
    return JSONResponse(svc.session_info(session).model_dump(mode="json"), status_code=status)


@router.get(
    "/{id}/token",
    summary="The session's access token (made now if it has none)",
    responses=responses(e404="no such session", e503="tokens are not kept here"),
)
async def get_token(session: PathSession, svc: Svc) -> SessionToken:
    """The token clients present to reach the session when gateway.auth is mode token."""
    if svc.tokens is None:
        raise ApiProblem(503, "session tokens are not kept by this server")
    return SessionToken(token=svc.tokens.token(session.id))


@router.post(
    "/{id}/token",
    summary="Rotate the session's access token: the old one stops working now",
    responses=responses(e404="no such session", e503="tokens are not kept here"),
)
async def rotate_token(session: PathSession, svc: Svc) -> SessionToken:
    """A new token; the old one, and the cookies made from it, are refused from now on."""
    if svc.tokens is None:
        raise ApiProblem(503, "session tokens are not kept by this server")
    return SessionToken(token=svc.tokens.issue(session.id))
