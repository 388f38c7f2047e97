"""The connection lifecycle (SPEC section 4): create, read, update, health,
rotate-secret, token replacement, resync and delete.

Telegram is only touched once the database agrees: a new connection's claim on
its bot is committed before setWebhook is called, so two workspaces racing for
one bot cannot both register it (the unique index decides, and the loser never
calls Telegram), and a crash after setWebhook cannot leave a registered webhook
whose key the database does not know. Those commits are made here, explicitly,
because they must happen in the middle of the request (`app.db.checkpoint`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app import metrics
from app.auth.service import AuthContext
from app.config import Settings
from app.connections.credentials import (
    ConnectionCredentials,
    MissingCredential,
    destroy_credentials,
)
from app.connections.errors import (
    BotAlreadyConnected,
    BotAlreadyConnectedHere,
    DifferentBot,
    InvalidBotToken,
    NotABot,
    RotationUnsettled,
    TelegramRejected,
    TelegramUnavailable,
)
from app.connections.models import (
    ApprovalMode,
    ConnectionMode,
    ConnectionStatus,
    TelegramConnection,
)
from app.connections.registration import (
    ALLOWED_UPDATES,
    generate_webhook_key,
    generate_webhook_secret,
    host_of,
    split_webhook_url,
    webhook_url,
)
from app.connections.repository import ConnectionRepository, find_live_connection_by_bot
from app.connections.schemas import DeleteOut, HealthOut
from app.connections.status import (
    MANUAL_CLEANUP_HINT,
    STATUS_FOR_VERDICT,
    UNAUTHORIZED_HINT,
    Verdict,
    judge_webhook,
    registration_failed_hint,
    unsettled_rotation_hint,
)
from app.db import checkpoint, new_id, utcnow
from app.errors import AppError, NotFound, RateLimited, ServiceUnavailable, ValidationFailed
from app.locks import OperationLocks
from app.pagination import PageParams
from app.ratelimit import RateLimit, RateLimiter, RateLimiterUnavailable
from app.telegram.client import TelegramClient
from app.telegram.errors import (
    TelegramError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramServerError,
    TelegramTooManyRequests,
    TelegramUnauthorized,
)
from app.telegram.types import BotToken, BotUser, WebhookInfo

logger = structlog.get_logger("app.connections")
T = TypeVar("T")

# setWebhook answers 429 "retry after 1" when called twice within a second.
MAX_SET_WEBHOOK_WAIT = 5.0
# After a rotation Telegram may or may not have received: keep the previous secret
# valid as long as Telegram keeps retrying a delivery.
UNSETTLED_SECRET_GRACE = timedelta(hours=24)
HEALTH_CHECK_LIMIT = RateLimit.per_minute(30, burst=10)


@dataclass
class CreateResult:
    connection: TelegramConnection
    warnings: list[str] = field(default_factory=list)


def parse_bot_token(text: str) -> BotToken:
    """The token shape check, made before any network call."""
    text = text.strip()
    if not BotToken.is_well_formed(text):
        raise ValidationFailed(
            "bot_token: not a Telegram bot token (expected <digits>:<35 or more characters>).",
            field="bot_token",
        )
    return BotToken(text)


def telegram_failure(exc: TelegramError) -> AppError:
    """The API error for a failed Bot API call."""
    if isinstance(exc, TelegramUnauthorized | TelegramNotFound):
        return InvalidBotToken()
    if isinstance(exc, TelegramTooManyRequests):
        return TelegramUnavailable(
            "Telegram is rate limiting this bot; try again shortly.",
            headers={"Retry-After": str(max(1, exc.retry_after or 1))},
        )
    if isinstance(exc, TelegramNetworkError | TelegramServerError):
        return TelegramUnavailable()
    # The client already redacted the description.
    return TelegramRejected(f"Telegram refused the request: {exc.description}")


async def telegram_call(call: Awaitable[T]) -> T:
    """Await a Bot API call, turning Telegram's failures into API errors."""
    try:
        return await call
    except TelegramError as exc:
        raise telegram_failure(exc) from None


