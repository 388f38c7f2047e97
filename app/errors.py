"""Application errors and the one JSON error shape.

Every error the API returns has the body
`{"error": {"code": "snake_case", "message": "human sentence", "field": "optional"}}`.
Errors are classes carrying their status and code; one set of handlers turns
them and validation errors into that shape; unexpected failures become a 500 of
the same shape in `app.middleware`. The same classes document each operation's
error responses (`responses(...)`), so the OpenAPI document lists what the code
raises.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema
from starlette.exceptions import HTTPException as StarletteHTTPException


def error_body(
    code: str, message: str, *, field: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The one error shape: `{"error": {"code", "message", "field"?, ...extra}}`."""
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    error.update(extra)
    return {"error": error}


def error_json(code: str, message: str) -> bytes:
    """`error_body` as the bytes of a response, for the paths below FastAPI."""
    return json.dumps(error_body(code, message)).encode()


class AppError(Exception):
    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    default_message: ClassVar[str] = "The request could not be processed."
    # Response headers the error may carry, with their meaning, for the API document.
    documented_headers: ClassVar[Mapping[str, str]] = {}

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
        return error_body(self.code, self.message, field=self.field, **self.extra)


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
    documented_headers = {"Retry-After": "Seconds to wait before trying again."}


class ServiceUnavailable(AppError):
    status = 503
    code = "service_unavailable"
    default_message = "A backing service is unavailable; try again shortly."


def error_response(
    status: int, code: str, message: str, field: str | None = None, **headers: str
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message, field=field), status_code=status, headers=headers or None
    )


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
        if first.get("type") == "json_invalid":
            # Its location is ("body", <character offset>): the offset is no field.
            return error_response(422, "validation_error", "body: not valid JSON", "body")
        field = _field_of(tuple(first.get("loc", ())))
        message = str(first.get("msg", "The request is not valid."))
        if field:
            message = f"{field}: {message}"
        return error_response(422, "validation_error", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI answers a JSON body that is not UTF-8 with a bare 400, while
            # every other unreadable body (bad JSON, wrong types) is a 422: keep one
            # answer, the documented one, for all of them.
            return error_response(422, "validation_error", "body: not valid UTF-8 JSON", "body")
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "The request failed."
        return error_response(exc.status_code, code, message, **(exc.headers or {}))


# -- the error model in the API document ---------------------------------------------


def _omitted_when_absent(schema: dict[str, Any]) -> None:
    # `field` is left out of the body, not sent as null: no default to show.
    schema.pop("default", None)


class ErrorDetail(BaseModel):
    """The `error` object. Some errors add a field: `bot_already_connected_here`
    names the holding connection in `connection_id`."""

    model_config = ConfigDict(extra="allow")

    code: str = Field(
        description="Stable snake_case code; what a program should branch on.",
        examples=["not_found"],
    )
    message: str = Field(description="A sentence for a person; its wording may change.")
    field: str | SkipJsonSchema[None] = Field(
        default=None,
        description="The request field at fault, when there is one (e.g. `bot_token`, `limit`).",
        json_schema_extra=_omitted_when_absent,
    )


class Error(BaseModel):
    """Every error response: `{"error": {"code", "message", "field"?}}`."""

    error: ErrorDetail


ERROR_SCHEMA_REF = "#/components/schemas/Error"


def documented_error(
    status: int,
    bodies: Sequence[Mapping[str, Any]],
    *,
    headers: Mapping[str, str] | None = None,
    schema_ref: str = ERROR_SCHEMA_REF,
) -> dict[str, Any]:
    """An OpenAPI response object for `status`: the error model, the codes it can
    carry in its description, and each body as a named example."""
    meanings = "".join(f"\n- `{b['error']['code']}`: {b['error']['message']}" for b in bodies)
    response: dict[str, Any] = {
        "description": f"{HTTPStatus(status).phrase}.\n{meanings}",
        "content": {
            "application/json": {
                "schema": {"$ref": schema_ref},
                "examples": {
                    body["error"]["code"]: {"summary": body["error"]["message"], "value": body}
                    for body in bodies
                },
            }
        },
    }
    if headers:
        response["headers"] = {
            name: {"description": meaning, "schema": {"type": "integer"}}
            for name, meaning in headers.items()
        }
    return response


def responses(*errors: type[AppError]) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of an operation that can fail with `errors`, grouped by status.

    Listing the classes the operation raises keeps the document and the code in
    step: a status appears because some error class answers it.
    """
    by_status: dict[int, list[type[AppError]]] = {}
    for error in errors:
        by_status.setdefault(error.status, []).append(error)
    documented: dict[int | str, dict[str, Any]] = {}
    for status, group in sorted(by_status.items()):
        headers = {name: text for error in group for name, text in error.documented_headers.items()}
        bodies = [{"error": {"code": e.code, "message": e.default_message}} for e in group]
        documented[status] = {"model": Error, **documented_error(status, bodies, headers=headers)}
    return documented
