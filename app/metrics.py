"""Prometheus metrics: every metric the service exports, and who may read them.

The metrics are process-wide objects of prometheus-client's default registry (with
its process and Python collectors), defined here in one place so the README's list
and the code cannot drift apart. Domains import this module and count; the entry
points serve `render()` at `/metrics` (the API server) or on the worker's own port
(`serve_metrics`).

Rules the metrics keep:

- Labels never carry a secret, a chat id, a connection id or any other unbounded
  value: each label has a fixed, small set of values, listed with its metric.
- The hot paths (webhook ingress, the dispatcher's sends, Telegram calls) use
  children bound once at import (`.labels(...)` looks the child up in a dict under a
  lock each time); an increment is then one lock and one addition (under a
  microsecond here; a histogram observation about three).
- Gauges computed from the database (`integrations_outbound_messages`) are
  refreshed by the reader at scrape time, at most every few seconds, never per event.

Who may read them (`METRICS_ALLOWED_NETWORKS`): by default everyone in development
and only loopback in production. A request that came through a proxy (it carries
`X-Forwarded-For`, `X-Real-IP` or `Forwarded`) is refused whatever its peer: a
scraper asks the process directly, and a reverse proxy on the same host would
otherwise make every public request look local.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import suppress

import structlog
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from app.errors import error_json

__all__ = [
    "CONTENT_TYPE",
    "MetricsAccess",
    "observe_telegram_call",
    "render",
    "serve_metrics",
]

logger = structlog.get_logger("app.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
EVERYONE: tuple[str, ...] = ("0.0.0.0/0", "::/0")
PROXY_HEADERS = (b"x-forwarded-for", b"x-real-ip", b"forwarded")

# -- ingress ----------------------------------------------------------------------------

UPDATES_RECEIVED = Counter(
    "integrations_updates_received",
    "Updates accepted and stored durably (duplicates included), by source.",
    ["source"],  # webhook | polling
)
UPDATES_DUPLICATE = Counter(
    "integrations_updates_duplicate",
    "Accepted updates that were already stored (a redelivery): no second effect.",
    ["source"],  # webhook | polling
)
UPDATES_REJECTED = Counter(
    "integrations_updates_rejected",
    "Webhook requests refused, by reason.",
    # forbidden_source | source_rate_limited | unauthenticated | connection_rate_limited
    # | unsupported_media_type | too_large | invalid_update | unavailable
    ["reason"],
)
INGRESS_BATCH_SIZE = Histogram(
    "integrations_ingress_batch_size",
    "Updates stored per group-commit batch of the webhook writer.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)

WEBHOOK_RECEIVED = UPDATES_RECEIVED.labels("webhook")
WEBHOOK_DUPLICATE = UPDATES_DUPLICATE.labels("webhook")
POLLING_RECEIVED = UPDATES_RECEIVED.labels("polling")
POLLING_DUPLICATE = UPDATES_DUPLICATE.labels("polling")
REJECTED_FORBIDDEN_SOURCE = UPDATES_REJECTED.labels("forbidden_source")
REJECTED_SOURCE_RATE_LIMITED = UPDATES_REJECTED.labels("source_rate_limited")
REJECTED_UNAUTHENTICATED = UPDATES_REJECTED.labels("unauthenticated")
REJECTED_CONNECTION_RATE_LIMITED = UPDATES_REJECTED.labels("connection_rate_limited")
REJECTED_UNSUPPORTED_MEDIA_TYPE = UPDATES_REJECTED.labels("unsupported_media_type")
REJECTED_TOO_LARGE = UPDATES_REJECTED.labels("too_large")
REJECTED_INVALID_UPDATE = UPDATES_REJECTED.labels("invalid_update")
REJECTED_UNAVAILABLE = UPDATES_REJECTED.labels("unavailable")

# -- rate limits ------------------------------------------------------------------------

RATE_LIMITED = Counter(
    "integrations_rate_limited",
    "Requests refused by one of the service's own rate limits, by limit.",
    # ingress_source (failed authentications per address) | ingress_connection
    # (updates per connection) | health_check (live health checks per connection)
    ["limit"],
)
RATE_LIMITED_INGRESS_SOURCE = RATE_LIMITED.labels("ingress_source")
RATE_LIMITED_INGRESS_CONNECTION = RATE_LIMITED.labels("ingress_connection")
RATE_LIMITED_HEALTH_CHECK = RATE_LIMITED.labels("health_check")

# -- outbound ---------------------------------------------------------------------------

OUTBOUND_SENDS = Counter(
    "integrations_outbound_sends",
    "sendMessage attempts by what came of them.",
    # sent | failed (400/403, or out of retries) | retried (5xx, network; backs off)
    # | rate_limited (Telegram's 429) | migrated | unauthorized (queue paused)
    ["outcome"],
)
OUTBOUND_DEFERRALS = Counter(
    "integrations_outbound_deferrals",
    "Claimed messages put back in the queue without a send, by reason.",
    # chat | bot | day (the pacer's limits) | paused (connection paused or deleted)
    # | credentials_unreadable | pacer_unavailable
    ["reason"],
)
APPROVAL_WAIT = Histogram(
    "integrations_approval_wait_seconds",
    "Time from a message's request to its approval.",
    buckets=(1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400),
)
OUTBOUND_MESSAGES = Gauge(
    "integrations_outbound_messages",
    "Outbound messages not yet finished, by status (read from the database at scrape "
    "time, cached a few seconds).",
    ["status"],  # pending_approval | queued | sending
)
OUTBOUND_OLDEST_DUE = Gauge(
    "integrations_outbound_oldest_due_seconds",
    "How long the longest-waiting queued message has been due (0 when none is).",
)

SENDS_SENT = OUTBOUND_SENDS.labels("sent")
SENDS_FAILED = OUTBOUND_SENDS.labels("failed")
SENDS_RETRIED = OUTBOUND_SENDS.labels("retried")
SENDS_RATE_LIMITED = OUTBOUND_SENDS.labels("rate_limited")
SENDS_MIGRATED = OUTBOUND_SENDS.labels("migrated")
SENDS_UNAUTHORIZED = OUTBOUND_SENDS.labels("unauthorized")
DEFERRED_PAUSED = OUTBOUND_DEFERRALS.labels("paused")
DEFERRED_CREDENTIALS = OUTBOUND_DEFERRALS.labels("credentials_unreadable")
DEFERRED_PACER_UNAVAILABLE = OUTBOUND_DEFERRALS.labels("pacer_unavailable")
DEFERRED_BY_LIMIT = {limit: OUTBOUND_DEFERRALS.labels(limit) for limit in ("chat", "bot", "day")}

# -- Telegram ---------------------------------------------------------------------------

TELEGRAM_REQUEST_DURATION = Histogram(
    "integrations_telegram_request_duration_seconds",
    "Bot API calls by method and outcome (getUpdates includes its long-poll wait).",
    ["method", "outcome"],  # outcome: ok | 429 | 4xx | 5xx | network
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
# The methods this service calls; anything else is counted as "other", so a new
# call site can never turn the method label into an open set.
TELEGRAM_METHODS = (
    "getMe",
    "getUpdates",
    "getWebhookInfo",
    "setWebhook",
    "deleteWebhook",
    "sendMessage",
)
TELEGRAM_OUTCOMES = ("ok", "429", "4xx", "5xx", "network")
_TELEGRAM_CHILDREN = {
    (method, outcome): TELEGRAM_REQUEST_DURATION.labels(method, outcome)
    for method in (*TELEGRAM_METHODS, "other")
    for outcome in TELEGRAM_OUTCOMES
}


def telegram_outcome(status: int | None, ok: bool) -> str:
    """The outcome label of a Bot API call: its HTTP status in five classes."""
    if ok:
        return "ok"
    if status is None:
        return "network"
    if status == 429:
        return "429"
    if 400 <= status < 500:
        return "4xx"
    # 5xx, and an answer that is not the Bot API's (a proxy's page with a 200).
    return "5xx"


def observe_telegram_call(method: str, status: int | None, ok: bool, seconds: float) -> None:
    outcome = telegram_outcome(status, ok)
    child = _TELEGRAM_CHILDREN.get((method, outcome)) or _TELEGRAM_CHILDREN[("other", outcome)]
    child.observe(seconds)


def set_outbound_queue(counts: Mapping[str, int], oldest_due_seconds: float) -> None:
    """The database's answer for the queue gauges; statuses it did not name are 0."""
    for status in ("pending_approval", "queued", "sending"):
        OUTBOUND_MESSAGES.labels(status).set(counts.get(status, 0))
    OUTBOUND_OLDEST_DUE.set(max(0.0, oldest_due_seconds))


