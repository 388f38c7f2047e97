"""The `integrations` command (also `python -m app`).

Commands: serve, worker, migrate, workspace create, vault status|rotate|generate-key.
Errors go to stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from app.config import Settings, get_settings
from app.logging import configure_logging, redact_text
from app.vault import KeyringError


class CommandError(Exception):
    """A failure the user can act on; printed without a traceback."""


class _Parser(argparse.ArgumentParser):
    """Shows each option's default in its help; subcommands' parsers are of this
    class too (add_subparsers uses the parent's), so every command's help does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


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

    commands.add_parser("worker", help="run the worker: long-polling ingestion and housekeeping")
    commands.add_parser("migrate", help="apply database migrations")

    workspace = commands.add_parser("workspace", help="manage workspaces")
    workspace_commands = workspace.add_subparsers(
        dest="workspace_command", required=True, metavar="COMMAND", help="what to do"
    )
    create = workspace_commands.add_parser("create", help="create a workspace and its admin token")
    create.add_argument("name", help="the workspace's name, 1-200 characters")
    create.add_argument(
        "--json", action="store_true", help='print {"workspace_id", "token"} as one JSON object'
    )

    vault = commands.add_parser("vault", help="credential vault: key usage and rotation")
    vault_commands = vault.add_subparsers(
        dest="vault_command", required=True, metavar="COMMAND", help="what to do"
    )
    vault_commands.add_parser(
        "status", help="ciphertexts per key id; non-zero exit if a key in use is missing"
    )
    rotate = vault_commands.add_parser(
        "rotate", help="re-encrypt every secret under the primary key (online, in batches)"
    )
    rotate.add_argument(
        "--batch-size", type=int, default=500, help="rows re-encrypted per transaction"
    )
    vault_commands.add_parser("generate-key", help="print a new key_id:key entry for VAULT_KEYS")
    return parser


def _serve(settings: Settings, host: str, port: int, with_worker: bool) -> int:
    import uvicorn

    from app.main import create_app
    from app.vault import load_keyring

    # Refuse to start on a missing or malformed keyring with a clear message,
    # before uvicorn turns it into a failed lifespan.
    load_keyring(settings)
    app = create_app(settings, with_worker=with_worker)
    # log_config=None: keep our structlog pipeline (and its redaction) for uvicorn's lines.
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=settings.access_log,
        proxy_headers=False,
    )
    return 0


async def _worker(settings: Settings) -> int:
    from app.vault import load_keyring
    from app.worker import run_worker

    load_keyring(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run_worker(settings, stop=stop)
    return 0


def _migrate(settings: Settings) -> int:
    from app.schema import upgrade_to_head

    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_to_head(settings.effective_database_url)
    print("migrations applied", file=sys.stderr)
    return 0


async def _workspace_create(settings: Settings, name: str, as_json: bool) -> int:
    from app.auth.service import create_workspace
    from app.db import session_scope
    from app.runtime import open_runtime

    name = name.strip()
    if not name or len(name) > 200:
        raise CommandError("the workspace name must be 1-200 characters")
    async with open_runtime(settings) as runtime:
        async for session in session_scope(runtime.session_factory):
            workspace, token = await create_workspace(session, name)
    if as_json:
        print(json.dumps({"workspace_id": str(workspace.id), "token": token}))
    else:
        print(f"workspace_id: {workspace.id}")
        print(f"admin token:  {token}")
        print("The token is shown once; store it now.", file=sys.stderr)
    return 0


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
    engine = create_engine(settings.effective_database_url)
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
        if args.command == "serve":
            return _serve(settings, args.host, args.port, args.with_worker)
        if args.command == "worker":
            return asyncio.run(_worker(settings))
        if args.command == "migrate":
            return _migrate(settings)
        if args.command == "workspace":
            return asyncio.run(_workspace_create(settings, args.name, args.json))
        if args.command == "vault" and args.vault_command == "generate-key":
            from app.vault import generate_key_entry

            print(generate_key_entry("k" + datetime.now(UTC).strftime("%Y%m%d")))
            return 0
        if args.command == "vault":
            return asyncio.run(
                _vault(
                    settings,
                    args.vault_command,
                    args.batch_size if args.vault_command == "rotate" else 500,
                )
            )
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
    return 2
