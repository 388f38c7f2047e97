"""What the API document says about the API as a whole (served at /docs in development)."""

from __future__ import annotations

from typing import Any

DESCRIPTION = """\
Each workspace connects its own Telegram bot; the service keeps the bot's token and
webhook secret encrypted, and verifies and stores every update the bot receives.

**Authentication.** `Authorization: Bearer wsk_...` (use *Authorize*). A workspace and
its first admin token come from `integrations workspace create NAME`. Roles: `admin`
(everything), `reviewer` (read, approve and reject), `sender` (read, send). A missing,
unknown or revoked token is 401; a role that may not do something is 403. A resource
of another workspace is 404, exactly as a missing one.

**Errors** have one shape everywhere: `{"error": {"code", "message", "field"?}}`.
Programs branch on `code`; each operation lists the codes it can answer. Unexpected
failures are 500 `internal_error`, with no internals.

**Lists** answer `{"items": [...], "next_cursor": "..." | null}`: pass `?cursor=` for
the next page, `?limit=` 1-200 (default 50). Ids are UUIDs, times ISO 8601 in UTC.

Every response carries `X-Request-ID` (the caller's, when short and plain), which
also marks every log line of the request.
"""

TAGS: list[dict[str, Any]] = [
    {"name": "connections", "description": "Telegram bots connected to the workspace."},
    {"name": "inbox", "description": "What the bots received: updates, contacts, conversations."},
    {"name": "tokens", "description": "The workspace's API tokens (admin)."},
    {"name": "webhook", "description": "Telegram's deliveries (no bearer token)."},
    {"name": "operations", "description": "Liveness and readiness probes (no token)."},
]
