"""Property tests of the conversation-key parser and constructor on garbage.

tests/telegram/test_conversation_keys.py checks the canonical form on valid keys
and on small mutations of their encodings; these feed the parser and the
constructor anything at all. The documented contract: `InvalidConversationKey`
(a `ValueError`) is the only exception either raises, and whatever is accepted
round-trips exactly.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.telegram.conversation_keys import (
    ConversationKey,
    InvalidConversationKey,
    parse_conversation_key,
)

FUZZ = settings(max_examples=400, derandomize=True, database=None)

# Text that looks like a key more often than uniform text does.
_KEY_ALPHABET = "tg:0123456789-+=%bdtgxAFaf~._ \n\u00e9\U0001f600"
key_like_text = st.text(alphabet=_KEY_ALPHABET, max_size=60) | st.builds(
    lambda rest: "tg:" + rest, st.text(alphabet=_KEY_ALPHABET, max_size=60)
)
any_text = st.text(alphabet=st.characters(codec=None), max_size=60)
anything: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.binary(max_size=20) | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=5,
)


@FUZZ
@given(key_like_text | any_text)
def test_garbage_text_parses_only_to_a_key_that_encodes_back_to_it(text: str) -> None:
    try:
        key = parse_conversation_key(text)
    except InvalidConversationKey:
        return
    assert key.encode() == text
    assert parse_conversation_key(key.encode()) == key


@FUZZ
@given(anything.filter(lambda value: not isinstance(value, str)))
def test_a_value_that_is_not_text_is_refused_with_the_documented_error(value: object) -> None:
    try:
        parse_conversation_key(value)  # type: ignore[arg-type]
    except InvalidConversationKey:
        return
    raise AssertionError(f"{value!r} was parsed")


int_like = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([True, False, 1.0, "1", None, 2**63, -(2**63) - 1])
    | anything
)


@FUZZ
@given(
    chat_id=int_like,
    business_connection_id=st.none() | any_text | anything,
    thread_id=int_like,
    direct_messages_topic_id=int_like,
    guest=st.booleans() | anything,
)
def test_construction_from_any_values_refuses_or_round_trips(
    chat_id: Any,
    business_connection_id: Any,
    thread_id: Any,
    direct_messages_topic_id: Any,
    guest: Any,
) -> None:
    try:
        key = ConversationKey(
            chat_id=chat_id,
            business_connection_id=business_connection_id,
            thread_id=thread_id,
            direct_messages_topic_id=direct_messages_topic_id,
            guest=guest,
        )
    except InvalidConversationKey:
        return
    assert parse_conversation_key(key.encode()) == key
