"""Runs an ASGI app with uvicorn on a free 127.0.0.1 port in a daemon thread.

The socket is bound before the thread starts, so the port is known (and
connectable) as soon as `start()` returns; uvicorn gets the socket rather than a
port number, which avoids racing another process for port 0.

The server runs inside the test process, so it must leave the process's logging
alone: uvicorn's default log configuration (and even its `access_log=False`)
rewires the shared `uvicorn` loggers, which changes what the tests capture and
depends on which test happened to start the double first.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.auto import AutoHTTPProtocol


class _UnloggedHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol without access lines.

    uvicorn writes one whenever the process-wide `uvicorn.access` logger has a
    handler; the double's requests (each URL with a bot token) are not the
    service's traffic and stay out of the log.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access_log = False


class ServerThread:
    STARTUP_TIMEOUT = 10.0

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, port: int = 0) -> str:
        """Start serving on `port` (0: any free one); returns `http://127.0.0.1:PORT`."""
        # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets
        # only then, and without it every answer stalls ~40 ms on delayed ACKs.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            log_config=None,
            http=_UnloggedHTTPProtocol,
            lifespan="off",
            loop="asyncio",
            # Hung requests are released by the double; this bounds any leftover.
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="telegram-double", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + self.STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the Bot API double did not start")
            time.sleep(0.005)
        self._server, self._thread = server, thread
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = self._thread = None
