"""The `integrations` command (also `python -m app`).

Commands: serve, worker, migrate, workspace create|list, token create, verify,
vault status|rotate|generate-key.
Errors go to stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from app.auth.models import Role
from app.config import Settings, get_settings
from app.logging import configure_logging, redact_text
from app.validation import Name
from app.vault import KeyringError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from app.connections.verify import Expectation, VerifyReport


class CommandError(Exception):
    """A failure the user can act on; printed without a traceback."""


class _Parser(argparse.ArgumentParser):
    """Shows each option's default in its help; subcommands' parsers are of this
    class too (add_subparsers uses the parent's), so every command's help does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


# What a subcommand runs: each parser sets its own with `set_defaults(run=...)`.
Command = Callable[[Settings, argparse.Namespace], int]


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="integrations", description=__doc__)
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="what to do"
    )

    serve = commands.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    serve.add_argument(
        "--with-worker",
        action="store_true",
        help="also run the worker (long polling, housekeeping) in this process, "
        "as `make run` does on the embedded default",
    )
    serve.set_defaults(run=lambda s, a: _serve(s, a.host, a.port, a.with_worker))

    worker = commands.add_parser(
        "worker", help="run the worker: outbound sending, long-polling ingestion and housekeeping"
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve GET /metrics on this port (overrides WORKER_METRICS_PORT; none: no endpoint)",
    )
    worker.add_argument(
        "--metrics-host",
        default=None,
        metavar="HOST",
        help="the address the metrics port listens on (overrides WORKER_METRICS_HOST)",
    )
    worker.set_defaults(run=lambda s, a: _run_fast(_worker(_worker_settings(s, a))))
    migrate = commands.add_parser("migrate", help="apply database migrations")
    migrate.set_defaults(run=lambda s, a: _migrate(s))

    workspace = commands.add_parser("workspace", help="manage workspaces")
    workspace_commands = workspace.add_subparsers(
        dest="workspace_command", required=True, metavar="COMMAND", help="what to do"
    )
    create = workspace_commands.add_parser("create", help="create a workspace and its admin token")
    create.add_argument("name", help="the workspace's name, 1-200 characters")
    create.add_argument(
        "--json", action="store_true", help='print {"workspace_id", "token"} as one JSON object'
    )
    create.set_defaults(run=lambda s, a: asyncio.run(_workspace_create(s, a.name, a.json)))
    listing = workspace_commands.add_parser("list", help="list every workspace")
    listing.add_argument(
        "--json", action="store_true", help='print [{"id", "name", "created_at"}] as JSON'
    )
    listing.set_defaults(run=lambda s, a: asyncio.run(_workspace_list(s, a.json)))

    token = commands.add_parser("token", help="manage API tokens")
    token_commands = token.add_subparsers(
        dest="token_command", required=True, metavar="COMMAND", help="what to do"
    )
    issue = token_commands.add_parser(
        "create", help="create an API token for a workspace (e.g. when the last admin's is lost)"
    )
    issue.add_argument(
        "--workspace", required=True, type=uuid.UUID, metavar="ID", help="the workspace's id"
    )
    issue.add_argument(
        "--role",
        required=True,
        choices=[role.value for role in Role],
        help="what the token may do",
    )
    issue.add_argument("--name", default="command line", help="a name to recognise it by")
    issue.add_argument(
        "--json",
        action="store_true",
        help='print {"id", "workspace_id", "name", "role", "token", "created_at"} as JSON',
    )
    issue.set_defaults(
        run=lambda s, a: asyncio.run(_token_create(s, a.workspace, Role(a.role), a.name, a.json))
    )

    verify = commands.add_parser(
        "verify",
        help="check a bot token, its webhook or long polling, and optionally a real send",
        description="Checks a bot: getMe, getWebhookInfo (is the webhook this service's, "
        "delivery errors, pending updates), long polling where that is the mode, and a real "
        "send with --chat-id. One PASS/FAIL/SKIP line per check; exit status 1 on any FAIL. "
        "The token is never printed.",
    )
    which = verify.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--token",
        metavar="TOKEN",
        help="the bot token (visible to other users in the process list: prefer --token-env "
        "or --token-stdin)",
    )
    which.add_argument(
        "--token-env", metavar="NAME", help="read the bot token from this environment variable"
    )
    which.add_argument(
        "--token-stdin", action="store_true", help="read the bot token from standard input"
    )
    which.add_argument(
        "--connection",
        type=uuid.UUID,
        metavar="ID",
        help="a connection of this service: its stored token, mode and webhook key",
    )
    verify.add_argument(
        "--chat-id",
        metavar="CHAT",
        help="also send a test message to this chat (an id, or @channelusername)",
    )
    verify.add_argument(
        "--json", action="store_true", help='print {"ok", "checks", "summary"} as JSON'
    )
    verify.set_defaults(run=lambda s, a: asyncio.run(_verify(s, a)))

    vault = commands.add_parser("vault", help="credential vault: key usage and rotation")
    vault_commands = vault.add_subparsers(
        dest="vault_command", required=True, metavar="COMMAND", help="what to do"
    )
    status = vault_commands.add_parser(
        "status", help="ciphertexts per key id; non-zero exit if a key in use is missing"
    )
    status.set_defaults(run=lambda s, a: asyncio.run(_vault(s, "status", batch_size=1)))
    rotate = vault_commands.add_parser(
        "rotate", help="re-encrypt every secret under the primary key (online, in batches)"
    )
    rotate.add_argument(
        "--batch-size", type=int, default=500, help="rows re-encrypted per transaction"
    )
    rotate.set_defaults(run=lambda s, a: asyncio.run(_vault(s, "rotate", a.batch_size)))
    generate = vault_commands.add_parser(
        "generate-key", help="print a new key_id:key entry for VAULT_KEYS"
    )
    generate.set_defaults(run=lambda s, a: _generate_key())
    return parser


