"""The HTTP layer under `TelegramClient`: one POST of a JSON body, two implementations.

- `HttpxTransport` (httpx): the API server's, and the default. One request at a
  time it costs about 1-1.5 ms of CPU; with many requests in flight on one
  client its connection pool contends and the rate collapses (PERFORMANCE.md:
  about 260 sends/s at 40 in flight).
- `AiohttpTransport` (aiohttp): the worker's, whose dispatcher keeps dozens of
  `sendMessage` calls in flight (about 0.3 ms of CPU each; bench/README.md
  "Outbound" has the side-by-side figures).

Contract: `post` returns the status, the body and the `Retry-After` header of
any HTTP answer, whatever its status, and raises `TransportFailure` when there
is no answer. A failure says whether it was a timeout and whether the request
may have reached the server (`maybe_delivered`): a refused connection cannot
have, a read timeout may have. Its text is the exception's type name only: the
libraries' messages can embed the URL, and the URL holds the bot token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import httpx

__all__ = [
    "AiohttpTransport",
    "HttpAnswer",
    "HttpxTransport",
    "Transport",
    "TransportFailure",
]


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes
    retry_after: str | None


class TransportFailure(Exception):
    """No HTTP answer. `str()` is safe to log: it never holds the URL."""

    def __init__(self, kind: str, *, timeout: bool, maybe_delivered: bool) -> None:
        super().__init__(kind)
        self.kind = kind
        self.timeout = timeout
        self.maybe_delivered = maybe_delivered


class Transport(Protocol):
    async def post(
        self, url: str, body: dict[str, object], *, connect_timeout: float, read_timeout: float
    ) -> HttpAnswer:
        """POST `body` as JSON; the answer, or `TransportFailure`."""
        ...


class HttpxTransport:
    """Over a shared `httpx.AsyncClient` the caller owns (and closes)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def post(
        self, url: str, body: dict[str, object], *, connect_timeout: float, read_timeout: float
    ) -> HttpAnswer:
        timeout = httpx.Timeout(connect_timeout, read=read_timeout)
        try:
            response = await self._http.post(url, json=body, timeout=timeout)
        except httpx.TimeoutException as exc:
            failure = TransportFailure(
                type(exc).__name__,
                timeout=True,
                maybe_delivered=not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout),
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            failure = TransportFailure(
                type(exc).__name__,
                timeout=False,
                maybe_delivered=not isinstance(exc, httpx.ConnectError | httpx.InvalidURL),
            )
        else:
            return HttpAnswer(
                response.status_code, response.content, response.headers.get("retry-after")
            )
        # Raised outside the except blocks, so the library's exception (whose text
        # holds the URL) is not even kept as __context__.
        raise failure


class AiohttpTransport:
    """Over a shared `aiohttp.ClientSession` the caller owns (and closes)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def post(
        self, url: str, body: dict[str, object], *, connect_timeout: float, read_timeout: float
    ) -> HttpAnswer:
        # `sock_read` bounds each wait for data, `total` the whole request, as
        # httpx's read timeout does with its connect and write phases around it.
        timeout = aiohttp.ClientTimeout(
            total=connect_timeout + read_timeout, connect=connect_timeout, sock_read=read_timeout
        )
        try:
            async with self._session.post(
                url,
                data=json.dumps(body, separators=(",", ":")).encode(),
                headers={"Content-Type": "application/json"},
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                return HttpAnswer(
                    response.status, await response.read(), response.headers.get("Retry-After")
                )
        except aiohttp.ConnectionTimeoutError as exc:
            failure = TransportFailure(type(exc).__name__, timeout=True, maybe_delivered=False)
        except TimeoutError as exc:
            failure = TransportFailure(type(exc).__name__, timeout=True, maybe_delivered=True)
        except (aiohttp.ClientConnectorError, aiohttp.InvalidURL) as exc:
            failure = TransportFailure(type(exc).__name__, timeout=False, maybe_delivered=False)
        except aiohttp.ClientError as exc:
            failure = TransportFailure(type(exc).__name__, timeout=False, maybe_delivered=True)
        raise failure
