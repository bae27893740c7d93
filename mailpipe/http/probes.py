"""Liveness, readiness and metrics: unauthenticated, for load balancers and scrapers."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response

from mailpipe.http.app import pipeline

bp = Blueprint("probes", __name__)


@bp.get("/health")
async def health() -> dict[str, Any]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@bp.get("/ready")
async def ready() -> tuple[dict[str, Any], int]:
    """Readiness: the store answers and sending is not paused."""
    not_ready = await pipeline().readiness()
    if not_ready is not None:
        status, reason = not_ready
        return {"status": status, "error": reason}, 503
    return {"status": "ready"}, 200


@bp.get("/metrics")
async def metrics() -> Response:
    """Prometheus text exposition."""
    return Response(
        pipeline().metrics_text(), content_type="text/plain; version=0.0.4; charset=utf-8"
    )
