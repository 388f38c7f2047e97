"""How `integrations serve` handles connections, before the application sees a request.

uvicorn's HTTP protocol (httptools) is used with two refinements:

- A request that is not valid HTTP (a control byte in a header, a malformed
  request line) never reaches the application; uvicorn answers it with a
  text/plain 400. Here it gets a 400 in the one JSON error shape.
- uvicorn has no header-read timeout: its keep-alive timeout only runs between
  requests, so a client that opens a connection and sends its headers slowly, or
  not at all, holds the connection as long as it likes. Here a connection has
  `HTTP_HEADER_TIMEOUT` seconds, counted from when it opened or its previous
  response was complete, to deliver a request's headers. After that a begun
  request gets a 408 in the error shape; the connection is closed either way. It
  is a deadline, not an idle timer: a byte every second does not extend it.

Nothing here replaces a reverse proxy's limits (see the README's deployment notes).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.config import Settings
from app.errors import error_json


class ServiceHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and JSON parse errors."""

    header_timeout: ClassVar[float] = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        # Bytes of a request arrived whose headers are not complete yet.
        self._request_begun = False

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        self._request_begun = False
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Unless a pipelined request is already in hand, the client's next request
        # is awaited now, and its headers have the full timeout.
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._arm_header_deadline()

    def send_400_response(self, msg: str) -> None:
        self._answer_and_close(400, "bad_request", "The request is not valid HTTP.")

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(
            self.header_timeout, self._header_deadline_passed
        )

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        if self._request_begun:
            self._answer_and_close(
                408, "request_timeout", "The request headers did not arrive in time."
            )
        else:
            self.transport.close()

    def _answer_and_close(self, status: int, code: str, message: str) -> None:
        body = error_json(code, message)
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            # Every answer carries a request id, these too.
            b"x-request-id: %s\r\n" % uuid.uuid4().hex.encode(),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def http_protocol(settings: Settings) -> type[asyncio.Protocol]:
    """The protocol class to give uvicorn (`http=`), with the configured timeout."""

    class Protocol(ServiceHttpProtocol):
        header_timeout = settings.http_header_timeout

    return Protocol
