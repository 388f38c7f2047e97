"""`POST /api/v1/integrations/telegram/webhook?key=<key>`: the webhook hot path.

A plain ASGI endpoint, without FastAPI's dependency machinery, because every
microsecond here is multiplied by Telegram's delivery rate. The checks run in the
order of SPEC section 5:

1. Source address (X-Forwarded-For only from a trusted proxy; optionally only
   Telegram's ranges). An address over its failed-authentication limit is refused
   (429) before its key is looked up.
2. Key and secret: the key finds the connection through its keyed hash (cached),
   the `X-Telegram-Bot-Api-Secret-Token` header is compared in constant time to
   the current secret's keyed hash, or the previous one's within its grace
   period. Any failure: 401 with one body, counted against the address. The
   body has not been read yet.
3. The connection's update rate (429 with Retry-After; Telegram redelivers).
4. Content type (415), size by Content-Length and while streaming (413), UTF-8
   JSON object with a non-negative integer `update_id` (400).
5. Durable storage through group commit; a duplicate is 200 with no effect.
6. Redis or the database unavailable: 503, so Telegram redelivers.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from urllib.parse import parse_qs

import structlog
from starlette.types import Receive, Scope, Send

from app import metrics
from app.config import Settings
from app.db import utcnow
from app.errors import error_json
from app.ingress.directory import ConnectionDirectory, WebhookRoute
from app.ingress.store import IncomingUpdate, StorageUnavailable, StoreOutcome, UpdateWriter
from app.ratelimit import CachedPeek, RateLimit, RateLimiter, RateLimiterUnavailable
from app.telegram.updates import parse_update
from app.vault import Vault

logger = structlog.get_logger("app.ingress")

SECRET_HEADER = b"x-telegram-bot-api-secret-token"
TELEGRAM_RANGES = (
    ipaddress.ip_network("149.154.160.0/20"),
    ipaddress.ip_network("91.108.4.0/22"),
)
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# One body per status: a caller learns nothing from which check failed.
OK_BODY = b"{}"
UNAUTHORIZED = error_json("unauthenticated", "Unknown webhook key or wrong secret token.")
RATE_LIMITED = error_json("rate_limited", "Too many requests; retry later.")
FORBIDDEN_SOURCE = error_json("forbidden", "Requests are accepted from Telegram's addresses only.")
UNSUPPORTED_TYPE = error_json("unsupported_media_type", "The body must be application/json.")
TOO_LARGE = error_json("payload_too_large", "The body is larger than the limit.")
BAD_UPDATE = error_json(
    "invalid_update", "The body must be a UTF-8 JSON object with a non-negative update_id."
)
UNAVAILABLE = error_json("service_unavailable", "Storage is unavailable; retry later.")


class _TooLarge(Exception):
    pass


class WebhookIngress:
    """The ASGI endpoint; one instance per process, built by the runtime."""

    def __init__(
        self,
        *,
        settings: Settings,
        vault: Vault,
        directory: ConnectionDirectory,
        writer: UpdateWriter,
        auth_limiter: CachedPeek,
        update_limiter: RateLimiter,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._vault = vault
        self._directory = directory
        self._writer = writer
        self._auth_limiter = auth_limiter
        self._update_limiter = update_limiter
        self._clock = clock
        self._max_body = settings.ingress_max_body_bytes
        self._auth_limit = RateLimit.per_minute(settings.ingress_failed_auth_per_minute)
        self._update_limit = RateLimit.per_second(
            settings.ingress_updates_per_second, burst=settings.ingress_updates_burst
        )
        self._trusted_proxies: tuple[IpNetwork, ...] = tuple(
            ipaddress.ip_network(entry, strict=False) for entry in settings.ingress_trusted_proxies
        )
        self._telegram_only = settings.ingress_telegram_ips_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body, headers = await self._handle(scope, receive)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _handle(
        self, scope: Scope, receive: Receive
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        headers: dict[bytes, bytes] = dict(scope["headers"])
        source = self._source_address(scope, headers)
        if self._telegram_only and not _in_telegram_ranges(source):
            metrics.REJECTED_FORBIDDEN_SOURCE.inc()
            return 403, FORBIDDEN_SOURCE, []
        key = _query_key(scope.get("query_string", b""))
        auth_key = _failure_bucket(source, key)
        try:
            address = await self._auth_limiter.peek(auth_key, self._auth_limit)
            if not address.allowed:
                _source_refused()
                return _rate_limited(address.retry_after_header())

            route = await self._authenticate(key, headers)
            if route is None:
                refusal = await self._auth_limiter.hit(auth_key, self._auth_limit)
                logger.debug("webhook_rejected", reason="unauthenticated", source=source)
                if not refusal.allowed:
                    # Worth an operator's attention: a scan, or a webhook left
                    # pointing here with a stale key or secret.
                    logger.info("webhook_source_over_failure_limit", source=source)
                    _source_refused()
                    return _rate_limited(refusal.retry_after_header())
                metrics.REJECTED_UNAUTHENTICATED.inc()
                return 401, UNAUTHORIZED, []

            updates = await self._update_limiter.hit(
                _update_bucket(route.connection_id), self._update_limit
            )
            if not updates.allowed:
                metrics.REJECTED_CONNECTION_RATE_LIMITED.inc()
                metrics.RATE_LIMITED_INGRESS_CONNECTION.inc()
                return _rate_limited(updates.retry_after_header())
        except RateLimiterUnavailable:
            logger.warning("webhook_limiter_unavailable")
            metrics.REJECTED_UNAVAILABLE.inc()
            return 503, UNAVAILABLE, [(b"retry-after", b"1")]
        except StorageUnavailable:
            metrics.REJECTED_UNAVAILABLE.inc()
            return 503, UNAVAILABLE, [(b"retry-after", b"1")]

        content_type = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        if content_type != b"application/json":
            metrics.REJECTED_UNSUPPORTED_MEDIA_TYPE.inc()
            return 415, UNSUPPORTED_TYPE, []
        try:
            raw = await self._read_body(headers, receive)
        except _TooLarge:
            metrics.REJECTED_TOO_LARGE.inc()
            return 413, TOO_LARGE, []
        try:
            text = raw.decode("utf-8")
            parsed = parse_update(json.loads(text))
        except (ValueError, RecursionError):
            # ValueError covers bad UTF-8, bad JSON, InvalidUpdate, and integers
            # past Python's digit limit.
            metrics.REJECTED_INVALID_UPDATE.inc()
            return 400, BAD_UPDATE, []

        try:
            outcome = await self._writer.submit(
                IncomingUpdate(
                    connection_id=route.connection_id,
                    workspace_id=route.workspace_id,
                    parsed=parsed,
                    raw=text,
                    source="webhook",
                    received_at=self._clock(),
                )
            )
        except StorageUnavailable:
            metrics.REJECTED_UNAVAILABLE.inc()
            return 503, UNAVAILABLE, [(b"retry-after", b"1")]
        metrics.WEBHOOK_RECEIVED.inc()
        if outcome is StoreOutcome.duplicate:
            metrics.WEBHOOK_DUPLICATE.inc()
        return 200, OK_BODY, []

    async def _authenticate(
        self, key: str | None, headers: dict[bytes, bytes]
    ) -> WebhookRoute | None:
        secret = headers.get(SECRET_HEADER)
        if key is None or not secret:
            return None
        try:
            route = await self._directory.lookup(key)
        except Exception as exc:
            logger.warning("webhook_lookup_failed", error_type=type(exc).__name__)
            raise StorageUnavailable(type(exc).__name__) from None
        if route is None or route.secret_hash is None:
            # A connection without a secret accepts nothing: never fail open.
            return None
        presented = secret.decode("latin-1")
        if self._vault.matches(presented, route.secret_hash):
            return route
        if (
            route.previous_secret_hash is not None
            and route.previous_secret_expires_at is not None
            and route.previous_secret_expires_at > self._clock()
            and self._vault.matches(presented, route.previous_secret_hash)
        ):
            return route
        return None

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > self._max_body:
                    raise _TooLarge()
            except ValueError:
                raise _TooLarge() from None
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise _TooLarge()
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    def _source_address(self, scope: Scope, headers: dict[bytes, bytes]) -> str:
        client = scope.get("client")
        peer = client[0] if client else "unknown"
        forwarded = headers.get(b"x-forwarded-for")
        if not forwarded or not self._is_trusted(peer):
            return peer
        # The rightmost address not added by one of our own proxies is the client.
        for entry in reversed(forwarded.decode("latin-1").split(",")):
            candidate = _plain_address(entry)
            if candidate is None:
                # Not an address we can key a limit on: fall back to the proxy itself
                # rather than let arbitrary text become a fresh limiter bucket.
                return peer
            if not self._is_trusted(candidate):
                return candidate
        return peer

    def _is_trusted(self, address: str) -> bool:
        if not self._trusted_proxies:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted_proxies)


def _plain_address(entry: str) -> str | None:
    """An X-Forwarded-For entry as a canonical IP address, ports stripped; else None."""
    entry = entry.strip()
    if entry.startswith("["):  # [2001:db8::1]:443
        entry = entry[1:].partition("]")[0]
    elif entry.count(":") == 1:  # 198.51.100.7:5000
        entry = entry.partition(":")[0]
    try:
        return str(ipaddress.ip_address(entry))
    except ValueError:
        return None


# The helpers below are pure and see the same few values on every request (a
# bot's query string, Telegram's addresses, a connection's id), so they are
# memoized; bounded, so a flood of distinct values only costs what it did before.
@functools.lru_cache(maxsize=4096)
def _query_key(query_string: bytes) -> str | None:
    values = parse_qs(query_string.decode("latin-1")).get("key", [])
    return values[0] if len(values) == 1 and values[0] else None


@functools.lru_cache(maxsize=4096)
def _failure_bucket(source: str, key: str | None) -> str:
    """Whose failed authentications are counted together.

    Per source address, as SPEC section 5 says, except for Telegram's own ranges:
    Telegram delivers every bot's webhooks from a handful of shared addresses, so
    one bot pointed here with a bad key (by mistake, or by anyone with a bot of
    their own) would otherwise lock every tenant out. There the bucket is the
    address and a digest of the key presented, computed without looking it up.
    """
    if not _in_telegram_ranges(source):
        return f"ingress:auth:{_address_group(source)}"
    digest = hashlib.sha256((key or "").encode()).hexdigest()[:16]
    return f"ingress:auth:{source}:{digest}"


@functools.lru_cache(maxsize=4096)
def _update_bucket(connection_id: uuid.UUID) -> str:
    return f"ingress:updates:{connection_id}"


def _address_group(address: str) -> str:
    """IPv6 clients hold whole /64s: one address each would be a fresh bucket per request."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return address


@functools.lru_cache(maxsize=4096)
def _in_telegram_ranges(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in TELEGRAM_RANGES)


def _source_refused() -> None:
    metrics.REJECTED_SOURCE_RATE_LIMITED.inc()
    metrics.RATE_LIMITED_INGRESS_SOURCE.inc()


def _rate_limited(retry_after: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    return 429, RATE_LIMITED, [(b"retry-after", retry_after.encode())]