class RouteChanges(Protocol):
    """Drops a connection's cached webhook route in every replica (the ingress directory)."""

    async def connection_changed(self, connection_id: uuid.UUID) -> None: ...


class ConnectionDeletedHook(Protocol):
    """What other domains do, in the delete's transaction, when a connection goes
    (the messages domain cancels its unsent messages)."""

    async def __call__(
        self, session: AsyncSession, connection_id: uuid.UUID, actor_token_id: uuid.UUID
    ) -> None: ...


@dataclass(frozen=True)
class ConnectionCollaborators:
    """What the connection lifecycle needs of the process, assembled by it once."""

    settings: Settings
    credentials: ConnectionCredentials
    telegram: TelegramClient
    # Serialize the changes that call Telegram, per connection, across replicas.
    locks: OperationLocks
    routes: RouteChanges
    # Bounds the live health checks (each a Telegram call).
    limiter: RateLimiter
    on_deleted: ConnectionDeletedHook | None = None


class ConnectionService:
    def __init__(
        self, session: AsyncSession, auth: AuthContext, collaborators: ConnectionCollaborators
    ) -> None:
        self.session = session
        self.auth = auth
        self.settings = collaborators.settings
        self.credentials = collaborators.credentials
        self.telegram = collaborators.telegram
        self.locks = collaborators.locks
        self.routes = collaborators.routes
        self.api_limiter = collaborators.limiter
        self.on_deleted = collaborators.on_deleted
        self.repository = ConnectionRepository(session, auth.workspace_id)

    # -- reading -------------------------------------------------------------------

    async def get(
        self, connection_id: uuid.UUID, *, for_update: bool = False
    ) -> TelegramConnection:
        connection = await self.repository.get(connection_id, for_update=for_update)
        if connection is None:
            raise NotFound("No such connection.")
        return connection

    async def list_connections(self, params: PageParams) -> list[TelegramConnection]:
        return await self.repository.list(params)

    # -- create --------------------------------------------------------------------

    async def create(self, bot_token: str, name: str | None) -> CreateResult:
        token = parse_bot_token(bot_token)
        bot = await telegram_call(self.telegram.get_me(token))
        if not bot.is_bot:
            raise NotABot()
        await self._refuse_claimed(bot.id)

        connection = TelegramConnection(
            id=new_id(),
            workspace_id=self.auth.workspace_id,
            name=name or _default_name(bot),
            status=ConnectionStatus.active,
            mode=self._mode(),
            approval_mode=ApprovalMode.required,
            bot_id=bot.id,
            bot_username=bot.username,
            bot_first_name=bot.first_name,
            created_at=utcnow(),
        )
        secret, key = generate_webhook_secret(), generate_webhook_key()
        self.credentials.seal_token(connection, token)
        self.credentials.seal_webhook(connection, secret, key)
        self.repository.add(connection)
        try:
            await checkpoint(self.session)
        except IntegrityError:
            await self.session.rollback()
            await self._refuse_claimed(bot.id)
            raise BotAlreadyConnected() from None

        try:
            warnings = await self._register(connection, token, secret, key)
        except AppError as exc:
            if isinstance(exc, TelegramUnavailable):
                # setWebhook may have been applied even though we saw no answer:
                # do not leave the bot pointing at a key about to be forgotten.
                await self._withdraw_our_webhook(connection, token)
            # Released, not erased: Telegram may already have delivered updates to
            # this connection, and those were acknowledged.
            destroy_credentials(connection)
            await checkpoint(self.session)
            await self.routes.connection_changed(connection.id)
            raise
        logger.info(
            "connection_created",
            connection_id=str(connection.id),
            bot_id=bot.id,
            mode=connection.mode,
        )
        return CreateResult(connection, warnings)

    async def _refuse_claimed(self, bot_id: int) -> None:
        holder = await find_live_connection_by_bot(self.session, bot_id)
        if holder is None:
            return
        if holder.workspace_id == self.auth.workspace_id:
            raise BotAlreadyConnectedHere(holder.id)
        raise BotAlreadyConnected()

    # -- update --------------------------------------------------------------------

    async def update(
        self,
        connection_id: uuid.UUID,
        *,
        name: str | None,
        approval_mode: ApprovalMode | None,
        daily_limit: int | None,
    ) -> TelegramConnection:
        connection = await self.get(connection_id, for_update=True)
        if name is not None:
            connection.name = name
        if approval_mode is not None:
            connection.approval_mode = approval_mode
        if daily_limit is not None:
            connection.daily_limit = daily_limit
        connection.updated_at = utcnow()
        return connection

    # -- health --------------------------------------------------------------------

    async def health(self, connection_id: uuid.UUID) -> HealthOut:
        # No row lock: it would be held across the Telegram call.
        connection = await self.get(connection_id)
        await self._limit_live_checks(connection.id)
        token = self._open_token(connection)
        try:
            info = await self.telegram.get_webhook_info(token)
        except (TelegramUnauthorized, TelegramNotFound):
            report = HealthOut(
                verdict=Verdict.action_required,
                hint=UNAUTHORIZED_HINT,
                webhook_url_is_ours=False,
            )
        except TelegramError as exc:
            raise telegram_failure(exc) from None
        else:
            report = self._judge(connection, info)
        connection.status = STATUS_FOR_VERDICT[report.verdict]
        connection.status_hint = report.hint
        connection.last_checked_at = utcnow()
        return report

    def _judge(self, connection: TelegramConnection, info: WebhookInfo) -> HealthOut:
        ours = self._is_our_webhook(connection, info.url)
        last_error_date = (
            datetime.fromtimestamp(info.last_error_date, UTC) if info.last_error_date else None
        )
        verdict, hint = judge_webhook(
            mode=connection.mode,
            url=info.url,
            url_is_ours=ours,
            last_error_date=last_error_date,
            last_error_message=info.last_error_message,
            rotation_unsettled=self._rotation_unsettled(connection),
            now=utcnow(),
        )
        return HealthOut(
            verdict=verdict,
            hint=hint,
            webhook_url_is_ours=ours,
            pending_update_count=info.pending_update_count,
            last_error_date=last_error_date,
            last_error_message=info.last_error_message,
        )

    # -- credentials ---------------------------------------------------------------

    async def rotate_secret(self, connection_id: uuid.UUID) -> TelegramConnection:
        """A new webhook secret; the previous one is accepted for the grace period.

        If Telegram cannot be told, the new secret is kept anyway (Telegram may have
        applied it without our seeing the answer) and the previous one stays valid
        for a day, so deliveries succeed with either until a resync settles it.
        """
        async with self.locks.hold(f"connection:{connection_id}"):
            connection = await self.get(connection_id)
            if self._rotation_unsettled(connection):
                # Another rotation now would drop the one secret Telegram may hold.
                raise RotationUnsettled()
            token = self._open_token(connection)
            key = self._open(connection, "webhook_key")
            secret = generate_webhook_secret()
            now = utcnow()
            connection.previous_secret_hash = connection.webhook_secret_hash
            connection.previous_secret_expires_at = now + self._grace()
            self.credentials.seal_secret(connection, secret)
            connection.updated_at = now
            # Durable (and known to every replica) first: Telegram may deliver with
            # the new secret the moment it has it; the old one stays valid meanwhile.
            await checkpoint(self.session)
            await self.routes.connection_changed(connection.id)
            try:
                await self._register(connection, token, secret, key)
            except AppError as exc:
                connection.previous_secret_expires_at = utcnow() + UNSETTLED_SECRET_GRACE
                connection.status = ConnectionStatus.action_required
                connection.status_hint = unsettled_rotation_hint(exc.message)
                await checkpoint(self.session)
                await self.routes.connection_changed(connection.id)
                raise
            logger.info("webhook_secret_rotated", connection_id=str(connection.id))
            return connection

    async def replace_token(self, connection_id: uuid.UUID, bot_token: str) -> TelegramConnection:
        """A regenerated token for the same bot: re-encrypt it and register again."""
        token = parse_bot_token(bot_token)
        async with self.locks.hold(f"connection:{connection_id}"):
            connection = await self.get(connection_id)
            bot = await telegram_call(self.telegram.get_me(token))
            if bot.id != connection.bot_id:
                raise DifferentBot()
            # The new token is valid (getMe said so): keep it even if registering
            # fails below, which leaves the connection action_required with a hint.
            self.credentials.seal_token(connection, token)
            # A queue paused because Telegram rejected the old token may send again.
            connection.outbound_paused_at = None
            connection.bot_username, connection.bot_first_name = bot.username, bot.first_name
            connection.updated_at = utcnow()
            await checkpoint(self.session)
            await self._reregister(connection, token)
            logger.info("bot_token_replaced", connection_id=str(connection.id))
            return connection

    async def resync(self, connection_id: uuid.UUID) -> TelegramConnection:
        """Register the webhook again (or remove it, in polling mode)."""
        async with self.locks.hold(f"connection:{connection_id}"):
            connection = await self.get(connection_id)
            connection.mode = self._mode()
            await self._reregister(connection, self._open_token(connection))
            # Telegram now has the current secret: an unsettled rotation's previous
            # secret only needs the ordinary grace period from here on.
            expires = connection.previous_secret_expires_at
            if expires is not None and expires > utcnow() + self._grace():
                connection.previous_secret_expires_at = utcnow() + self._grace()
                await checkpoint(self.session)
                await self.routes.connection_changed(connection.id)
            return connection

    async def _reregister(self, connection: TelegramConnection, token: BotToken) -> None:
        secret = self._open(connection, "webhook_secret")
        key = self._open(connection, "webhook_key")
        try:
            await self._register(connection, token, secret, key)
        except AppError as exc:
            connection.status = ConnectionStatus.action_required
            connection.status_hint = registration_failed_hint(exc.message)
            await checkpoint(self.session)
            raise
        connection.status = ConnectionStatus.active
        connection.status_hint = None

    # -- delete --------------------------------------------------------------------

    async def delete(self, connection_id: uuid.UUID) -> DeleteOut:
        """deleteWebhook, then destroy the credentials; the row stays for history.

        Telegram refusing (the token was revoked) still removes the connection,
        with `remote_cleanup: failed` and a hint. Telegram unreachable or failing
        (network, 5xx, 429) does not: the answer is 502 and nothing is destroyed,
        because the token is what it takes to remove the webhook later.
        """
        async with self.locks.hold(f"connection:{connection_id}"):
            connection = await self.get(connection_id)
            report = DeleteOut(id=connection.id, remote_cleanup="ok")
            try:
                await self.telegram.delete_webhook(self._open_token(connection))
            except TelegramError as exc:
                if exc.retryable:
                    raise telegram_failure(exc) from None
                logger.warning(
                    "delete_webhook_refused",
                    connection_id=str(connection.id),
                    error_type=type(exc).__name__,
                )
                report.remote_cleanup, report.hint = "failed", MANUAL_CLEANUP_HINT
            destroy_credentials(connection)
            if self.on_deleted is not None:
                await self.on_deleted(self.session, connection.id, self.auth.token_id)
            # Committed here so that no replica can reload the old webhook route
            # between dropping it from the cache and the end of the request.
            await checkpoint(self.session)
            await self.routes.connection_changed(connection.id)
            logger.info(
                "connection_deleted",
                connection_id=str(connection.id),
                remote_cleanup=report.remote_cleanup,
            )
            return report

    # -- helpers -------------------------------------------------------------------

    async def _limit_live_checks(self, connection_id: uuid.UUID) -> None:
        """Each health check is a live Telegram call: bounded per connection, so a
        dashboard refreshing in a loop cannot spend the bot's Telegram budget."""
        try:
            decision = await self.api_limiter.hit(f"health:{connection_id}", HEALTH_CHECK_LIMIT)
        except RateLimiterUnavailable:
            raise ServiceUnavailable("Redis is unavailable; try again shortly.") from None
        if not decision.allowed:
            metrics.RATE_LIMITED_HEALTH_CHECK.inc()
            raise RateLimited(
                "Health is checked live with Telegram; wait before checking again.",
                headers={"Retry-After": decision.retry_after_header()},
            )

    def _rotation_unsettled(self, connection: TelegramConnection) -> bool:
        """A rotation Telegram may not have received: the old secret is kept longer."""
        expires = connection.previous_secret_expires_at
        return expires is not None and expires > utcnow() + self._grace()

    def _grace(self) -> timedelta:
        return timedelta(seconds=self.settings.webhook_secret_grace_seconds)

    async def _withdraw_our_webhook(self, connection: TelegramConnection, token: BotToken) -> None:
        """Best effort: remove the bot's webhook if (and only if) it points at us."""
        try:
            info = await self.telegram.get_webhook_info(token)
            if self._is_our_webhook(connection, info.url):
                await self.telegram.delete_webhook(token)
        except TelegramError as exc:
            logger.warning(
                "webhook_withdrawal_failed",
                connection_id=str(connection.id),
                error_type=type(exc).__name__,
            )

    def _mode(self) -> ConnectionMode:
        return ConnectionMode.webhook if self.settings.public_base_url else ConnectionMode.polling

    def _open(self, connection: TelegramConnection, column: str) -> str:
        try:
            return self.credentials.open(connection, column)
        except MissingCredential:
            raise NotFound("No such connection.") from None

    def _open_token(self, connection: TelegramConnection) -> BotToken:
        return BotToken(self._open(connection, "bot_token"))

    def _is_our_webhook(self, connection: TelegramConnection, url: str) -> bool:
        if not self.settings.public_base_url:
            return False
        key = split_webhook_url(self.settings.public_base_url, url)
        return key is not None and self.credentials.key_matches(connection, key)

    async def _register(
        self, connection: TelegramConnection, token: BotToken, secret: str, key: str
    ) -> list[str]:
        """Point the bot at this service; returns warnings about what was replaced."""
        warnings: list[str] = []
        info = await telegram_call(self.telegram.get_webhook_info(token))
        if connection.mode == ConnectionMode.polling:
            if info.url:
                warnings.append(
                    f"The bot's webhook to {host_of(info.url)} was removed: this service "
                    "receives its updates by long polling."
                )
            await telegram_call(self.telegram.delete_webhook(token))
            return warnings
        assert self.settings.public_base_url is not None
        url = webhook_url(self.settings.public_base_url, key)
        if info.url and not self._is_our_webhook(connection, info.url):
            warnings.append(
                f"The bot's webhook pointed to {host_of(info.url)}; it now points to this service."
            )
        await self._set_webhook(token, url, secret)
        return warnings

    async def _set_webhook(self, token: BotToken, url: str, secret: str) -> None:
        for attempt in (1, 2):
            try:
                await self.telegram.set_webhook(
                    token,
                    url=url,
                    secret_token=secret,
                    allowed_updates=list(ALLOWED_UPDATES),
                    max_connections=self.settings.telegram_webhook_max_connections,
                )
                return
            except TelegramTooManyRequests as exc:
                wait = float(exc.retry_after or 1)
                if attempt == 2 or wait > MAX_SET_WEBHOOK_WAIT:
                    raise telegram_failure(exc) from None
                await asyncio.sleep(wait)
            except TelegramError as exc:
                raise telegram_failure(exc) from None


def _default_name(bot: BotUser) -> str:
    return f"{bot.first_name} (@{bot.username})" if bot.username else bot.first_name
