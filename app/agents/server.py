"""The MCP server: its tools as agents see them, and its session manager's life.

Built on the SDK's `MCPServer`, served over streamable HTTP in stateless mode
with JSON responses: every POST to /mcp is answered on its own, so any replica
behind a load balancer can answer any request (stateful sessions would pin a
client to the replica holding its session), and no tool streams or calls back
into the client. The SDK's session manager still needs a running task group:
`open_agent_access` runs it for as long as the application's lifespan.

Tool failures the caller can act on (a refused role, an unknown id, a text
Telegram would refuse, a reused idempotency key) are tool errors whose text
starts with the REST API's error code, e.g. `not_found: No such message.`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types import ToolAnnotations
from pydantic import Field

from app.agents import AUTH_SCOPE_KEY, MCP_PATH
from app.agents.security import transport_security
from app.agents.tools import AgentTools, SendResult
from app.auth.service import AuthContext
from app.config import Settings
from app.connections.schemas import ConnectionOut
from app.errors import AppError
from app.inbox.schemas import ConversationMessageOut, ConversationOut
from app.messages.schemas import MessageOut
from app.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, PageParams

T = TypeVar("T")

INSTRUCTIONS = (
    "Send Telegram messages through this workspace's bots and read their inbox. "
    "Sending goes through the workspace's approval queue: on a connection whose "
    "approval_mode is 'required' a message waits as 'pending_approval' until a "
    "person approves it, and nothing is sent before then; the tool answers at once "
    "and never waits. Check a message's progress with get_message."
)

SEND_DESCRIPTION = (
    "Queue a Telegram message through a connection (a bot) of this workspace. "
    "Address it with exactly one of chat_id (a Telegram chat id, or @channelusername) "
    "or conversation_id (from list_conversations; it is then sent where the "
    "conversation lives). The text is checked against Telegram's rules first "
    "(1-4096 characters after entity parsing; parse_mode HTML, MarkdownV2 or Markdown). "
    "SENDING NEEDS APPROVAL when the connection's approval_mode is 'required' "
    "(see list_connections): the message is then 'pending_approval' and is sent only "
    "after a reviewer approves it; it expires unapproved after the workspace's "
    "approval time. With approval_mode 'none' it is 'queued' and sent shortly. "
    "This tool never waits for approval or delivery: it answers with the message's "
    "id and status at once; follow it with get_message. Pass an idempotency_key to "
    "retry safely: the same key and the same message answer the message created "
    "before (created: false) instead of sending twice. Needs a sender or admin token."
)

ConnectionId = Annotated[
    uuid.UUID, Field(description="The connection (bot) to send through or read from.")
]
Cursor = Annotated[
    str | None,
    Field(max_length=512, description="next_cursor of the previous page; omit for the first."),
]
Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT, description="Items per page (1-200).")]


async def _answer(call: Awaitable[T]) -> T:
    """The service's answer, or its refusal as a tool error (`code: message`)."""
    try:
        return await call
    except AppError as exc:
        raise ToolError(f"{exc.code}: {exc.message}") from None


def _caller(ctx: Context) -> AuthContext:
    request = ctx.request_context.request
    auth = request.scope.get(AUTH_SCOPE_KEY) if request is not None else None
    if not isinstance(auth, AuthContext):
        # Unreachable through /mcp, which authenticates every request first.
        raise ToolError("unauthenticated: A valid API token is required.")
    return auth


