"""Conversation keys: which Telegram updates belong to the same conversation.

A conversation is identified by the chat id plus whatever Telegram uses to split one
chat id into independent conversations:

- ``business_connection_id``: a business account's chat is "independent from any
  potential bot chat which might share the same identifier" (Bot API, Message), so a
  business chat and the bot's own chat with the same id are different conversations.
- ``thread_id``: a forum topic (in a forum supergroup, or a private chat with topic
  mode enabled) is its own conversation. A plain reply thread in a group that is not
  a forum is *not*: Telegram also fills ``message_thread_id`` for replies there, but
  those threads are a presentation detail of one shared chat, and splitting them
  would scatter one group discussion over many conversations. The decision is made
  in :mod:`app.telegram.updates`; this module only encodes what it is given.
- ``direct_messages_topic_id``: in a channel's direct-messages chat every topic is a
  separate user talking to the channel.
- ``guest``: a guest message "belongs to the chat where the guest bot was summoned,
  which may not coincide with other existing bot chats sharing the same identifier"
  (Bot API, Message.guest_query_id), so it is kept apart like a business chat. Only
  the fact that the message is a guest message is recorded: the ``guest_query_id``
  itself is a short-lived capability and never becomes part of a key.

Canonical text form (the only form :func:`parse_conversation_key` accepts)::

    tg:<chat_id>[:b=<business_connection_id>][:t=<thread_id>][:d=<topic_id>][:g]

Integers are plain decimal (``-`` for negatives, no ``+``, no leading zeros, no
``-0``) within the signed 64-bit range, so every key fits the database's BIGINT
columns. The business connection id is an opaque non-empty string: characters
outside ``A-Z a-z 0-9 - . _ ~`` are percent-encoded as UTF-8 with upper-case hex,
and the unreserved ones are never encoded, so ``:`` and ``=`` cannot appear raw and
each key has exactly one spelling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "ConversationKey",
    "InvalidConversationKey",
    "parse_conversation_key",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_PREFIX = "tg:"

# At most 19 digits: enough for any int64, and it keeps int() away from Python's
# limit on very long digit strings (which would raise a bare ValueError).
_INT = r"(?:0|-?[1-9][0-9]{0,18})"
_CANONICAL = re.compile(
    rf"tg:(?P<chat>{_INT})"
    r"(?::b=(?P<b>[A-Za-z0-9._~%-]+))?"
    rf"(?::t=(?P<t>{_INT}))?"
    rf"(?::d=(?P<d>{_INT}))?"
    r"(?P<g>:g)?",
    re.ASCII,
)


class InvalidConversationKey(ValueError):
    """A conversation key, or the text of one, is not valid and canonical."""


def _check_int(name: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    # bool is an int subclass; True as a chat id is a bug, not chat 1.
    if type(value) is not int:
        raise InvalidConversationKey(f"{name} must be an int")
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidConversationKey(f"{name} is outside the signed 64-bit range")


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """The identity of one conversation; see the module docstring for the rules.

    Construction validates: ints (not bools) in the signed 64-bit range, and a
    business connection id that is ``None`` or a non-empty string encodable as
    UTF-8. Anything else raises :class:`InvalidConversationKey`, so every instance
    can be encoded.
    """

    chat_id: int
    business_connection_id: str | None = None
    thread_id: int | None = None
    direct_messages_topic_id: int | None = None
    guest: bool = False

    def __post_init__(self) -> None:
        _check_int("chat_id", self.chat_id, optional=False)
        _check_int("thread_id", self.thread_id, optional=True)
        _check_int("direct_messages_topic_id", self.direct_messages_topic_id, optional=True)
        bcid = self.business_connection_id
        if bcid is not None:
            # Telegram treats an empty id as "no business connection"; callers map
            # "" to None, so an empty string here would be a second spelling of None.
            if not isinstance(bcid, str) or not bcid:
                raise InvalidConversationKey("business_connection_id must be a non-empty str")
            try:
                bcid.encode("utf-8")
            except UnicodeEncodeError:
                # Lone surrogates (json.loads lets "\ud800" through) have no UTF-8
                # form, so they could not be percent-encoded.
                raise InvalidConversationKey("business_connection_id is not valid text") from None
        if type(self.guest) is not bool:
            raise InvalidConversationKey("guest must be a bool")

    def encode(self) -> str:
        """Return the one canonical text form of this key.

        ``parse_conversation_key(key.encode()) == key`` for every key, and two
        different keys never encode to the same text.
        """
        parts = [_PREFIX, str(self.chat_id)]
        if self.business_connection_id is not None:
            parts += (":b=", quote(self.business_connection_id, safe=""))
        if self.thread_id is not None:
            parts += (":t=", str(self.thread_id))
        if self.direct_messages_topic_id is not None:
            parts += (":d=", str(self.direct_messages_topic_id))
        if self.guest:
            parts.append(":g")
        return "".join(parts)


def parse_conversation_key(text: str) -> ConversationKey:
    """Parse the canonical text form produced by :meth:`ConversationKey.encode`.

    Accepts only canonical text: the result re-encodes to exactly ``text``. Leading
    zeros, ``+``, ``-0``, whitespace, reordered or repeated parts, empty parts,
    unknown tags, needless or lower-case percent escapes, invalid UTF-8 and values
    outside the 64-bit range all raise :class:`InvalidConversationKey`.
    """
    if not isinstance(text, str):
        raise InvalidConversationKey("a conversation key is a str")
    match = _CANONICAL.fullmatch(text)
    if match is None:
        raise InvalidConversationKey("not a canonical conversation key")
    bcid: str | None = None
    if (raw_bcid := match["b"]) is not None:
        try:
            bcid = unquote(raw_bcid, errors="strict")
        except UnicodeDecodeError:
            raise InvalidConversationKey("business connection id is not UTF-8") from None
    t, d = match["t"], match["d"]
    key = ConversationKey(
        chat_id=int(match["chat"]),
        business_connection_id=bcid,
        thread_id=None if t is None else int(t),
        direct_messages_topic_id=None if d is None else int(d),
        guest=match["g"] is not None,
    )
    # The pattern admits some non-canonical spellings the regex cannot rule out
    # cheaply ("%41" for "A", "%2f" for "%2F", a stray "%"); re-encoding is the
    # single test of canonical form that cannot drift from encode().
    if key.encode() != text:
        raise InvalidConversationKey("not a canonical conversation key")
    return key
