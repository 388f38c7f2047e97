"""Errors of the send API and the approval queue (SPEC section 7)."""

from __future__ import annotations

from app.errors import AppError


class ConnectionDeleted(AppError):
    status = 409
    code = "connection_deleted"
    default_message = "The connection was deleted; messages can no longer be sent through it."


class SelfApproval(AppError):
    status = 403
    code = "self_approval"
    default_message = "A message cannot be approved or rejected by the token that requested it."


class NotPending(AppError):
    status = 409
    code = "not_pending"
    default_message = "The message is no longer pending approval."


class NotCancellable(AppError):
    status = 409
    code = "not_cancellable"
    default_message = "Only a message pending approval or queued can be cancelled."


class IdempotencyKeyReused(AppError):
    status = 409
    code = "idempotency_key_reused"
    default_message = "This Idempotency-Key was used with a different request body."
