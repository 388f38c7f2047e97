"""How `integrations serve` handles connections, before the application sees a request.

uvicorn's HTTP protocol (httptools) is used with one refinement: a request that
is not valid HTTP (a control byte in a header, a malformed request line) never
reaches the application, and uvicorn answers it with a text/plain 400. Here it
gets a 400 in the one JSON error shape.
"""

from __future__ import annotations

import json
import uuid

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


class ServiceHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering parse errors in the error shape."""

    def send_400_response(self, msg: str) -> None:
        self._answer_and_close(400, "bad_request", "The request is not valid HTTP.")

    def _answer_and_close(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
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
