"""Parse one Telegram Update, once, into the few facts the ingress pipeline stores.

The input is the dict ``json.loads`` produced from the webhook body (or one element
of a ``getUpdates`` result). Nothing is validated into models: the hot path reads a
handful of keys and the raw payload is stored as it came, so anything not extracted
here can be derived later from storage.

Contract of :func:`parse_update`:

- It raises :class:`InvalidUpdate` only when the payload is not a dict, or its
  ``update_id`` is not a non-negative ``int`` (``bool`` and ``float`` do not count)
  that fits a signed 64-bit column. Everything else is tolerated: unknown update
  kinds, missing optional fields, values of the wrong type and odd shapes yield
  ``None`` parts instead of errors, because a 4xx would make Telegram drop an
  update that a newer parser could still use.
- ``kind`` is the update's one field besides ``update_id``. A payload carrying
  several (which Telegram never sends) takes the first kind this module knows, else
  the first other field. A name that is not a short lower-case identifier becomes
  ``"unknown"``, as does a payload with no other field, so logs and the events
  table never receive arbitrary text as a type.
- Where the chat comes from, per kind: message-like kinds (``message``,
  ``edited_message``, ``channel_post``, ``edited_channel_post``,
  ``business_message``, ``edited_business_message``, ``guest_message``) and
  ``my_chat_member``, ``chat_member``, ``chat_join_request``, ``message_reaction``,
  ``message_reaction_count``, ``chat_boost``, ``removed_chat_boost``,
  ``deleted_business_messages`` carry ``.chat``; ``callback_query`` carries
  ``.message.chat`` (an inline callback has only ``inline_message_id``: no chat).
  The other kinds (``inline_query``, ``chosen_inline_result``, ``shipping_query``,
  ``pre_checkout_query``, ``purchased_paid_media``, ``poll``, ``poll_answer``,
  ``business_connection``, ``managed_bot``) have at most a sender. Unknown kinds
  yield neither: guessing at the shape of a type we have not seen could file an
  update under the wrong contact.
- The sender is ``from`` (``user`` for reactions, poll answers, business
  connections and managed bots; the booster for chat boosts), or the chat in
  ``sender_chat`` / ``actor_chat`` / ``voter_chat``. For messages ``sender_chat``
  wins over ``from``: when a message is sent on behalf of a chat, Telegram puts a
  placeholder user (e.g. GroupAnonymousBot) in ``from`` "for backward
  compatibility", and that placeholder is shared by every anonymous admin
  everywhere, so it must not become a contact.
- ``conversation`` (see :mod:`app.telegram.conversation_keys`) is built from the
  chat id plus, for messages, the business connection id, the forum topic
  (``message_thread_id`` when ``is_topic_message`` is true or the chat is a forum;
  a reply thread in an ordinary group stays in the group's conversation), the
  direct-messages topic id, and whether the message is a guest message. Updates
  that only name a chat (reactions, member changes, boosts) key the whole chat:
  they carry no topic. A malformed business connection id gives no conversation
  rather than falling back to the regular chat's key, which would merge a business
  chat into the bot's own chat.
- ``message`` is set for message-like kinds only (a callback's message is the bot's
  own message, not an inbound one).

Short-lived capability values (``guest_query_id``, callback and chosen-result
``inline_message_id``, and the ids of callback, inline, shipping, pre-checkout and
join-request queries) grant the right to answer on the user's behalf for a while.
They are never copied into a :class:`ParsedUpdate`, so they cannot reach a log line
through its repr or a conversation key; of ``guest_query_id`` only its presence is
used (to mark the conversation as a guest chat).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from app.telegram.conversation_keys import (
    INT64_MAX,
    INT64_MIN,
    ConversationKey,
    InvalidConversationKey,
)

__all__ = [
    "KNOWN_KINDS",
    "ChatRef",
    "InboundMessage",
    "InvalidUpdate",
    "ParsedUpdate",
    "SenderRef",
    "parse_update",
]


class InvalidUpdate(ValueError):
    """The payload is not an Update at all: not a dict, or no valid ``update_id``."""


@dataclass(frozen=True, slots=True)
class ChatRef:
    """The chat an update belongs to. ``type`` is ``"unknown"`` when Telegram omits it."""

    id: int
    type: str
    title: str | None = None
    username: str | None = None
    first_name: str | None = None
    last_name: str | None = None


@dataclass(frozen=True, slots=True)
class SenderRef:
    """Who caused the update: a user, or a chat acting as sender (``is_chat``).

    For a chat sender ``is_bot`` is ``None`` and ``title`` holds the chat's title
    (channels and groups have no first name).
    """

    id: int
    is_bot: bool | None
    username: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    is_chat: bool = False
    title: str | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One message received in a chat.

    ``text`` is the text or, for media, the caption. ``thread_id`` is
    ``message_thread_id`` exactly as Telegram sent it (also for reply threads in
    ordinary groups; whether it splits the conversation is decided by the
    conversation key). ``kind`` is the message's content field (``"text"``,
    ``"photo"``, ``"forum_topic_created"``, ...) or ``"unknown"``. ``date`` is 0 when
    the payload lacks a valid one.
    """

    message_id: int
    date: int
    text: str | None
    thread_id: int | None
    edited: bool
    kind: str
    # Telegram's time of the last edit (0 when unknown): orders concurrent edits.
    edit_date: int = 0


