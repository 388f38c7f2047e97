"""Sealing and opening a connection's credentials: the bot token, the webhook
secret and the webhook key (vault ciphertexts bound to the row), with the keyed
hashes the webhook path looks them up by.

The one place that knows which associated data each credential is sealed with
(`credential_context`), for the API's ORM rows and the worker's Core rows alike.
"""

from __future__ import annotations

import uuid

from app.connections.models import TelegramConnection, credential_context
from app.db import utcnow
from app.telegram.types import BotToken
from app.vault import SealedSecret, Vault


class MissingCredential(Exception):
    """The connection holds no such credential (it was destroyed on delete)."""


class ConnectionCredentials:
    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    # -- sealing ---------------------------------------------------------------

    def seal_token(self, connection: TelegramConnection, token: BotToken) -> None:
        connection.bot_token = self.vault.seal(
            token.reveal(), credential_context(connection.id, connection.workspace_id, "bot_token")
        )

    def seal_secret(self, connection: TelegramConnection, secret: str) -> None:
        """A new current webhook secret (the caller keeps the previous hash if it should)."""
        connection.webhook_secret = self.vault.seal(
            secret, credential_context(connection.id, connection.workspace_id, "webhook_secret")
        )
        connection.webhook_secret_hash = self.vault.lookup_hash(secret)

    def seal_webhook(self, connection: TelegramConnection, secret: str, key: str) -> None:
        self.seal_secret(connection, secret)
        connection.webhook_key = self.vault.seal(
            key, credential_context(connection.id, connection.workspace_id, "webhook_key")
        )
        connection.webhook_key_hash = self.vault.lookup_hash(key)

    # -- opening ---------------------------------------------------------------

    def open(self, connection: TelegramConnection, column: str) -> str:
        """The plaintext of one credential; MissingCredential if it was destroyed."""
        sealed: SealedSecret | None = getattr(connection, column)
        if sealed is None:
            raise MissingCredential(column)
        return self.vault.open(
            sealed, credential_context(connection.id, connection.workspace_id, column)
        )

    def open_token(self, connection: TelegramConnection) -> BotToken:
        return BotToken(self.open(connection, "bot_token"))

    def open_sealed_token(
        self, connection_id: uuid.UUID, workspace_id: uuid.UUID, sealed: SealedSecret
    ) -> BotToken:
        """A token read by a Core statement (the worker's polling lease)."""
        context = credential_context(connection_id, workspace_id, "bot_token")
        return BotToken(self.vault.open(sealed, context))

    def key_matches(self, connection: TelegramConnection, key: str) -> bool:
        """Whether `key` is this connection's webhook key (by its keyed hash)."""
        stored = connection.webhook_key_hash
        return stored is not None and self.vault.matches(key, stored)


def destroy_credentials(connection: TelegramConnection) -> None:
    """Delete: every credential and hash is gone; the row stays for history."""
    connection.bot_token = None
    connection.webhook_secret = None
    connection.webhook_secret_hash = None
    connection.webhook_key = None
    connection.webhook_key_hash = None
    connection.previous_secret_hash = None
    connection.previous_secret_expires_at = None
    connection.deleted_at = utcnow()
    connection.updated_at = connection.deleted_at
