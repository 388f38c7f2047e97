"""`TelegramDouble`: a fake Bot API server for tests, and its test controls.

The double serves real HTTP on 127.0.0.1 (see server.py and app.py), so the
production client runs unchanged against `base_url`. Tests steer it through the
thread-safe methods below; one `threading.Lock` guards all state because the
server answers on its own thread.

Decisions a test author must know:
- sendMessage accepts any chat by default (positive ids are private chats,
  -100... supergroups, other negatives groups, "@name" channels); `set_chat()`
  makes one answer `chat not found`, blocked, kicked or migrated.
- Strict checking: see validation.py. Every refused call is in `violations`,
  and the pytest fixture fails the test if any remain at teardown; a test that
  provokes one on purpose takes it with `take_violations()`.
- setWebhook allows a non-empty URL once a second per bot (real behaviour),
  measured on `clock.monotonic()`; tests switch it off with
  `enforce_set_webhook_rate_limit = False` or move a `ManualClock`.
- sendMessage is never rate limited unless a test sets `send_limits` (a
  `SendLimits`: Telegram's per-chat, per-group and per-bot limits); then a send
  over one is answered 429 with `retry_after` and is not delivered.
- Long polls and scripted delays wait in real time (capped by `long_poll_cap`
  and `HANG_LIMIT`); `reset()` and `stop()` end them at once.
"""

from __future__ import annotations

import copy
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from tests.leaks import registry as leaks
from tests.telegram_double import delivery, methods
from tests.telegram_double.app import build_app
from tests.telegram_double.methods import Context, InvalidCall, Reply
from tests.telegram_double.server import ServerThread
from tests.telegram_double.state import (
    BotState,
    ChatStatus,
    Clock,
    DoubleUsageError,
    FakeBot,
    RecordedCall,
    ScriptedDelay,
    ScriptedFailure,
    SendLimits,
    SentMessageRecord,
    SystemClock,
    Violation,
    WebhookSnapshot,
    update_kind,
)
from tests.telegram_double.validation import ApiSpec, ParamError, load_spec

BotRef = FakeBot | int
# Stricter than the real server's own check (which refuses a leading 0, a '/',
# or more than 80 characters); anything else is "invalid token specified".
_TOKEN_SHAPE = re.compile(r"[1-9][0-9]{0,19}:[A-Za-z0-9_-]{1,80}")
_DEFAULT_DESCRIPTIONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: methods.CONFLICT_OTHER_POLL,
    500: "Internal Server Error",
    502: "Bad Gateway",
}


@dataclass
class Prepared:
    """A call that passed authentication and validation, ready to run."""

    call: RecordedCall
    method: str
    bot_id: int
    params: dict[str, Any]
    delay: ScriptedDelay | None
    failure: Reply | None
    generation: int


