"""The webhook's entry in the API document.

The webhook is a plain ASGI endpoint taken before FastAPI's routing (see
`app.main`), so FastAPI cannot describe it; this module does, from the same
response bodies the endpoint sends.
"""

from __future__ import annotations

import json
from typing import Any

from app.connections.registration import WEBHOOK_PATH
from app.errors import documented_error
from app.ingress.webhook import (
    BAD_UPDATE,
    FORBIDDEN_SOURCE,
    OK_BODY,
    RATE_LIMITED,
    TOO_LARGE,
    UNAUTHORIZED,
    UNAVAILABLE,
    UNSUPPORTED_TYPE,
)

UPDATE_SCHEMA_NAME = "TelegramUpdate"

# Telegram's Update object: only `update_id` is checked here; every other field is
# stored as it arrived.
UPDATE_SCHEMA: dict[str, Any] = {
    "title": UPDATE_SCHEMA_NAME,
    "type": "object",
    "description": "A Telegram Update (https://core.telegram.org/bots/api#update), "
    "with exactly one of its optional fields (`message`, `edited_message`, "
    "`callback_query`, ...).",
    "required": ["update_id"],
    "properties": {
        "update_id": {
            "type": "integer",
            "minimum": 0,
            "description": "Telegram's id of the update; a repeated one is stored once.",
        }
    },
    "additionalProperties": True,
}

_MESSAGE_UPDATE = {
    "update_id": 892252934,
    "message": {
        "message_id": 6557,
        "from": {"id": 218485655, "is_bot": False, "first_name": "Ada", "username": "ada"},
        "chat": {"id": 218485655, "first_name": "Ada", "username": "ada", "type": "private"},
        "date": 1569518342,
        "text": "hello there",
    },
}

_RETRY_AFTER = {"Retry-After": "Seconds after which Telegram's redelivery will be accepted."}


def _error(status: int, body: bytes, **kwargs: Any) -> dict[str, Any]:
    return documented_error(status, [json.loads(body)], **kwargs)


def webhook_path_item() -> dict[str, Any]:
    """The OpenAPI path item of `POST WEBHOOK_PATH`."""
    operation = {
        "tags": ["webhook"],
        "summary": "Receive a Telegram update",
        "operationId": "receive_telegram_update",
        "description": (
            "Called by Telegram, not by API clients: no bearer token. Each bot's "
            "webhook URL carries its connection's key, and Telegram sends the "
            "connection's secret in `X-Telegram-Bot-Api-Secret-Token`. Checked in order:\n\n"
            "1. The source address (from `X-Forwarded-For` only when the peer is a trusted "
            "proxy); with `INGRESS_TELEGRAM_IPS_ONLY` only Telegram's ranges (else 403). An "
            "address over its failed-authentication limit is refused (429) before its key "
            "is looked up.\n"
            "2. Key and secret (the previous secret too, within its grace period): any "
            "failure is 401 with one body for all. The body is not read before this.\n"
            "3. The connection's update rate: 429 with `Retry-After`.\n"
            "4. 415 unless `application/json`; 413 over `INGRESS_MAX_BODY_BYTES` (1 MiB); "
            "400 unless a UTF-8 JSON object with a non-negative integer `update_id`.\n"
            "5. The update is stored before 200; a repeated `update_id` is 200 with no "
            "second effect.\n\n"
            "Redis or the database unavailable: 503 with `Retry-After: 1`, nothing stored. "
            "Telegram redelivers after any non-2xx answer, so a refusal loses nothing."
        ),
        "parameters": [
            {
                "name": "key",
                "in": "query",
                "required": True,
                "description": "The connection's webhook key, part of the URL given to "
                "Telegram. Missing or unknown: 401.",
                "schema": {"type": "string"},
            },
            {
                "name": "X-Telegram-Bot-Api-Secret-Token",
                "in": "header",
                "required": True,
                "description": "The connection's webhook secret, as Telegram sends it. "
                "Missing or wrong: 401.",
                "schema": {"type": "string"},
            },
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{UPDATE_SCHEMA_NAME}"},
                    "examples": {"message": {"summary": "A message", "value": _MESSAGE_UPDATE}},
                }
            },
        },
        "responses": {
            "200": {
                "description": "Stored (or already stored): Telegram may forget the update.",
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "maxProperties": 0},
                        "example": json.loads(OK_BODY),
                    }
                },
            },
            "400": _error(400, BAD_UPDATE),
            "401": _error(401, UNAUTHORIZED),
            "403": _error(403, FORBIDDEN_SOURCE),
            "413": _error(413, TOO_LARGE),
            "415": _error(415, UNSUPPORTED_TYPE),
            "429": _error(429, RATE_LIMITED, headers=_RETRY_AFTER),
            "503": _error(503, UNAVAILABLE, headers=_RETRY_AFTER),
        },
    }
    return {"post": operation}


def add_webhook(schema: dict[str, Any]) -> None:
    """Add the webhook and its request schema to a generated document, in place."""
    schema["paths"][WEBHOOK_PATH] = webhook_path_item()
    schema.setdefault("components", {}).setdefault("schemas", {})[UPDATE_SCHEMA_NAME] = (
        UPDATE_SCHEMA
    )
