"""Telegram's sending limits, shared by every worker through the limiter (Redis).

Telegram's Bot FAQ: about 30 messages a second per bot across chats, 1 a second
per chat, 20 a minute per group or supergroup. Each is a GCRA key per connection
(hash-tagged on the connection, so a Redis Cluster keeps a bot's keys together).
Bursts are 1: a burst Telegram tolerates today may be a 429 tomorrow, and a 429 in
one chat must never slow the others. A message that may not go yet is given the
moment it may (`retry_after`) and waits in the database; nothing sleeps on it.

The connection's `daily_limit` (messages per UTC day) is ours, not Telegram's:
counted from the messages sent since midnight UTC (see `Dispatcher`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from app.ratelimit import RateLimit, RateLimiter

PER_BOT = RateLimit.per_second(30, burst=1)
PER_CHAT = RateLimit.per_second(1, burst=1)
PER_GROUP = RateLimit.per_minute(20, burst=1)


def is_group(chat_id: int | str) -> bool:
    """Groups and supergroups have negative ids (channels too, "-100..."); a
    "@channelusername" is a channel."""
    return isinstance(chat_id, str) or chat_id < 0


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    # Seconds until the message may go, when it may not now.
    retry_after: float = 0.0


class Pacer:
    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    async def admit(self, connection_id: uuid.UUID, chat_id: int | str) -> Verdict:
        """Take a send's place under every limit, or say when to try again.

        The narrowest limit first: a chat that may not receive yet does not spend
        the bot's budget, which the bot's other chats can use meanwhile.
        """
        keys = [(f"out:{{{connection_id}}}:chat:{chat_id}", PER_CHAT)]
        if is_group(chat_id):
            keys.append((f"out:{{{connection_id}}}:group:{chat_id}", PER_GROUP))
        keys.append((f"out:{{{connection_id}}}:bot", PER_BOT))
        for key, limit in keys:
            decision = await self._limiter.hit(key, limit)
            if not decision.allowed:
                return Verdict(False, decision.retry_after)
        return Verdict(True)