class TelegramDouble:
    """A Bot API stand-in: start() it, point the client at `base_url`."""

    HANG_LIMIT = 30.0
    DEFAULT_LONG_POLL_CAP = 1.0

    def __init__(self, spec: ApiSpec | None = None) -> None:
        self.spec = spec or load_spec()
        self.update_kinds = frozenset(self.spec.type_fields("Update")) - {"update_id"}
        self._lock = threading.Lock()
        self._server: ServerThread | None = None
        self._base_url: str | None = None
        self._closing = False
        self._generation = 0
        # Bot ids keep growing across resets so a stale token never matches a new bot.
        self._next_bot_id = 7_000_000_001
        self._reset_locked()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> TelegramDouble:
        """Serve on a free local port; returns self."""
        if self._server is not None:
            raise DoubleUsageError("already started")
        self._closing = False
        self._server = ServerThread(build_app(self))
        self._base_url = self._server.start()
        return self

    def stop(self) -> None:
        """End waiting requests and stop serving."""
        self._closing = True
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> TelegramDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`, the value for the client's base_url."""
        if self._base_url is None:
            raise DoubleUsageError("the double is not started")
        return self._base_url

    def reset(self) -> None:
        """Forget bots, calls, scripts and violations; restore default settings."""
        with self._lock:
            self._reset_locked()

    def _reset_locked(self) -> None:
        self._bots: dict[int, BotState] = {}
        self._tokens: dict[str, int] = {}
        self._calls: list[RecordedCall] = []
        self._violations: list[Violation] = []
        self._failures: list[ScriptedFailure] = []
        self._delays: list[ScriptedDelay] = []
        self.clock: Clock = SystemClock()
        self.enforce_set_webhook_rate_limit = True
        # Telegram's sending limits, enforced only when a test sets them.
        self.send_limits: SendLimits | None = None
        self.long_poll_cap = self.DEFAULT_LONG_POLL_CAP
        # Waiting requests from before see the change and return.
        self._generation += 1

    # -- bots and tokens -----------------------------------------------------

    def add_bot(
        self,
        token: str | None = None,
        *,
        bot_id: int | None = None,
        username: str | None = None,
        first_name: str | None = None,
        is_bot: bool = True,
        can_join_groups: bool = True,
        can_read_all_group_messages: bool = False,
        supports_inline_queries: bool = False,
    ) -> FakeBot:
        """Register a bot; generates a well-formed token unless one is given."""
        with self._lock:
            if token is not None:
                head = token.partition(":")[0]
                if not _TOKEN_SHAPE.fullmatch(token):
                    raise DoubleUsageError("add_bot needs a well-formed token")
                if bot_id is not None and bot_id != int(head):
                    raise DoubleUsageError("bot_id does not match the token")
                bot_id = int(head)
            if bot_id is None:
                bot_id = self._next_bot_id
            self._next_bot_id = max(self._next_bot_id, bot_id) + 1
            if bot_id in self._bots:
                raise DoubleUsageError(f"bot {bot_id} already exists")
            token = token or _new_token(bot_id)
            if token in self._tokens:
                raise DoubleUsageError("token already registered")
            bot = FakeBot(
                bot_id=bot_id,
                token=token,
                username=username or f"test{bot_id}_bot",
                first_name=first_name or "Test Bot",
                is_bot=is_bot,
                can_join_groups=can_join_groups,
                can_read_all_group_messages=can_read_all_group_messages,
                supports_inline_queries=supports_inline_queries,
            )
            self._bots[bot_id] = BotState(bot)
            self._tokens[token] = bot_id
            leaks.record("bot_token", token)
            return bot

    def rotate_token(self, bot: BotRef) -> str:
        """Give the bot a new token (as BotFather's /revoke does); the old one gets 401."""
        with self._lock:
            state = self._state(bot)
            if state.bot.token is not None:
                del self._tokens[state.bot.token]
            token = _new_token(state.bot.bot_id)
            state.bot.token = token
            self._tokens[token] = state.bot.bot_id
            leaks.record("bot_token", token)
            return token

    def revoke_token(self, token: str) -> None:
        """Make `token` answer 401 Unauthorized from now on."""
        with self._lock:
            bot_id = self._tokens.pop(token, None)
            if bot_id is None:
                raise DoubleUsageError("unknown token")
            self._bots[bot_id].bot.token = None

    # -- scripting -----------------------------------------------------------

    def fail_next(
        self,
        method: str,
        *,
        status: int,
        description: str | None = None,
        retry_after: int | None = None,
        migrate_to_chat_id: int | None = None,
        times: int = 1,
        bot: BotRef | None = None,
        raw_body: str | None = None,
    ) -> None:
        """Answer the next `times` valid calls of `method` with this error.

        The description defaults to Telegram's text for the status (429:
        `Too Many Requests: retry after N`, with retry_after defaulting to 1).
        `raw_body` sends that text instead of JSON, to imitate a broken proxy.
        """
        if status == 429 and retry_after is None:
            retry_after = 1
        if description is None:
            if status == 429:
                description = f"Too Many Requests: retry after {retry_after}"
            elif migrate_to_chat_id is not None:
                description = "Bad Request: group chat was upgraded to a supergroup chat"
            else:
                description = _DEFAULT_DESCRIPTIONS.get(status, f"Error {status}")
        with self._lock:
            bot_id = None if bot is None else self._state(bot).bot.bot_id
            self._failures.append(
                ScriptedFailure(
                    method.lower(),
                    status,
                    description,
                    retry_after,
                    migrate_to_chat_id,
                    raw_body,
                    bot_id,
                    times,
                )
            )

    def delay_next(
        self,
        method: str,
        seconds: float,
        *,
        times: int = 1,
        bot: BotRef | None = None,
        after_execute: bool = False,
    ) -> None:
        """Wait `seconds` before answering the next `times` calls of `method`.

        With `after_execute` the call takes effect first and only the answer is
        late, as when Telegram applied a change whose answer the caller never saw.
        """
        self._add_delay(method, seconds, times, bot, after_execute=after_execute)

    def hang_next(self, method: str, *, times: int = 1, bot: BotRef | None = None) -> None:
        """Never answer the next `times` calls of `method` (until reset/stop)."""
        self._add_delay(method, None, times, bot)

    def _add_delay(
        self,
        method: str,
        seconds: float | None,
        times: int,
        bot: BotRef | None,
        *,
        after_execute: bool = False,
    ) -> None:
        with self._lock:
            bot_id = None if bot is None else self._state(bot).bot.bot_id
            self._delays.append(
                ScriptedDelay(method.lower(), seconds, bot_id, times, after_execute)
            )

    def set_chat(
        self,
        bot: BotRef,
        chat_id: int | str,
        status: ChatStatus,
        *,
        migrate_to_chat_id: int | None = None,
    ) -> None:
        """Make sendMessage to `chat_id` succeed ("ok") or fail the way `status` says."""
        if status == "migrated" and migrate_to_chat_id is None:
            raise DoubleUsageError("status 'migrated' needs migrate_to_chat_id")
        with self._lock:
            state = self._state(bot)
            chat = methods.chat_for(state, chat_id)
            if chat is None:
                raise DoubleUsageError(f"{chat_id!r} cannot name a chat")
            chat.status = status
            chat.migrate_to_chat_id = migrate_to_chat_id

    def set_webhook_error(
        self,
        bot: BotRef,
        last_error_message: str,
        last_error_date: int | None = None,
        *,
        last_synchronization_error_date: int | None = None,
    ) -> None:
        """Pretend deliveries failed (date defaults to now on `clock`)."""
        with self._lock:
            state = self._state(bot)
            state.last_error_message = last_error_message
            state.last_error_date = (
                int(self.clock.time()) if last_error_date is None else last_error_date
            )
            if last_synchronization_error_date is not None:
                state.last_synchronization_error_date = last_synchronization_error_date

    def set_webhook_url(self, bot: BotRef, url: str, *, secret_token: str | None = None) -> None:
        """Another app took the webhook over: set it directly, skipping all checks."""
        leaks.record_webhook(url, secret_token)
        with self._lock:
            state = self._state(bot)
            if not url:
                methods.remove_webhook(state, drop_pending=False)
                return
            state.url = url
            state.secret_token = secret_token

    # -- updates -------------------------------------------------------------

    def queue_update(
        self, bot: BotRef, update: dict[str, Any], *, ignore_allowed_updates: bool = False
    ) -> int:
        """Queue a copy of `update` as pending; returns its update_id.

        An update without `update_id` gets the bot's next one. Telegram does not
        create updates the bot's allowed_updates exclude, so that raises
        DoubleUsageError unless `ignore_allowed_updates` (Telegram may still send
        a few right after allowed_updates changed).
        """
        queued = copy.deepcopy(update)
        kind = update_kind(queued)
        with self._lock:
            state = self._state(bot)
            if not ignore_allowed_updates and not state.allows(kind):
                raise DoubleUsageError(f"allowed_updates of this bot exclude {kind!r}")
            if "update_id" not in queued:
                queued = {"update_id": state.next_update_id, **queued}
            state.next_update_id = max(state.next_update_id, queued["update_id"] + 1)
            state.pending.append(queued)
            return int(queued["update_id"])

    def polls_started(self, bot: BotRef) -> int:
        """How many getUpdates calls for the bot have begun waiting (a readiness signal)."""
        with self._lock:
            return self._state(bot).poll_generation

    def pending_updates(self, bot: BotRef) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._state(bot).pending)

    async def deliver(
        self,
        bot: BotRef,
        update: dict[str, Any],
        *,
        client: httpx.AsyncClient,
        ignore_allowed_updates: bool = False,
    ) -> int:
        """Queue `update` and POST it to the bot's webhook as Telegram would.

        Returns the HTTP status (0 if no answer). See delivery.py.
        """
        return await delivery.deliver(
            self, bot, update, client=client, ignore_allowed_updates=ignore_allowed_updates
        )

    async def redeliver_pending(self, bot: BotRef, *, client: httpx.AsyncClient) -> list[int]:
        """Retry every pending update in order; returns the statuses."""
        return await delivery.redeliver_pending(self, bot, client=client)

    # -- inspection ----------------------------------------------------------

    def bot(self, ref: BotRef) -> FakeBot:
        with self._lock:
            return self._state(ref).bot

    def webhook(self, bot: BotRef) -> WebhookSnapshot:
        with self._lock:
            return self._state(bot).snapshot()

    @property
    def calls(self) -> list[RecordedCall]:
        """Every request received, oldest first (a copy of the list)."""
        with self._lock:
            return list(self._calls)

    def calls_for(self, method: str, *, bot: BotRef | None = None) -> list[RecordedCall]:
        """Calls of `method` (any letter case), optionally for one bot."""
        with self._lock:
            bot_id = None if bot is None else self._state(bot).bot.bot_id
            return [
                c
                for c in self._calls
                if c.method.lower() == method.lower() and (bot_id is None or c.bot_id == bot_id)
            ]

    def sent_messages(self, bot: BotRef, *, chat_id: int | None = None) -> list[SentMessageRecord]:
        with self._lock:
            sent = self._state(bot).sent
            return [m for m in sent if chat_id is None or m.chat_id == chat_id]

    @property
    def violations(self) -> list[Violation]:
        """Refused calls (a copy); the fixture fails the test if any remain."""
        with self._lock:
            return list(self._violations)

    def take_violations(self) -> list[Violation]:
        """Return and forget the violations, for tests that provoke them."""
        with self._lock:
            taken, self._violations = self._violations, []
            return taken

    # -- request processing (server thread) ----------------------------------

    def _state(self, ref: BotRef) -> BotState:
        bot_id = ref.bot_id if isinstance(ref, FakeBot) else ref
        state = self._bots.get(bot_id)
        if state is None:
            raise DoubleUsageError(f"unknown bot {bot_id}")
        return state

    def _context(self) -> Context:
        return Context(
            now_monotonic=self.clock.monotonic(),
            now_unix=int(self.clock.time()),
            enforce_set_webhook_rate_limit=self.enforce_set_webhook_rate_limit,
            update_kinds=self.update_kinds,
            send_limits=self.send_limits,
        )

    def _violate(self, method: str, description: str, params: dict[str, Any]) -> None:
        self._violations.append(Violation(method, description, dict(params)))

    def begin(
        self,
        token: str,
        method: str,
        params: dict[str, Any],
        *,
        encoding: str,
        http_method: str,
    ) -> Reply | Prepared:
        """Record the call, authenticate, validate; a Reply means answer now."""
        with self._lock:
            call = RecordedCall(
                method, token, dict(params), encoding, http_method, self.clock.monotonic()
            )
            self._calls.append(call)
            if method.lower() == "setwebhook":
                # What the service registers is secret: the leak check looks for it.
                leaks.record_webhook(params.get("url"), params.get("secret_token"))
            outcome = self._admit(call, token, method, params)
            if isinstance(outcome, Reply):
                call.status = outcome.status
            return outcome

    def _admit(
        self, call: RecordedCall, token: str, method: str, params: dict[str, Any]
    ) -> Reply | Prepared:
        if not _TOKEN_SHAPE.fullmatch(token):
            return methods.error(401, "Unauthorized: invalid token specified")
        bot_id = self._tokens.get(token)
        if bot_id is None:
            return methods.error(401, "Unauthorized")
        call.bot_id = bot_id
        spec = self.spec.method(method)
        if spec is None:
            self._violate(method, "unknown method", params)
            return methods.error(404, "Not Found")
        call.method = spec.name
        try:
            call.params = self.spec.check_params(spec, params)
        except ParamError as exc:
            self._violate(spec.name, exc.description, params)
            return methods.error(exc.status, exc.description)
        return Prepared(
            call,
            spec.name,
            bot_id,
            call.params,
            self._pop_delay(spec.name, bot_id),
            self._pop_failure(spec.name, bot_id),
            self._generation,
        )

    def reject(self, token: str, method: str, http_method: str, exc: ParamError) -> Reply:
        """Record a request whose parameters could not be decoded (a violation)."""
        with self._lock:
            self._calls.append(
                RecordedCall(
                    method,
                    token,
                    {},
                    "undecodable",
                    http_method,
                    self.clock.monotonic(),
                    None,
                    exc.status,
                )
            )
            self._violate(method, exc.description, {})
        return methods.error(exc.status, exc.description)

    def _pop_failure(self, method: str, bot_id: int) -> Reply | None:
        for scripted in self._failures:
            if scripted.method == method.lower() and scripted.bot_id in (None, bot_id):
                scripted.remaining -= 1
                if scripted.remaining <= 0:
                    self._failures.remove(scripted)
                if scripted.raw_body is not None:
                    return Reply(scripted.status, {}, raw_body=scripted.raw_body)
                return methods.error(
                    scripted.status,
                    scripted.description,
                    retry_after=scripted.retry_after if scripted.status == 429 else None,
                    migrate_to_chat_id=scripted.migrate_to_chat_id,
                )
        return None

    def _pop_delay(self, method: str, bot_id: int) -> ScriptedDelay | None:
        for scripted in self._delays:
            if scripted.method == method.lower() and scripted.bot_id in (None, bot_id):
                scripted.remaining -= 1
                if scripted.remaining <= 0:
                    self._delays.remove(scripted)
                return scripted
        return None

    def execute(self, prepared: Prepared) -> Reply:
        """Run a prepared call (not getUpdates) against the bot's state."""
        with self._lock:
            if self.is_stale(prepared):
                return methods.error(401, "Unauthorized")
            handler = methods.HANDLERS.get(prepared.method)
            if handler is None:
                description = f"{prepared.method} is not simulated by the test double"
                self._violate(prepared.method, description, prepared.params)
                return methods.error(500, f"Internal Server Error: {description}")
            try:
                return handler(self._bots[prepared.bot_id], prepared.params, self._context())
            except InvalidCall as exc:
                self._violate(prepared.method, exc.description, prepared.params)
                return methods.error(400, exc.description)

    def start_poll(self, prepared: Prepared) -> Reply | int:
        with self._lock:
            if self.is_stale(prepared):
                return methods.error(401, "Unauthorized")
            try:
                return methods.start_poll(
                    self._bots[prepared.bot_id], prepared.params, self._context()
                )
            except InvalidCall as exc:
                self._violate(prepared.method, exc.description, prepared.params)
                return methods.error(400, exc.description)

    def poll(self, prepared: Prepared, poll_generation: int) -> Reply | None:
        with self._lock:
            if self.is_stale(prepared):
                return methods.ok([])
            return methods.poll(self._bots[prepared.bot_id], prepared.params, poll_generation)

    def finish(self, prepared: Prepared, reply: Reply) -> None:
        with self._lock:
            prepared.call.status = reply.status

    def is_stale(self, prepared: Prepared) -> bool:
        """True once reset() or stop() happened after the call arrived."""
        return self._closing or prepared.generation != self._generation

    @contextmanager
    def locked_state(self, bot: BotRef) -> Iterator[BotState]:
        """The bot's live state under the lock, for delivery bookkeeping."""
        with self._lock:
            yield self._state(bot)


def _new_token(bot_id: int) -> str:
    # Real tokens: the bot id, ':', then 35 url-safe characters starting with "AA".
    return f"{bot_id}:AA{secrets.token_urlsafe(32)[:33]}"