# -- serving ----------------------------------------------------------------------------


def render() -> bytes:
    """The text exposition of every metric of this process."""
    return generate_latest(REGISTRY)


class MetricsAccess:
    """Who may read `/metrics`: peers inside the allowed networks, never through a proxy."""

    def __init__(self, networks: Iterable[str]) -> None:
        self._networks: tuple[IpNetwork, ...] = tuple(
            ipaddress.ip_network(entry, strict=False) for entry in networks
        )

    @classmethod
    def for_settings(cls, allowed: Sequence[str] | None, *, production: bool) -> MetricsAccess:
        """`allowed` as configured; unset, loopback only in production, anyone otherwise."""
        if allowed is None:
            allowed = LOOPBACK if production else EVERYONE
        return cls(allowed)

    def allows(self, peer: str | None, headers: Iterable[bytes] = ()) -> bool:
        """Whether a request from `peer` (an address), carrying headers named
        `headers` (lower-case), may read the metrics."""
        if any(name in PROXY_HEADERS for name in headers):
            return False
        if peer is None:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)


RefreshHook = Callable[[], Awaitable[None]]

# The worker's metrics endpoint answers one small request per connection; anything
# larger or slower than this is not a scraper.
_MAX_REQUEST_HEAD = 8192
_REQUEST_TIMEOUT = 5.0


