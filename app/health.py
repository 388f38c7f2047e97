"""Liveness, readiness and the Prometheus metrics."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from app import metrics
from app.errors import Error, Forbidden, documented_error, error_body
from app.runtime import ApiRuntimeDep

router = APIRouter(tags=["operations"])
logger = structlog.get_logger("app.health")


class NotReady(Error):
    """`/ready`'s 503: the error names the first backing service down, `checks` all of them."""

    checks: dict[str, str]


_NOT_READY_EXAMPLE = {
    **error_body("not_ready", "Unavailable: redis.", field="redis"),
    "checks": {"database": "ok", "redis": "unavailable"},
}


@router.get("/health", summary="Liveness")
async def health() -> dict[str, str]:
    """Liveness: the process answers. Checks nothing else on purpose. No token needed."""
    return {"status": "ok"}


@router.get(
    "/ready",
    response_model=None,
    summary="Readiness",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}
                }
            }
        },
        503: {
            "model": NotReady,
            **documented_error(
                503, [_NOT_READY_EXAMPLE], schema_ref="#/components/schemas/NotReady"
            ),
        },
    },
)
async def ready(runtime: ApiRuntimeDep) -> JSONResponse | dict[str, Any]:
    """Readiness: the database and, when configured, Redis answer (`redis` is
    `not_configured` on the embedded default). 503 names which failed. No token
    needed."""
    checks: dict[str, str] = {}
    try:
        async with runtime.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        logger.warning("ready_database_failed", error_type=type(exc).__name__)
        checks["database"] = "unavailable"
    if runtime.redis is not None:
        try:
            await runtime.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            logger.warning("ready_redis_failed", error_type=type(exc).__name__)
            checks["redis"] = "unavailable"
    else:
        checks["redis"] = "not_configured"
    failed = [name for name, state in checks.items() if state == "unavailable"]
    if failed:
        message = "Unavailable: " + ", ".join(failed) + "."
        body = error_body("not_ready", message, field=failed[0])
        return JSONResponse({**body, "checks": checks}, status_code=503)
    return {"status": "ready", "checks": checks}


@router.get("/metrics", include_in_schema=False)
async def metrics_text(request: Request, runtime: ApiRuntimeDep) -> Response:
    """Prometheus metrics (see app/metrics.py), for the networks in
    METRICS_ALLOWED_NETWORKS only, and never through a proxy: 403 otherwise."""
    peer = request.client.host if request.client else None
    header_names = (name for name, _ in request.scope["headers"])
    if not runtime.metrics_access.allows(peer, header_names):
        raise Forbidden(metrics.METRICS_FORBIDDEN_MESSAGE)
    await runtime.queue_gauges.refresh()
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)
