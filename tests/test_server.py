"""The HTTP server in front of the application, over raw sockets against a real
`integrations serve` process: answers the application never sees (malformed
requests, clients too slow to send their headers) keep the one error shape."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.test_cli import cli_env, run_cli

HEADER_TIMEOUT = 1.0
# Generous: a connection still open this long after the header timeout was held.
CLOSE_BOUND = 30.0


@pytest.fixture(scope="module")
def server_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real server on the embedded default, with a one-second header timeout."""
    tmp_path = tmp_path_factory.mktemp("server")
    env = cli_env(tmp_path, HTTP_HEADER_TIMEOUT=str(HEADER_TIMEOUT))
    migrated = run_cli("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, "the server exited early"
            assert time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).is_success:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=15)


def connect(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if data:
        sock.sendall(data)
    return sock


def read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection; fails at the deadline."""
    received = b""
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"still open after {CLOSE_BOUND} s; received {received!r}"
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def assert_error_shape(raw: bytes, status: int, code: str) -> None:
    answered, headers, body = parse_response(raw)
    assert answered == status, raw
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert error["code"] == code and isinstance(error["message"], str) and error["message"]


def test_a_control_byte_in_a_header_is_answered_in_the_error_shape(server_port: int) -> None:
    with connect(server_port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Note: a\x01b\r\n\r\n") as sock:
        raw = read_until_closed(sock, time.monotonic() + CLOSE_BOUND)
    assert_error_shape(raw, 400, "bad_request")


def test_a_malformed_request_line_is_answered_in_the_error_shape(server_port: int) -> None:
    with connect(server_port, b"GET /\x7fhealth HTTP/1.1\r\nHost: x\r\n\r\n") as sock:
        raw = read_until_closed(sock, time.monotonic() + CLOSE_BOUND)
    assert_error_shape(raw, 400, "bad_request")


def test_a_websocket_upgrade_is_an_ordinary_request(server_port: int) -> None:
    request = (
        b"GET /api/v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    with connect(server_port, request) as sock:
        sock.shutdown(socket.SHUT_WR)
        raw = read_until_closed(sock, time.monotonic() + CLOSE_BOUND)
    assert_error_shape(raw, 404, "not_found")


def test_fifty_clients_stuck_in_their_headers_are_closed_with_408(server_port: int) -> None:
    partial = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "
    sockets = [connect(server_port, partial) for _ in range(50)]
    deadline = time.monotonic() + CLOSE_BOUND
    try:
        for sock in sockets:
            assert_error_shape(read_until_closed(sock, deadline), 408, "request_timeout")
    finally:
        for sock in sockets:
            sock.close()
    # The server still answers.
    assert httpx.get(f"http://127.0.0.1:{server_port}/health", timeout=5).is_success


def test_headers_dripped_a_byte_at_a_time_do_not_extend_the_deadline(server_port: int) -> None:
    deadline = time.monotonic() + CLOSE_BOUND
    with connect(server_port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ") as sock:
        sock.settimeout(HEADER_TIMEOUT / 5)
        while True:
            assert time.monotonic() < deadline, f"still open after {CLOSE_BOUND} s"
            try:
                chunk: bytes | None = sock.recv(65536)
            except TimeoutError:
                chunk = None
            except ConnectionResetError:
                break
            if chunk == b"":
                break
            if chunk is None:
                try:
                    sock.sendall(b"x")
                except (BrokenPipeError, ConnectionResetError):
                    break


def test_a_connection_that_sends_nothing_is_closed(server_port: int) -> None:
    with connect(server_port) as sock:
        assert read_until_closed(sock, time.monotonic() + CLOSE_BOUND) == b""