@dataclass(frozen=True, slots=True)
class ParsedUpdate:
    """What the ingress pipeline derives from one update; see the module docstring."""

    update_id: int
    kind: str
    chat: ChatRef | None
    sender: SenderRef | None
    conversation: ConversationKey | None
    message: InboundMessage | None


# --- small tolerant readers ------------------------------------------------------


def _int64(value: Any) -> int | None:
    # Exact type check: bool is an int subclass and a float id is a malformed id.
    if type(value) is int and INT64_MIN <= value <= INT64_MAX:
        return value
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _dict(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _chat(value: Any) -> ChatRef | None:
    chat = _dict(value)
    if chat is None:
        return None
    chat_id = _int64(chat.get("id"))
    if chat_id is None:
        return None
    return ChatRef(
        id=chat_id,
        type=_str(chat.get("type")) or "unknown",
        title=_str(chat.get("title")),
        username=_str(chat.get("username")),
        first_name=_str(chat.get("first_name")),
        last_name=_str(chat.get("last_name")),
    )


def _user_sender(value: Any) -> SenderRef | None:
    user = _dict(value)
    if user is None:
        return None
    user_id = _int64(user.get("id"))
    if user_id is None:
        return None
    is_bot = user.get("is_bot")
    return SenderRef(
        id=user_id,
        is_bot=is_bot if isinstance(is_bot, bool) else None,
        username=_str(user.get("username")),
        first_name=_str(user.get("first_name")),
        last_name=_str(user.get("last_name")),
    )


def _chat_sender(value: Any) -> SenderRef | None:
    chat = _chat(value)
    if chat is None:
        return None
    return SenderRef(
        id=chat.id,
        is_bot=None,
        username=chat.username,
        first_name=chat.first_name,
        last_name=chat.last_name,
        is_chat=True,
        title=chat.title,
    )


def _user_or_chat(obj: Mapping[str, Any], user_field: str, chat_field: str) -> SenderRef | None:
    return _user_sender(obj.get(user_field)) or _chat_sender(obj.get(chat_field))


def _chat_key(chat: ChatRef | None) -> ConversationKey | None:
    return None if chat is None else ConversationKey(chat.id)


# --- messages --------------------------------------------------------------------

# Content fields of Message in Bot API order. The order matters where Telegram
# sends two for one message: an animation also carries "document" and a venue also
# carries "location", and the first one listed is the real kind.
_CONTENT_FIELDS = (
    "text",
    "animation",
    "audio",
    "document",
    "live_photo",
    "paid_media",
    "photo",
    "sticker",
    "story",
    "video",
    "video_note",
    "voice",
    "checklist",
    "contact",
    "dice",
    "game",
    "poll",
    "venue",
    "location",
    "new_chat_members",
    "left_chat_member",
    "chat_owner_left",
    "chat_owner_changed",
    "new_chat_title",
    "new_chat_photo",
    "delete_chat_photo",
    "group_chat_created",
    "supergroup_chat_created",
    "channel_chat_created",
    "message_auto_delete_timer_changed",
    "migrate_to_chat_id",
    "migrate_from_chat_id",
    "pinned_message",
    "invoice",
    "successful_payment",
    "refunded_payment",
    "users_shared",
    "chat_shared",
    "gift",
    "unique_gift",
    "gift_upgrade_sent",
    "connected_website",
    "write_access_allowed",
    "passport_data",
    "proximity_alert_triggered",
    "boost_added",
    "chat_background_set",
    "checklist_tasks_done",
    "checklist_tasks_added",
    "direct_message_price_changed",
    "forum_topic_created",
    "forum_topic_edited",
    "forum_topic_closed",
    "forum_topic_reopened",
    "general_forum_topic_hidden",
    "general_forum_topic_unhidden",
    "giveaway_created",
    "giveaway",
    "giveaway_winners",
    "giveaway_completed",
    "managed_bot_created",
    "paid_message_price_changed",
    "poll_option_added",
    "poll_option_deleted",
    "suggested_post_approved",
    "suggested_post_approval_failed",
    "suggested_post_declined",
    "suggested_post_paid",
    "suggested_post_refunded",
    "video_chat_scheduled",
    "video_chat_started",
    "video_chat_ended",
    "video_chat_participants_invited",
    "web_app_data",
)


def _content_kind(msg: Mapping[str, Any]) -> str:
    for field in _CONTENT_FIELDS:
        if field in msg:
            return field
    return "unknown"


def _inbound(msg: Mapping[str, Any], *, edited: bool) -> InboundMessage | None:
    message_id = _int64(msg.get("message_id"))
    if message_id is None:
        # Without an id the message cannot be deduplicated or referred to; the raw
        # payload is still stored.
        return None
    text = msg.get("text")
    if not isinstance(text, str):
        text = _str(msg.get("caption"))
    return InboundMessage(
        message_id=message_id,
        date=_int64(msg.get("date")) or 0,
        text=text,
        thread_id=_int64(msg.get("message_thread_id")),
        edited=edited,
        kind=_content_kind(msg),
        edit_date=_int64(msg.get("edit_date")) or 0,
    )


def _message_sender(msg: Mapping[str, Any]) -> SenderRef | None:
    # sender_chat first: see the module docstring on placeholder users in "from".
    return _chat_sender(msg.get("sender_chat")) or _user_sender(msg.get("from"))


def _message_conversation(
    msg: Mapping[str, Any], chat: ChatRef | None, *, guest_kind: bool
) -> ConversationKey | None:
    if chat is None:
        return None
    bcid = msg.get("business_connection_id")
    if bcid == "":
        bcid = None  # Telegram: only a non-empty id marks a business chat.
    elif bcid is not None and not isinstance(bcid, str):
        return None

    thread_id = None
    raw_thread = _int64(msg.get("message_thread_id"))
    if raw_thread is not None:
        raw_chat = _dict(msg.get("chat"))
        is_forum = raw_chat is not None and raw_chat.get("is_forum") is True
        if msg.get("is_topic_message") is True or is_forum:
            thread_id = raw_thread

    topic = _dict(msg.get("direct_messages_topic"))
    topic_id = None if topic is None else _int64(topic.get("topic_id"))

    # Only the presence of a guest query id is used, never its value.
    guest = guest_kind or bool(msg.get("guest_query_id"))
    try:
        return ConversationKey(
            chat_id=chat.id,
            business_connection_id=bcid,
            thread_id=thread_id,
            direct_messages_topic_id=topic_id,
            guest=guest,
        )
    except InvalidConversationKey:
        # e.g. a business connection id with lone surrogates: no safe key exists,
        # and the regular chat's key would be the wrong conversation.
        return None


# --- per-kind extraction ---------------------------------------------------------

_Parts = tuple[ChatRef | None, SenderRef | None, ConversationKey | None, InboundMessage | None]
_NOTHING: _Parts = (None, None, None, None)


def _message_like(*, edited: bool, guest: bool = False) -> Callable[[dict[str, Any]], _Parts]:
    def extract(msg: dict[str, Any]) -> _Parts:
        chat = _chat(msg.get("chat"))
        return (
            chat,
            _message_sender(msg),
            _message_conversation(msg, chat, guest_kind=guest),
            _inbound(msg, edited=edited),
        )

    return extract


def _callback_query(obj: dict[str, Any]) -> _Parts:
    # inline_message_id (an inline callback) and the query id are capabilities and
    # identify no chat: only a callback on a real message has a conversation.
    sender = _user_sender(obj.get("from"))
    msg = _dict(obj.get("message"))
    if msg is None:
        return None, sender, None, None
    chat = _chat(msg.get("chat"))
    return chat, sender, _message_conversation(msg, chat, guest_kind=False), None


def _chat_and_from(obj: dict[str, Any]) -> _Parts:
    chat = _chat(obj.get("chat"))
    return chat, _user_sender(obj.get("from")), _chat_key(chat), None


def _reaction(obj: dict[str, Any]) -> _Parts:
    chat = _chat(obj.get("chat"))
    return chat, _user_or_chat(obj, "user", "actor_chat"), _chat_key(chat), None


def _chat_only(obj: dict[str, Any]) -> _Parts:
    chat = _chat(obj.get("chat"))
    return chat, None, _chat_key(chat), None


def _boost_sender(source: Any) -> SenderRef | None:
    src = _dict(source)
    return None if src is None else _user_sender(src.get("user"))


def _chat_boost(obj: dict[str, Any]) -> _Parts:
    chat = _chat(obj.get("chat"))
    boost = _dict(obj.get("boost"))
    sender = None if boost is None else _boost_sender(boost.get("source"))
    return chat, sender, _chat_key(chat), None


def _removed_chat_boost(obj: dict[str, Any]) -> _Parts:
    chat = _chat(obj.get("chat"))
    return chat, _boost_sender(obj.get("source")), _chat_key(chat), None


def _deleted_business_messages(obj: dict[str, Any]) -> _Parts:
    chat = _chat(obj.get("chat"))
    # Same key as the business messages themselves, so deletions land in the
    # business conversation and never in the bot's own chat with that id.
    return chat, None, _message_conversation(obj, chat, guest_kind=False), None


def _from_only(obj: dict[str, Any]) -> _Parts:
    return None, _user_sender(obj.get("from")), None, None


def _user_only(obj: dict[str, Any]) -> _Parts:
    return None, _user_sender(obj.get("user")), None, None


def _poll_answer(obj: dict[str, Any]) -> _Parts:
    return None, _user_or_chat(obj, "user", "voter_chat"), None, None


def _nothing(obj: dict[str, Any]) -> _Parts:
    return _NOTHING


# Every field of Update in Bot API 10.1 besides update_id.
_EXTRACTORS: dict[str, Callable[[dict[str, Any]], _Parts]] = {
    "message": _message_like(edited=False),
    "edited_message": _message_like(edited=True),
    "channel_post": _message_like(edited=False),
    "edited_channel_post": _message_like(edited=True),
    "business_connection": _user_only,
    "business_message": _message_like(edited=False),
    "edited_business_message": _message_like(edited=True),
    "deleted_business_messages": _deleted_business_messages,
    "guest_message": _message_like(edited=False, guest=True),
    "message_reaction": _reaction,
    "message_reaction_count": _chat_only,
    "inline_query": _from_only,
    "chosen_inline_result": _from_only,
    "callback_query": _callback_query,
    "shipping_query": _from_only,
    "pre_checkout_query": _from_only,
    "purchased_paid_media": _from_only,
    "poll": _nothing,
    "poll_answer": _poll_answer,
    "my_chat_member": _chat_and_from,
    "chat_member": _chat_and_from,
    "chat_join_request": _chat_and_from,
    "chat_boost": _chat_boost,
    "removed_chat_boost": _removed_chat_boost,
    "managed_bot": _user_only,
}

KNOWN_KINDS: frozenset[str] = frozenset(_EXTRACTORS)
"""Update kinds this module extracts a chat, sender or message from."""

_KIND_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}", re.ASCII)


