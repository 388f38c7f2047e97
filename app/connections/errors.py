"""Errors of the connection lifecycle (SPEC section 4)."""

from __future__ import annotations

import uuid

from app.errors import AppError


class InvalidBotToken(AppError):
    status = 422
    code = "invalid_bot_token"
    default_message = "Telegram does not accept this bot token; check it with @BotFather."


class NotABot(AppError):
    status = 422
    code = "not_a_bot"
    default_message = "This token does not belong to a bot."


class DifferentBot(AppError):
    status = 422
    code = "different_bot"
    default_message = "This token belongs to a different bot than the connection's."


class TelegramUnavailable(AppError):
    status = 502
    code = "telegram_unavailable"
    default_message = "Telegram could not be reached; try again shortly."
    documented_headers = {"Retry-After": "When Telegram is rate limiting the bot: seconds to wait."}


class TelegramRejected(AppError):
    """Telegram refused a call; the message is Telegram's description (redacted)."""

    status = 502
    code = "telegram_error"
    default_message = "Telegram refused the request."


class BotAlreadyConnected(AppError):
    # Never says which workspace holds the bot.
    status = 409
    code = "bot_already_connected"
    default_message = "This bot is already connected to another workspace."


class BotAlreadyConnectedHere(AppError):
    status = 409
    code = "bot_already_connected_here"
    default_message = "This bot is already connected to this workspace."

    def __init__(self, connection_id: uuid.UUID) -> None:
        super().__init__(extra={"connection_id": str(connection_id)})


class RotationUnsettled(AppError):
    status = 409
    code = "rotation_unsettled"
    default_message = (
        "The previous secret rotation did not reach Telegram; resync the connection "
        "before rotating again."
    )
