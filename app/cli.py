"""The `integrations` command (also `python -m app`).

Commands: serve, worker, migrate, workspace create, verify, vault status|rotate.
Errors go to stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from app.config import Settings, get_settings
from app.logging import configure_logging, redact_text


class CommandError(Exception):
    """A failure the user can act on; printed without a traceback."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="integrations", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP API and the settings UI")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)

    commands.add_parser("migrate", help="apply database migrations")

    workspace = commands.add_parser("workspace", help="manage workspaces")
    workspace_commands = workspace.add_subparsers(dest="workspace_command", required=True)
    create = workspace_commands.add_parser("create", help="create a workspace and its admin token")
    create.add_argument("name")
    create.add_argument("--json", action="store_true", help="print {workspace_id, token}")
    return parser


def _serve(settings: Settings, host: str, port: int) -> int:
    import uvicorn

    from app.main import create_app

    app = create_app(settings)
    # log_config=None: keep our structlog pipeline (and its redaction) for uvicorn's lines.
    uvicorn.run(app, host=host, port=port, log_config=None, proxy_headers=False)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"integrations: invalid configuration: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    configure_logging(json_output=settings.is_production, level=settings.log_level)
    try:
        if args.command == "serve":
            return _serve(settings, args.host, args.port)
        if args.command == "migrate":
            return _migrate(settings)
        if args.command == "workspace":
            return asyncio.run(_workspace_create(settings, args.name, args.json))
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