async def serve_metrics(
    host: str, port: int, access: MetricsAccess, refresh: RefreshHook | None = None
) -> asyncio.Server:
    """A minimal HTTP/1.1 endpoint for `GET /metrics` (the worker has no web server).

    Every answer closes its connection. `refresh` runs before each rendering (the
    queue gauges). The caller closes the returned server.
    """

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body, content_type = await _handle(reader, writer, access, refresh)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(head + body)
            await writer.drain()
        except Exception as exc:
            logger.debug("metrics_request_failed", error_type=type(exc).__name__)
        finally:
            writer.close()
            with suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(answer, host, port)


async def _handle(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    access: MetricsAccess,
    refresh: RefreshHook | None,
) -> tuple[str, bytes, str]:
    json_type = "application/json"
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_TIMEOUT)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        return "400 Bad Request", error_json("bad_request", "Not an HTTP request."), json_type
    if len(head) > _MAX_REQUEST_HEAD:
        return "400 Bad Request", error_json("bad_request", "Request too large."), json_type
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3:
        return "400 Bad Request", error_json("bad_request", "Not an HTTP request."), json_type
    method, target, _ = parts
    names = [line.partition(":")[0].strip().lower().encode() for line in header_lines if line]
    peer = writer.get_extra_info("peername")
    if not access.allows(peer[0] if peer else None, names):
        return "403 Forbidden", error_json("forbidden", METRICS_FORBIDDEN_MESSAGE), json_type
    if target.split("?", 1)[0] != "/metrics":
        return "404 Not Found", error_json("not_found", "Only /metrics is served here."), json_type
    if method != "GET":
        return (
            "405 Method Not Allowed",
            error_json("method_not_allowed", "Use GET."),
            json_type,
        )
    if refresh is not None:
        await refresh()
    return "200 OK", render(), CONTENT_TYPE


METRICS_FORBIDDEN_MESSAGE = (
    "Metrics are readable only from the networks in METRICS_ALLOWED_NETWORKS, "
    "and never through a proxy."
)