def _kind(payload: Mapping[str, Any]) -> str:
    other: str | None = None
    for field in payload:
        if field == "update_id":
            continue
        if field in _EXTRACTORS:
            return field
        if other is None:
            other = field
    if other is not None and _KIND_NAME.fullmatch(other):
        return other
    return "unknown"


def parse_update(payload: dict[str, Any]) -> ParsedUpdate:
    """Parse a decoded Update; the contract is in the module docstring.

    Raises :class:`InvalidUpdate` only for a non-dict payload or a missing,
    negative, non-int or out-of-range ``update_id``.
    """
    if not isinstance(payload, dict):
        raise InvalidUpdate("an update is a JSON object")
    update_id = payload.get("update_id")
    # The upper bound keeps the value storable in a BIGINT column; Telegram's ids
    # are far below it, so only a forged payload could exceed it.
    if type(update_id) is not int or not 0 <= update_id <= INT64_MAX:
        raise InvalidUpdate("update_id must be a non-negative integer")

    kind = _kind(payload)
    extract = _EXTRACTORS.get(kind)
    body = _dict(payload.get(kind))
    if extract is None or body is None:
        return ParsedUpdate(update_id, kind, None, None, None, None)
    chat, sender, conversation, message = extract(body)
    return ParsedUpdate(update_id, kind, chat, sender, conversation, message)