@dataclass(frozen=True)
class _ToolFunctions:
    """The tools' signatures, which the SDK turns into their input schemas."""

    tools: AgentTools

    async def send_message(
        self,
        ctx: Context,
        connection_id: ConnectionId,
        text: Annotated[
            str, Field(min_length=1, max_length=40_000, description="The message text.")
        ],
        chat_id: Annotated[
            int | str | None,
            Field(description="A Telegram chat id (integer) or @channelusername."),
        ] = None,
        conversation_id: Annotated[
            uuid.UUID | None, Field(description="A conversation of this workspace.")
        ] = None,
        parse_mode: Annotated[
            Literal["HTML", "MarkdownV2", "Markdown"] | None,
            Field(description="How Telegram formats the text; omit for plain text."),
        ] = None,
        idempotency_key: Annotated[
            str | None,
            Field(
                min_length=1,
                max_length=200,
                description="Makes a retry safe: the same key never creates a second message.",
            ),
        ] = None,
    ) -> SendResult:
        return await _answer(
            self.tools.send_message(
                _caller(ctx),
                connection_id=str(connection_id),
                text=text,
                chat_id=chat_id,
                conversation_id=None if conversation_id is None else str(conversation_id),
                parse_mode=parse_mode,
                idempotency_key=idempotency_key,
            )
        )

    async def get_message(
        self,
        ctx: Context,
        message_id: Annotated[uuid.UUID, Field(description="The id send_message answered.")],
    ) -> MessageOut:
        return await _answer(self.tools.get_message(_caller(ctx), message_id))

    async def list_conversations(
        self,
        ctx: Context,
        connection_id: Annotated[
            uuid.UUID | None, Field(description="Only this connection's conversations.")
        ] = None,
        cursor: Cursor = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> Page[ConversationOut]:
        return await _answer(
            self.tools.list_conversations(
                _caller(ctx), connection_id, PageParams(cursor=cursor, limit=limit)
            )
        )

    async def get_conversation_messages(
        self,
        ctx: Context,
        conversation_id: Annotated[uuid.UUID, Field(description="From list_conversations.")],
        cursor: Cursor = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> Page[ConversationMessageOut]:
        return await _answer(
            self.tools.get_conversation_messages(
                _caller(ctx), conversation_id, PageParams(cursor=cursor, limit=limit)
            )
        )

    async def list_connections(self, ctx: Context, cursor: Cursor = None) -> Page[ConnectionOut]:
        return await _answer(
            self.tools.list_connections(_caller(ctx), PageParams(cursor=cursor, limit=MAX_LIMIT))
        )


def build_server(tools: AgentTools) -> MCPServer:
    """The MCP server with the service's five tools."""
    server: MCPServer = MCPServer(name="integrations", instructions=INSTRUCTIONS)
    functions = _ToolFunctions(tools)
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    server.add_tool(
        functions.send_message,
        name="send_message",
        title="Send a message (through the approval queue)",
        description=SEND_DESCRIPTION,
        annotations=ToolAnnotations(
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=True,
        ),
    )
    server.add_tool(
        functions.get_message,
        name="get_message",
        title="Get a message",
        description="A message sent with send_message: its status (pending_approval, "
        "queued, sending, sent, failed, rejected, cancelled, expired), attempts, "
        "Telegram's last error (last_error) and, once sent, telegram_message_id.",
        annotations=read_only,
    )
    server.add_tool(
        functions.list_conversations,
        name="list_conversations",
        title="List conversations",
        description="The workspace's conversations, most recently active first, "
        "optionally of one connection. Paginated: pass next_cursor as cursor.",
        annotations=read_only,
    )
    server.add_tool(
        functions.get_conversation_messages,
        name="get_conversation_messages",
        title="List a conversation's messages",
        description="A conversation's messages in both directions, oldest first; an "
        "outbound one carries outbound_message_id and its status. Paginated: pass "
        "next_cursor as cursor.",
        annotations=read_only,
    )
    server.add_tool(
        functions.list_connections,
        name="list_connections",
        title="List connections",
        description="The workspace's bots: id, name, bot username, status and "
        "approval_mode ('required': messages wait for a reviewer's approval before "
        "they are sent; 'none': sent without approval).",
        annotations=read_only,
    )
    return server


@dataclass(frozen=True)
class AgentAccess:
    """What /mcp needs while the application runs."""

    tools: AgentTools
    session_manager: StreamableHTTPSessionManager


@asynccontextmanager
async def open_agent_access(settings: Settings, tools: AgentTools) -> AsyncIterator[AgentAccess]:
    """The MCP server's session manager, running until the block ends (the
    application's lifespan). A manager runs once, so each lifespan builds its own."""
    server = build_server(tools)
    # Only the session manager this configures is used (app.agents.endpoint calls
    # it directly); the Starlette app it returns is not mounted.
    server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        json_response=True,
        transport_security=transport_security(settings),
    )
    async with server.session_manager.run():
        yield AgentAccess(tools=tools, session_manager=server.session_manager)
