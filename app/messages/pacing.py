"""Telegram's sending limits, shared by every worker (Redis) or kept in process.

Limits (Telegram's Bot FAQ), each kept a few percent inside, because Telegram
counts arrivals and a send arrives a few milliseconds after it was admitted,
some sooner than others (`PacingLimits`):

- a chat: 1 message a second;
- a group, supergroup or channel: 20 a minute; with 1 a second per chat that is
  one every 3 seconds, kept as that spacing (no bursts a chat's members would see
  as a flood);
- a bot: 30 messages in any second, across its chats: a sliding window over its
  last 30 sends, so a bot may send 30 at once and then waits for the oldest to
  leave the window (a spacing of 1/30 s would waste the window whenever sends
  come in batches).

A 429 in one chat never slows the bot's other chats: every limit here is a
chat's own except the bot's window, and a message refused by the bot leaves its
chat's turn unused.

**Admitted, then confirmed.** Telegram counts a send when it arrives, which is
some milliseconds after the pacer admitted it (more when the worker is busy). So
an admitted send is counted from its admission, and once Telegram has answered,
`confirm` moves it to the moment of the answer (admission plus the time the
worker measured until the answer), which is after its arrival. A chat's next
send is admitted an interval after that, so it arrives an interval after the
previous one arrived whatever the delays in between; the bot's window counts the
answers' moments the same way. What is left to the margin is the network's
jitter on the way to Telegram, and the way back covers that (see `PacingLimits`).

**Places in a chat's schedule.** A message whose chat may not receive yet is
given a place in that chat's schedule: the first free moment after the places
already given, so a chat's backlog is spread over the coming seconds once,
instead of every waiting message coming back (and being refused again) at the
same moment. The message waits in the database until its place comes
(`next_attempt_at`) and remembers that it holds one (`holds_place`, stored on
the row). When it comes back it goes as soon as the chat's previous send is an
interval old; it is never given a second place behind later messages, so a
chat's messages keep their order. A message that holds no place never jumps
ahead of places already given.

Messages refused by the bot's window wait for the moment the window frees a
send for them: the k-th refused in a batch for the k-th oldest send to leave it.

Decisions for one connection are made in one step (one Lua script on Redis,
whose clock is Redis's `TIME`, so replicas with skewed clocks agree), in the
order the messages are given. All of a connection's keys share its hash tag, so
a Redis Cluster keeps them in one slot; one batch of several connections is one
pipelined round trip.

**The day's count.** The connection's `daily_limit` (messages per UTC day) is
ours, not Telegram's; the pacer counts each day's admitted sends per connection
with the other limits, and refuses the rest of the day (`limited_by="day"`, the
wait running to midnight UTC). A day the pacer has no count for yet (the first
batch of the day, or Redis lost its state) is answered `needs_count`: the caller
counts that day's sent messages in the database and asks again with `counted`,
which only fills in a count nobody has set meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from redis.exceptions import NoScriptError

from app.ratelimit import RateLimiterUnavailable
from app.ratelimit.base import LazySweeper
from app.redis_client import REDIS_FAILURES, RedisClient, is_cluster

LimitedBy = Literal["chat", "bot", "day"]
DAY_SECONDS = 86_400


@dataclass(frozen=True)
class PacingLimits:
    """Telegram's limits as this service keeps them (seconds, sends).

    Exactly Telegram's: no margin is needed, because a send is counted from the
    moment its answer came back (`confirm`), which is later than its arrival at
    Telegram by the answer's own way back. So a chat's next send, admitted an
    interval after that answer, arrives more than an interval after the previous
    one arrived, whatever the network's jitter; likewise for the bot's window.
    """

    chat_interval: float = 1.0
    group_interval: float = 3.0
    bot_sends: int = 30
    bot_window: float = 1.0

    def __post_init__(self) -> None:
        if min(self.chat_interval, self.group_interval, self.bot_window) <= 0:
            raise ValueError("intervals must be positive")
        if self.bot_sends < 1:
            raise ValueError("bot_sends must be at least 1")


@dataclass(frozen=True)
class PaceRequest:
    connection_id: uuid.UUID
    chat_id: int | str
    # The message already holds a place in its chat's schedule.
    holds_place: bool = False
    # The connection's messages per UTC day.
    daily_limit: int = 1_000_000_000


@dataclass(frozen=True)
class PaceVerdict:
    allowed: bool
    # Seconds until the message may go; 0 when allowed.
    wait: float = 0.0
    # The message holds a place in its chat's schedule (to be kept on its row).
    holds_place: bool = False
    limited_by: LimitedBy | None = None
    # When an allowed send was admitted, on the pacer's clock (for `confirm`).
    admitted_at: float = 0.0
    # Nothing was decided: the pacer has no count of the connection's day yet.
    needs_count: bool = False


@dataclass(frozen=True)
class Confirmation:
    """An admitted send Telegram answered `elapsed` seconds after its admission."""

    connection_id: uuid.UUID
    chat_id: int | str
    admitted_at: float
    elapsed: float


def is_group(chat_id: int | str) -> bool:
    """Groups and supergroups have negative ids (channels too, "-100..."); a
    "@channelusername" is a channel."""
    return isinstance(chat_id, str) or chat_id < 0


def utc_day(at: float) -> int:
    """The UTC day (days since the epoch) of a Unix time."""
    return int(at // DAY_SECONDS)


def seconds_to_midnight(at: float) -> float:
    """From a Unix time to the next midnight UTC."""
    return (utc_day(at) + 1) * DAY_SECONDS - at


class OutboundPacer(Protocol):
    async def admit(
        self, requests: Sequence[PaceRequest], counted: dict[uuid.UUID, int] | None = None
    ) -> list[PaceVerdict]:
        """One verdict per request, in order; an allowed send is counted at once.

        `counted`: messages sent today per connection, for those whose verdicts
        said `needs_count`. Raises `RateLimiterUnavailable` when the shared state
        cannot be reached.
        """
        ...

    async def confirm(self, confirmations: Sequence[Confirmation]) -> None:
        """Count these sends from the moment Telegram answered them (see the module
        docstring). Raises `RateLimiterUnavailable` like `admit`."""
        ...


def _by_connection(items: Sequence[PaceRequest | Confirmation]) -> dict[uuid.UUID, list[int]]:
    groups: dict[uuid.UUID, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(item.connection_id, []).append(index)
    return groups


# -- in process (the embedded default) ------------------------------------------------


@dataclass
class _Chat:
    # The moment the chat may receive again, and the first free place in its schedule.
    ready_at: float = 0.0
    next_place: float = 0.0


@dataclass
class _Bot:
    # Its recent sends, oldest first (at most `bot_sends` of them).
    sends: list[float] = field(default_factory=list)


class LocalOutboundPacer:
    """The same decisions as `RedisOutboundPacer`, in this process's memory.

    For one worker (the embedded default has one); several processes each keep
    their own counts. `clock` is monotonic seconds, injectable for tests. State is
    forgotten lazily once it no longer limits anything.
    """

    def __init__(
        self,
        limits: PacingLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._limits = limits or PacingLimits()
        self._clock = clock
        self._wall_clock = wall_clock
        self._chats: dict[tuple[uuid.UUID, str], _Chat] = {}
        self._bots: dict[uuid.UUID, _Bot] = {}
        # Admitted sends per (connection, UTC day).
        self._days: dict[tuple[uuid.UUID, int], int] = {}
        self._chat_sweeper = LazySweeper()
        self._bot_sweeper = LazySweeper()

    async def admit(
        self, requests: Sequence[PaceRequest], counted: dict[uuid.UUID, int] | None = None
    ) -> list[PaceVerdict]:
        now = self._clock()
        wall = self._wall_clock()
        day = utc_day(wall)
        for key in [key for key in self._days if key[1] != day]:
            del self._days[key]
        verdicts: list[PaceVerdict | None] = [None] * len(requests)
        for connection_id, indexes in _by_connection(requests).items():
            if (connection_id, day) not in self._days:
                if counted is None or connection_id not in counted:
                    for index in indexes:
                        verdicts[index] = PaceVerdict(False, needs_count=True)
                    continue
                self._days[(connection_id, day)] = counted[connection_id]
            decided = self._decide(
                now, seconds_to_midnight(wall), connection_id, [requests[i] for i in indexes], day
            )
            for index, verdict in zip(indexes, decided, strict=True):
                verdicts[index] = verdict
        limits = self._limits
        self._chat_sweeper.maybe_sweep(
            self._chats, lambda chat: max(chat.ready_at, chat.next_place) <= now
        )
        self._bot_sweeper.maybe_sweep(
            self._bots, lambda bot: not bot.sends or bot.sends[-1] <= now - limits.bot_window
        )
        return [verdict for verdict in verdicts if verdict is not None]

    def _decide(
        self,
        now: float,
        to_midnight: float,
        connection_id: uuid.UUID,
        requests: Sequence[PaceRequest],
        day: int,
    ) -> list[PaceVerdict]:
        limits = self._limits
        bot = self._bots.setdefault(connection_id, _Bot())
        used = self._days[(connection_id, day)]
        live = sorted(at for at in bot.sends if at > now - limits.bot_window)
        waiting_on_bot = 0
        verdicts = []
        for request in requests:
            chat = self._chats.setdefault((connection_id, str(request.chat_id)), _Chat())
            interval = limits.group_interval if is_group(request.chat_id) else limits.chat_interval
            if request.holds_place:
                if chat.ready_at > now:
                    verdicts.append(PaceVerdict(False, chat.ready_at - now, True, "chat"))
                    continue
            else:
                start = max(chat.ready_at, chat.next_place)
                if start > now:
                    chat.next_place = start + interval
                    verdicts.append(PaceVerdict(False, start - now, True, "chat"))
                    continue
            if used >= request.daily_limit:
                verdicts.append(PaceVerdict(False, to_midnight, request.holds_place, "day"))
                continue
            if len(live) < limits.bot_sends:
                used += 1
                live.append(now)
                chat.ready_at = now + interval
                chat.next_place = max(chat.next_place, chat.ready_at)
                verdicts.append(PaceVerdict(True, holds_place=request.holds_place, admitted_at=now))
                continue
            # The k-th message refused here waits for the k-th oldest send to leave
            # the window (a window later for each time round).
            oldest = live[len(live) - limits.bot_sends :]
            turn, slot = divmod(waiting_on_bot, limits.bot_sends)
            waiting_on_bot += 1
            free_at = oldest[slot] + limits.bot_window * (1 + turn)
            verdicts.append(PaceVerdict(False, free_at - now, request.holds_place, "bot"))
        bot.sends = live[-limits.bot_sends :]
        self._days[(connection_id, day)] = used
        return verdicts

    async def confirm(self, confirmations: Sequence[Confirmation]) -> None:
        limits = self._limits
        for item in confirmations:
            answered = item.admitted_at + item.elapsed
            chat = self._chats.setdefault((item.connection_id, str(item.chat_id)), _Chat())
            interval = limits.group_interval if is_group(item.chat_id) else limits.chat_interval
            chat.ready_at = max(chat.ready_at, answered + interval)
            chat.next_place = max(chat.next_place, chat.ready_at)
            bot = self._bots.setdefault(item.connection_id, _Bot())
            if item.admitted_at in bot.sends:
                bot.sends[bot.sends.index(item.admitted_at)] = answered
                bot.sends.sort()


# -- shared through Redis ---------------------------------------------------------------

MICROSECONDS = 1_000_000

# The same decisions as `LocalOutboundPacer._decide`, in microseconds of Redis TIME
# (every value stays below 2**53, so Lua's doubles compute exactly).
PACING_SCRIPT = """\
-- KEYS[1]     the bot's recent sends (a list, oldest first)
-- KEYS[2]     the connection's count of admitted sends today (UTC)
-- KEYS[3..n]  one chat key per message, in order (a hash: r ready_at, p next_place)
-- ARGV[1..4]  chat interval, group interval, bot sends, bot window (us, us, n, us)
-- ARGV[5]     the daily limit
-- ARGV[6]     the day's count from the database, or -1 if the caller has none
-- ARGV[6+i]   the i-th message's flags: 1 holds a place, 2 a group
-- Returns per message {allowed 0|1, wait_us, holds_place 0|1,
-- limited_by 0|1 chat|2 bot|3 day, admitted_at_us (allowed) or 0},
-- or {-1} when the day has no count and ARGV[6] is -1.
if redis.replicate_commands then
  redis.replicate_commands()
