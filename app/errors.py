"""Application errors and the one JSON error shape.

Every error the API returns has the body
`{"error": {"code": "snake_case", "message": "human sentence", "field": "optional"}}`.
Errors are classes carrying their status and code; one set of handlers turns
them and validation errors into that shape; unexpected failures become a 500 of
the same shape in `app.middleware`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class AppError(Exception):
    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    default_message: ClassVar[str] = "The request could not be processed."

    def __init__(
        self,
        message: str | None = None,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.field = field
        self.headers = headers
        self.extra = extra or {}
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        error.update(self.extra)
        return {"error": error}


class Unauthenticated(AppError):
    status = 401
    code = "unauthenticated"
    default_message = "A valid API token is required."


class Forbidden(AppError):
    status = 403
    code = "forbidden"
    default_message = "This API token's role does not allow this action."


class NotFound(AppError):
    status = 404
    code = "not_found"
    default_message = "No such resource."


class Conflict(AppError):
    status = 409
    code = "conflict"
    default_message = "The request conflicts with the current state."


class ValidationFailed(AppError):
    status = 422
    code = "validation_error"
    default_message = "The request is not valid."


class RateLimited(AppError):
    status = 429
    code = "rate_limited"
    default_message = "Too many requests; retry later."


class ServiceUnavailable(AppError):
    status = 503
    code = "service_unavailable"
    default_message = "A backing service is unavailable; try again shortly."


def error_response(
    status: int, code: str, message: str, field: str | None = None, **headers: str
) -> JSONResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return JSONResponse({"error": error}, status_code=status, headers=headers or None)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _field_of(loc: tuple[Any, ...]) -> str | None:
    # Drop the leading "body"/"query"/"path"/"header" so the field reads as the user wrote it.
    parts = [str(p) for p in loc[1:]] if len(loc) > 1 else [str(p) for p in loc]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_request: Request, exc: AppError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        field = _field_of(tuple(first.get("loc", ())))
        message = str(first.get("msg", "The request is not valid."))
        if field:
            message = f"{field}: {message}"
        return error_response(422, "validation_error", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "The request failed."
        return error_response(exc.status_code, code, message, **(exc.headers or {}))
