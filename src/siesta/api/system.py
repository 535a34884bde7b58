"""`/healthz` and `/metrics`: open without the token (see `siesta.api.auth`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from siesta.api.deps import Svc
from siesta.api.models import DependencyView, Health

router = APIRouter(tags=["system"])


@router.get("/healthz", summary="Liveness")
async def healthz(svc: Svc) -> Health:
    """Answers 200 while siesta runs, with each dependency's mode: a degraded store is
    reported here, not by failing the probe (siesta still serves what it can)."""
    lifecycle = svc.lifecycle
    health = lifecycle.health
    return Health(
        status=health.status,
        sessions=len(lifecycle.sessions),
        dependencies={
            name: DependencyView(
                mode=d.mode, detail=d.detail, since=d.since, errors=d.errors, lost=d.lost
            )
            for name, d in sorted(health.dependencies.items())
        },
        pending_writes=lifecycle.recorder.pending,
        task_errors=dict(sorted(health.task_errors.items())),
    )


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