end
local chat_interval = tonumber(ARGV[1])
local group_interval = tonumber(ARGV[2])
local bot_sends = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local daily_limit = tonumber(ARGV[5])
local used = tonumber(redis.call('GET', KEYS[2]))
if not used then
  if tonumber(ARGV[6]) < 0 then
    return {-1}
  end
  used = tonumber(ARGV[6])
end
local used_before = used
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local to_midnight = (math.floor(tonumber(time[1]) / 86400) + 1) * 86400000000 - now

local live = {}
for _, value in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local at = tonumber(value)
  if at > now - window then
    live[#live + 1] = at
  end
end
-- Oldest first, whatever order confirmations left them in.
table.sort(live)
local sent = 0
local waiting_on_bot = 0
local chats = {}
local out = {}
for i = 3, #KEYS do
  local key = KEYS[i]
  local flags = tonumber(ARGV[4 + i])
  local holds = flags % 2 == 1
  local interval = chat_interval
  if flags >= 2 then
    interval = group_interval
  end
  local chat = chats[key]
  if not chat then
    local got = redis.call('HMGET', key, 'r', 'p')
    chat = {r = tonumber(got[1]) or 0, p = tonumber(got[2]) or 0, dirty = false}
    chats[key] = chat
  end
  local decided = false
  if holds then
    if chat.r > now then
      out[#out + 1] = {0, chat.r - now, 1, 1, 0}
      decided = true
    end
  else
    local start = math.max(chat.r, chat.p)
    if start > now then
      chat.p = start + interval
      chat.dirty = true
      out[#out + 1] = {0, start - now, 1, 1, 0}
      decided = true
    end
  end
  if not decided then
    local holds_flag = 0
    if holds then
      holds_flag = 1
    end
    if used >= daily_limit then
      out[#out + 1] = {0, to_midnight, holds_flag, 3, 0}
    elseif #live < bot_sends then
      used = used + 1
      live[#live + 1] = now
      sent = sent + 1
      chat.r = now + interval
      chat.p = math.max(chat.p, chat.r)
      chat.dirty = true
      out[#out + 1] = {1, 0, holds_flag, 0, now}
    else
      local turn = math.floor(waiting_on_bot / bot_sends)
      local slot = waiting_on_bot % bot_sends
      waiting_on_bot = waiting_on_bot + 1
      local free_at = live[#live - bot_sends + 1 + slot] + window * (1 + turn)
      out[#out + 1] = {0, free_at - now, holds_flag, 2, 0}
    end
  end
end
for key, chat in pairs(chats) do
  if chat.dirty then
    redis.call('HSET', key, 'r', string.format('%d', chat.r), 'p', string.format('%d', chat.p))
    redis.call('PEXPIRE', key, math.ceil((math.max(chat.r, chat.p) - now) / 1000) + 1000)
  end
end
if sent > 0 then
  redis.call('DEL', KEYS[1])
  for j = math.max(1, #live - bot_sends + 1), #live do
    redis.call('RPUSH', KEYS[1], string.format('%d', live[j]))
  end
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
end
if used ~= used_before or not redis.call('GET', KEYS[2]) then
  -- Kept a day past its own: a late confirmation or clock skew finds it still.
  local keep_ms = math.floor(to_midnight / 1000) + 86400000
  redis.call('SET', KEYS[2], string.format('%d', used), 'PX', keep_ms)
end
return out
"""

CONFIRM_SCRIPT = """\
-- KEYS[1]     the bot's recent sends (a list, oldest first)
-- KEYS[2..n]  one chat key per confirmation
-- ARGV[1..4]  chat interval, group interval, bot sends, bot window (us, us, n, us)
-- ARGV[5..]   per confirmation: admitted_at_us, answered_at_us, flags (2 a group)
local chat_interval = tonumber(ARGV[1])
local group_interval = tonumber(ARGV[2])
local bot_sends = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local stamps = {}
for _, value in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  stamps[#stamps + 1] = tonumber(value)
end
local moved = false
for i = 2, #KEYS do
  local base = 5 + (i - 2) * 3
  local admitted = tonumber(ARGV[base])
  local answered = tonumber(ARGV[base + 1])
  local interval = chat_interval
  if tonumber(ARGV[base + 2]) >= 2 then
    interval = group_interval
  end
  local got = redis.call('HMGET', KEYS[i], 'r', 'p')
  local r = tonumber(got[1]) or 0
  local p = tonumber(got[2]) or 0
  if answered + interval > r then
    r = answered + interval
    p = math.max(p, r)
    redis.call('HSET', KEYS[i], 'r', string.format('%d', r), 'p', string.format('%d', p))
    redis.call('PEXPIRE', KEYS[i], math.ceil((math.max(r, p) - answered) / 1000) + 2000)
  end
  for j = 1, #stamps do
    if stamps[j] == admitted then
      stamps[j] = answered
      moved = true
      break
    end
  end
end
if moved then
  table.sort(stamps)
  redis.call('DEL', KEYS[1])
  for j = math.max(1, #stamps - bot_sends + 1), #stamps do
    redis.call('RPUSH', KEYS[1], string.format('%d', stamps[j]))
  end
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 2000)
end
return #KEYS - 1
"""

# SHA1 is what EVALSHA names scripts by; it is not used for security here.
PACING_SCRIPT_SHA = hashlib.sha1(PACING_SCRIPT.encode(), usedforsecurity=False).hexdigest()
CONFIRM_SCRIPT_SHA = hashlib.sha1(CONFIRM_SCRIPT.encode(), usedforsecurity=False).hexdigest()

_LIMITED_BY: dict[int, LimitedBy | None] = {0: None, 1: "chat", 2: "bot", 3: "day"}


class RedisOutboundPacer:
    """Pacing shared by every worker through one Redis (or Redis Cluster).

    Keys: `{prefix}:{<connection id>}:bot` and `{prefix}:{<connection id>}:chat:<chat id>`,
    each expiring once it no longer limits anything. Any Redis failure raises
    `RateLimiterUnavailable`; nothing is ever admitted by default.
    """

    def __init__(
        self, redis: RedisClient, limits: PacingLimits | None = None, *, prefix: str = "out"
    ) -> None:
        self._redis = redis
        self._limits = limits or PacingLimits()
        self._prefix = prefix

    async def admit(
        self, requests: Sequence[PaceRequest], counted: dict[uuid.UUID, int] | None = None
    ) -> list[PaceVerdict]:
        if not requests:
            return []
        groups = list(_by_connection(requests).items())
        day = utc_day(time.time())
        calls = [
            self._call([requests[i] for i in indexes], day, (counted or {}).get(connection_id, -1))
            for connection_id, indexes in groups
        ]
        replies = await self._run(PACING_SCRIPT, PACING_SCRIPT_SHA, calls)
        verdicts: list[PaceVerdict | None] = [None] * len(requests)
        for (_, indexes), reply in zip(groups, replies, strict=True):
            if reply == [-1]:
                for index in indexes:
                    verdicts[index] = PaceVerdict(False, needs_count=True)
                continue
            if not isinstance(reply, list) or len(reply) != len(indexes):
                raise RateLimiterUnavailable("pacing store gave an unexpected reply")
            for index, item in zip(indexes, reply, strict=True):
                allowed, wait_us, holds, limited_by, admitted_us = (int(value) for value in item)
                verdicts[index] = PaceVerdict(
                    allowed == 1,
                    wait_us / MICROSECONDS,
                    holds == 1,
                    _LIMITED_BY[limited_by],
                    admitted_us / MICROSECONDS,
                )
        return [verdict for verdict in verdicts if verdict is not None]

    async def confirm(self, confirmations: Sequence[Confirmation]) -> None:
        if not confirmations:
            return
        calls = []
        for connection_id, indexes in _by_connection(confirmations).items():
            items = [confirmations[i] for i in indexes]
            keys = [self._bot_key(connection_id), *(self._chat_key(i) for i in items)]
            args = [*self._limit_args()]
            for item in items:
                admitted = round(item.admitted_at * MICROSECONDS)
                answered = admitted + max(0, round(item.elapsed * MICROSECONDS))
                args += [admitted, answered, 2 if is_group(item.chat_id) else 0]
            calls.append((keys, args))
        await self._run(CONFIRM_SCRIPT, CONFIRM_SCRIPT_SHA, calls)

    def _bot_key(self, connection_id: uuid.UUID) -> str:
        return f"{self._prefix}:{{{connection_id}}}:bot"

    def _chat_key(self, item: PaceRequest | Confirmation) -> str:
        return f"{self._prefix}:{{{item.connection_id}}}:chat:{item.chat_id}"

    def _limit_args(self) -> list[int]:
        limits = self._limits
        return [
            round(limits.chat_interval * MICROSECONDS),
            round(limits.group_interval * MICROSECONDS),
            limits.bot_sends,
            round(limits.bot_window * MICROSECONDS),
        ]

    def _call(
        self, requests: Sequence[PaceRequest], day: int, counted: int
    ) -> tuple[list[str], list[int]]:
        connection_id = requests[0].connection_id
        keys = [
            self._bot_key(connection_id),
            f"{self._prefix}:{{{connection_id}}}:day:{day}",
            *(self._chat_key(request) for request in requests),
        ]
        args = [
            *self._limit_args(),
            requests[0].daily_limit,
            counted,
            *((1 if r.holds_place else 0) + (2 if is_group(r.chat_id) else 0) for r in requests),
        ]
        return keys, args

    async def _run(
        self, script: str, sha: str, calls: list[tuple[list[str], list[int]]]
    ) -> list[object]:
        """Each call's reply, in order; any Redis failure is `RateLimiterUnavailable`."""
        replies: list[object] = [None] * len(calls)
        pending = list(range(len(calls)))
        try:
            for attempt in range(2):
                answers = await self._send(sha, [calls[index] for index in pending])
                missing = []
                for index, answer in zip(pending, answers, strict=True):
                    if isinstance(answer, NoScriptError):
                        missing.append(index)
                    elif isinstance(answer, Exception):
                        raise answer
                    else:
                        replies[index] = answer
                if not missing:
                    return replies
                # A server did not know the script (first use, restart, failover): the
                # calls it refused did not run; load it (on every primary of a
                # cluster), then run just those again.
                pending = missing
                if attempt == 0:
                    await self._redis.script_load(script)
        except REDIS_FAILURES as exc:
            # Only the type: redis-py messages can carry addresses, and a URL could
            # carry a password. The cause stays chained for debugging.
            raise RateLimiterUnavailable(
                f"pacing store unavailable ({type(exc).__name__})"
            ) from exc
        raise RateLimiterUnavailable("pacing script could not be loaded")

    async def _send(self, sha: str, calls: list[tuple[list[str], list[int]]]) -> list[object]:
        """One round of EVALSHA calls; an error reply comes back in its call's place."""
        if is_cluster(self._redis):
            # redis-py's cluster pipeline refuses EVALSHA; the calls go concurrently
            # instead, each to the primary of its connection's slot (its keys share
            # one hash tag).
            results = await asyncio.gather(
                *(self._redis.evalsha(sha, len(keys), *keys, *args) for keys, args in calls),
                return_exceptions=True,
            )
            for result in results:
                # A cancelled call is not an answer.
                if isinstance(result, BaseException) and not isinstance(result, Exception):
                    raise result
            return list(results)
        pipe = self._redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        answers: list[object] = await pipe.execute(raise_on_error=False)
        return answers