def _generate_key() -> int:
    from app.vault import generate_key_entry

    print(generate_key_entry("k" + datetime.now(UTC).strftime("%Y%m%d")))
    return 0


def _serve(settings: Settings, host: str, port: int, with_worker: bool) -> int:
    import uvicorn

    from app.main import create_app
    from app.server import http_protocol
    from app.vault import load_keyring

    # Refuse to start on a missing or malformed keyring with a clear message,
    # before uvicorn turns it into a failed lifespan; the app reuses it.
    app = create_app(settings, with_worker=with_worker, keyring=load_keyring(settings))
    # SIGTERM and SIGINT: uvicorn stops listening, lets the requests in flight finish
    # (within SHUTDOWN_GRACE_SECONDS; past it they are cancelled), closes idle
    # connections, runs the lifespan's shutdown (the ingress writer stores what it
    # holds, an embedded worker stops gracefully), then raises the signal again with
    # the handler it found. That handler is this no-op, so a polite stop ends with
    # exit status 0 rather than death by the signal (or a KeyboardInterrupt).
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stopped)
    # log_config=None: keep our structlog pipeline (and its redaction) for uvicorn's lines.
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=settings.access_log,
        proxy_headers=False,
        http=http_protocol(settings),
        # No endpoint speaks WebSocket: an upgrade request is an ordinary request,
        # answered by the application, rather than a bare 403 from the handshake.
        ws="none",
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )
    return 0


def _stopped(signum: int, frame: object) -> None:
    """The handler uvicorn hands a stop signal back to once it has shut down."""


