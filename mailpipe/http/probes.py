"""Liveness, readiness and metrics: unauthenticated, for load balancers and scrapers."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response

from mailpipe.errors import StoreError
from mailpipe.http.app import service

bp = Blueprint("probes", __name__)


@bp.get("/health")
async def health() -> dict[str, Any]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@bp.get("/ready")
async def ready() -> tuple[dict[str, Any], int]:
    """Readiness: the store answers and sending is not paused."""
    svc = service()
    try:
        await svc.store.ping()
    except StoreError as exc:
        return {"status": "unavailable", "error": f"store: {exc}"}, 503
    if svc.gate.paused:
        return {"status": "paused", "error": f"sending paused: {svc.gate.reason}"}, 503
    if svc.stopping:
        return {"status": "stopping", "error": "shutting down"}, 503
    return {"status": "ready"}, 200


@bp.get("/metrics")
async def metrics() -> Response:
    """Prometheus text exposition."""
    svc = service()
    svc.refresh_gauges()
    return Response(
        svc.metrics.exposition(), content_type="text/plain; version=0.0.4; charset=utf-8"
    )
