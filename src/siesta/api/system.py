"""`/healthz` and `/metrics`: open without the token (see `siesta.api.auth`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from siesta.api.deps import Svc
from siesta.api.models import Health

router = APIRouter(tags=["system"])


@router.get("/healthz", summary="Liveness")
async def healthz(svc: Svc) -> Health:
    """Answers while siesta runs."""
    return Health(status="ok", sessions=len(svc.lifecycle.sessions))


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={
        200: {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
    },
)
async def metrics(svc: Svc) -> Response:
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