def _run_fast(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed (it comes with uvicorn's standard extras,
    as `serve` uses it): the dispatcher's sends cost noticeably less CPU on it."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _worker_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    """The settings with the worker's command-line options applied."""
    changes: dict[str, Any] = {}
    if args.metrics_port is not None:
        if not 1 <= args.metrics_port <= 65535:
            raise CommandError("--metrics-port must be between 1 and 65535")
        changes["worker_metrics_port"] = args.metrics_port
    if args.metrics_host is not None:
        changes["worker_metrics_host"] = args.metrics_host
    return settings.model_copy(update=changes) if changes else settings


async def _worker(settings: Settings) -> int:
    from app.worker import run_worker

    # A missing or malformed keyring stops run_worker before it opens anything.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run_worker(settings, stop=stop)
    return 0


def _migrate(settings: Settings) -> int:
    from app.migrate import upgrade_to_head

    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_to_head(settings.effective_database_url, pgbouncer=settings.database_pgbouncer)
    print("migrations applied", file=sys.stderr)
    return 0


@asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """One engine and nothing else (no Redis, no HTTP client): a one-shot command's."""
    import app.models  # noqa: F401 - every table, so any mapper can be configured
    from app.db import create_engine, create_session_factory

    engine = create_engine(settings.effective_database_url, pgbouncer=settings.database_pgbouncer)
    try:
        yield create_session_factory(engine)
    finally:
        await engine.dispose()


def _name(value: str, what: str) -> str:
    """The API's rules for a name (see `app.validation.Name`)."""
    try:
        return TypeAdapter(Name).validate_python(value.strip())
    except ValidationError as exc:
        raise CommandError(f"{what}: {exc.errors()[0]['msg']}") from None


async def _workspace_create(settings: Settings, name: str, as_json: bool) -> int:
    from app.auth.service import create_workspace
    from app.db import session_scope

    name = _name(name, "the workspace name")
    async with _database(settings) as factory:
        async for session in session_scope(factory):
            workspace, token = await create_workspace(session, name)
    if as_json:
        print(json.dumps({"workspace_id": str(workspace.id), "token": token}))
    else:
        print(f"workspace_id: {workspace.id}")
        print(f"admin token:  {token}")
        print("The token is shown once; store it now.", file=sys.stderr)
    return 0


async def _workspace_list(settings: Settings, as_json: bool) -> int:
    from app.auth.repository import list_workspaces
    from app.auth.schemas import WorkspaceOut

    async with _database(settings) as factory, factory() as session:
        workspaces = await list_workspaces(session)
    rows = [
        WorkspaceOut.model_validate(w, from_attributes=True).model_dump(mode="json")
        for w in workspaces
    ]
    if as_json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print("\t".join((row["id"], row["name"], row["created_at"])))
    return 0


async def _token_create(
    settings: Settings, workspace_id: uuid.UUID, role: Role, name: str, as_json: bool
) -> int:
    from app.auth.schemas import TokenCreated
    from app.auth.service import issue_token
    from app.db import session_scope
    from app.errors import NotFound

    name = _name(name, "the token name")
    async with _database(settings) as factory:
        try:
            async for session in session_scope(factory):
                token, secret = await issue_token(session, workspace_id, name, role)
        except NotFound:
            raise CommandError(f"no workspace with id {workspace_id}") from None
    if as_json:
        created = TokenCreated(
            id=token.id, name=token.name, role=role, token=secret, created_at=token.created_at
        )
        print(json.dumps({"workspace_id": str(workspace_id), **created.model_dump(mode="json")}))
    else:
        print(f"token_id: {token.id}")
        print(f"{role} token: {secret}")
        print("The token is shown once; store it now.", file=sys.stderr)
    return 0


def _chat_id(text: str | None) -> int | str | None:
    if text is None:
        return None
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if text.startswith("@") and len(text) > 1:
        return text
    raise CommandError("--chat-id must be a chat id (an integer) or @channelusername")


def _token_from(args: argparse.Namespace) -> str:
    import os

    if args.token_env is not None:
        value = os.environ.get(args.token_env)
        if not value:
            raise CommandError(f"the environment variable {args.token_env} is unset or empty")
        return str(value)
    if args.token_stdin:
        value = sys.stdin.readline()
        if not value.strip():
            raise CommandError("no token on standard input")
        return value
    return str(args.token)


async def _verify(settings: Settings, args: argparse.Namespace) -> int:
    import httpx

    from app.connections.models import ConnectionMode
    from app.connections.verify import Expectation, VerifyReport, verify_bot
    from app.telegram.client import TelegramClient

    chat_id = _chat_id(args.chat_id)
    report = VerifyReport()
    if args.connection is not None:
        token, expect = await _connection_to_verify(settings, args.connection, report)
    else:
        token = _token_from(args)
        expect = Expectation(
            mode=ConnectionMode.webhook if settings.public_base_url else ConnectionMode.polling,
            public_base_url=settings.public_base_url,
        )
    if token is not None and expect is not None:
        timeout = httpx.Timeout(settings.telegram_request_timeout, connect=5.0)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http:
            telegram = TelegramClient(
                http, settings.telegram_api_base, request_timeout=settings.telegram_request_timeout
            )
            await verify_bot(telegram, token, expect, chat_id=chat_id, report=report)
    if args.json:
        print(redact_text(json.dumps(report.as_json())))
    else:
        print("\n".join(redact_text(line) for line in report.lines()))
    return 0 if report.ok else 1


async def _connection_to_verify(
    settings: Settings, connection_id: uuid.UUID, report: VerifyReport
) -> tuple[str | None, Expectation | None]:
    """The stored token and what the connection should look like; a FAIL line (and
    no token) when its credentials cannot be opened."""
    from app.connections.credentials import ConnectionCredentials, MissingCredential
    from app.connections.repository import find_connection
    from app.connections.status import CREDENTIALS_UNREADABLE_HINT
    from app.connections.verify import CheckStatus, Expectation
    from app.db import utcnow
    from app.vault import Vault, VaultError, load_keyring

    credentials = ConnectionCredentials(Vault(load_keyring(settings)))
    async with _database(settings) as factory, factory() as session:
        connection = await find_connection(session, connection_id)
        if connection is None or connection.deleted_at is not None:
            raise CommandError(f"no live connection with id {connection_id}")
        describe = (
            f"Connection {connection.id} (workspace {connection.workspace_id}): "
            f"mode {connection.mode}, status {connection.status}."
        )
        try:
            token = credentials.open(connection, "bot_token")
        except (VaultError, MissingCredential):
            report.add("connection", CheckStatus.failed, describe, CREDENTIALS_UNREADABLE_HINT)
            return None, None
        report.add("connection", CheckStatus.passed, describe)
        grace = settings.webhook_secret_grace_seconds
        expires = connection.previous_secret_expires_at
        unsettled = expires is not None and (expires - utcnow()).total_seconds() > grace
        expect = Expectation(
            mode=connection.mode,
            public_base_url=settings.public_base_url,
            key_matches=lambda key: credentials.key_matches(connection, key),
            bot_id=connection.bot_id,
            poller=connection.poll_owner,
            poll_lease_until=connection.poll_lease_until,
            rotation_unsettled=unsettled,
        )
    return token, expect


async def _vault(settings: Settings, command: str, batch_size: int) -> int:
    from app.db import create_engine, create_session_factory
    from app.models import metadata
    from app.vault import (
        RotationProgress,
        Vault,
        load_keyring,
        rotate,
        rotation_lines,
        sealed_fields,
        status_lines,
        vault_status,
    )

    keyring = load_keyring(settings)
    engine = create_engine(settings.effective_database_url, pgbouncer=settings.database_pgbouncer)
    try:
        factory = create_session_factory(engine)
        fields = sealed_fields(metadata.sorted_tables)
        if command == "status":
            status = await vault_status(factory, keyring, fields)
            print("\n".join(status_lines(status)))
            return 0 if status.ok else 1

        def progress(step: RotationProgress) -> None:
            print(
                f"  {step.field}: batch {step.batches}, examined {step.examined}, "
                f"rotated {step.rotated}, skipped {step.skipped_concurrent}, "
                f"failed {step.failed}",
                file=sys.stderr,
                flush=True,
            )

        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        report = await rotate(
            factory, Vault(keyring), fields=fields, batch_size=batch_size, progress=progress
        )
        print("\n".join(rotation_lines(report)))
        return 0 if report.ok else 1
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"integrations: invalid configuration: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    configure_logging(
        json_output=settings.is_production,
        level=settings.log_level,
        access_log=settings.access_log,
    )
    try:
        run: Command = args.run
        return run(settings, args)
    except KeyringError as exc:
        print(f"integrations: vault keyring: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"integrations: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        # No traceback by default: its text could carry configuration values.
        print(
            f"integrations: {args.command} failed: {type(exc).__name__}: {redact_text(str(exc))}",
            file=sys.stderr,
        )
        return 1
