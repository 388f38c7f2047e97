"""Conversation keys: one canonical spelling per conversation, and nothing else parses."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from app.telegram.conversation_keys import (
    INT64_MAX,
    INT64_MIN,
    ConversationKey,
    InvalidConversationKey,
    parse_conversation_key,
)

int64s = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
# Business connection ids are opaque: include the key's own delimiters, '%',
# non-ASCII and astral characters, but not lone surrogates (no UTF-8 form).
business_ids = st.text(
    alphabet=st.characters(exclude_categories=["Cs"]),
    min_size=1,
    max_size=40,
) | st.sampled_from(["x:t=5", "%41", "%", "a:b=c:d=1:g", "tg:1", " ", "~._-"])

keys = st.builds(
    ConversationKey,
    chat_id=int64s,
    business_connection_id=st.none() | business_ids,
    thread_id=st.none() | int64s,
    direct_messages_topic_id=st.none() | int64s,
    guest=st.booleans(),
)


# --- canonical form ---------------------------------------------------------------


def test_plain_chat_key_is_prefix_and_decimal_id() -> None:
    assert ConversationKey(-1001293752024).encode() == "tg:-1001293752024"


def test_all_parts_appear_in_fixed_order() -> None:
    key = ConversationKey(
        chat_id=5,
        business_connection_id="biz",
        thread_id=7,
        direct_messages_topic_id=9,
        guest=True,
    )
    assert key.encode() == "tg:5:b=biz:t=7:d=9:g"


def test_business_connection_id_delimiters_are_percent_encoded() -> None:
    key = ConversationKey(5, business_connection_id="a:t=1%é")
    assert key.encode() == "tg:5:b=a%3At%3D1%25%C3%A9"
    assert parse_conversation_key(key.encode()) == key


@given(keys)
@example(ConversationKey(0))
@example(ConversationKey(INT64_MIN, "x:t=5", INT64_MAX, INT64_MIN, guest=True))
def test_encode_then_parse_round_trips(key: ConversationKey) -> None:
    text = key.encode()
    parsed = parse_conversation_key(text)
    assert parsed == key
    assert parsed.encode() == text


@given(keys, keys)
def test_different_keys_never_share_an_encoding(a: ConversationKey, b: ConversationKey) -> None:
    assert (a == b) == (a.encode() == b.encode())


# --- separation of conversations ---------------------------------------------------


def test_business_chat_and_regular_chat_with_same_id_differ() -> None:
    regular = ConversationKey(218485655)
    business = ConversationKey(218485655, business_connection_id="AbCd1234")
    assert regular.encode() != business.encode()
    assert regular != business


def test_forum_topic_differs_from_general_chat() -> None:
    general = ConversationKey(-1001847508954)
    topic = ConversationKey(-1001847508954, thread_id=4)
    other_topic = ConversationKey(-1001847508954, thread_id=5)
    assert len({general.encode(), topic.encode(), other_topic.encode()}) == 3


def test_direct_messages_topic_and_guest_chat_are_separate_conversations() -> None:
    encodings = {
        ConversationKey(-100123).encode(),
        ConversationKey(-100123, direct_messages_topic_id=77).encode(),
        ConversationKey(-100123, guest=True).encode(),
    }
    assert len(encodings) == 3


# --- construction is validated ------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"chat_id": True},
        {"chat_id": 1.0},
        {"chat_id": "1"},
        {"chat_id": INT64_MAX + 1},
        {"chat_id": INT64_MIN - 1},
        {"chat_id": 1, "thread_id": False},
        {"chat_id": 1, "thread_id": INT64_MAX + 1},
        {"chat_id": 1, "direct_messages_topic_id": "3"},
        {"chat_id": 1, "business_connection_id": ""},
        {"chat_id": 1, "business_connection_id": 5},
        {"chat_id": 1, "business_connection_id": "bad\ud800"},
        {"chat_id": 1, "guest": 1},
    ],
    ids=repr,
)
def test_invalid_fields_are_rejected_at_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidConversationKey):
        ConversationKey(**kwargs)  # type: ignore[arg-type]


def test_invalid_key_error_is_a_value_error() -> None:
    assert issubclass(InvalidConversationKey, ValueError)


# --- only the canonical form parses -------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tg:",
        "tg",
        "TG:7",
        "tg:007",
        "tg:+7",
        "tg:-0",
        "tg:-07",
        " tg:7",
        "tg:7 ",
        "tg:7\n",
        "tg: 7",
        "tg:7:",
        "tg:1_000",
        "tg:\u0667",  # Arabic-Indic digit seven: int() would accept it
        "tg:7.0",
        "tg:7e3",
        "tg:9223372036854775808",  # INT64_MAX + 1
        "tg:-9223372036854775809",  # INT64_MIN - 1
        "tg:" + "9" * 5000,  # longer than int()'s digit limit
        "tg:7:t=",
        "tg:7:b=",
        "tg:7:d=",
        "tg:7:t=04",
        "tg:7:t=-0",
        "tg:7:t=+4",
        "tg:7:t=4:t=4",
        "tg:7:t=4:b=x",  # reordered
        "tg:7:d=1:t=4",  # reordered
        "tg:7:g:t=4",  # reordered
        "tg:7:b=x:b=x",
        "tg:7:g:g",
        "tg:7:g=1",
        "tg:7:G",
        "tg:7:x=1",  # unknown tag
        "tg:7:T=4",
        "tg:7::t=4",
        "tg:7:b=%41",  # needless escape of 'A'
        "tg:7:b=%3a",  # lower-case hex
        "tg:7:b=%",
        "tg:7:b=%ZZ",
        "tg:7:b=%C3",  # truncated UTF-8
        "tg:7:b=%FF",  # invalid UTF-8
        "tg:7:b=a b",
        "tg:7:b=a:b",
        "tg:7:b=é",  # must be percent-encoded
    ],
    ids=repr,
)
def test_non_canonical_spellings_are_rejected(text: str) -> None:
    with pytest.raises(InvalidConversationKey):
        parse_conversation_key(text)


def test_non_string_input_is_rejected() -> None:
    with pytest.raises(InvalidConversationKey):
        parse_conversation_key(7)  # type: ignore[arg-type]


_MUTATION_ALPHABET = "0123456789-+:=%tbdgxAF é\n_"


@st.composite
def mutated_encodings(draw: st.DrawFn) -> tuple[ConversationKey, str]:
    key = draw(keys)
    text = key.encode()
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "swap"]))
        pos = draw(st.integers(min_value=0, max_value=max(len(text) - 1, 0)))
        char = draw(st.sampled_from(_MUTATION_ALPHABET))
        if op == "insert":
            text = text[:pos] + char + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + 1 :]
        elif op == "replace":
            text = text[:pos] + char + text[pos + 1 :]
        elif pos + 1 < len(text):
            text = text[:pos] + text[pos + 1] + text[pos] + text[pos + 2 :]
    return key, text


@given(mutated_encodings())
def test_mutated_text_parses_only_if_it_is_itself_canonical(
    case: tuple[ConversationKey, str],
) -> None:
    original, text = case
    try:
        parsed = parse_conversation_key(text)
    except InvalidConversationKey:
        return
    # Whatever parses is the canonical spelling of what it parsed to ...
    assert parsed.encode() == text
    # ... so a changed string can never pass for the original key.
    assert (parsed == original) == (text == original.encode())
