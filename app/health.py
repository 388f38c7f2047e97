"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.deps import RuntimeDep

router = APIRouter(tags=["operations"])
logger = structlog.get_logger("app.health")


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers. Checks nothing else on purpose."""
    return {"status": "ok"}


@router.get("/ready", response_model=None)
async def ready(runtime: RuntimeDep) -> JSONResponse | dict[str, Any]:
    """Readiness: the database and, when configured, Redis answer. 503 names which failed."""
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
        return JSONResponse(
            {
                "error": {
                    "code": "not_ready",
                    "message": "Unavailable: " + ", ".join(failed) + ".",
                    "field": failed[0],
                },
                "checks": checks,
            },
            status_code=503,
        )
    return {"status": "ready", "checks": checks}
