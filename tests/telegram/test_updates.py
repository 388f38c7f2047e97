"""Parsing real Telegram updates once, tolerantly, without leaking capabilities."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.telegram.conversation_keys import ConversationKey, parse_conversation_key
from app.telegram.updates import (
    KNOWN_KINDS,
    ChatRef,
    InboundMessage,
    InvalidUpdate,
    ParsedUpdate,
    SenderRef,
    parse_update,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "telegram"
SAMPLE_FILES = sorted((DATA / "updates").glob("*.json"))
MESSAGE_LIKE = (
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_message",
    "edited_business_message",
    "guest_message",
)


def load(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((DATA / "updates" / name).read_text("utf-8"))
    return payload


def expected_kind(path: Path) -> str:
    # The sample files are named NN_<kind>.json, an independent record of the kind.
    return path.stem.split("_", 1)[1]


def rewrap(name: str, kind: str, **message_fields: Any) -> dict[str, Any]:
    """A sample message update re-filed under another kind, with extra fields."""
    payload = load(name)
    message = payload.pop("message")
    message.update(message_fields)
    return {"update_id": payload["update_id"], kind: message}


def test_all_45_samples_are_present() -> None:
    assert len(SAMPLE_FILES) == 45


# --- every sample parses -------------------------------------------------------------


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_every_sample_parses_with_its_kind_id_and_chat(path: Path) -> None:
    payload = json.loads(path.read_text("utf-8"))
    parsed = parse_update(payload)

    assert parsed.kind == expected_kind(path)
    assert parsed.update_id == payload["update_id"]

    body = payload[parsed.kind]
    raw_chat = body.get("chat")
    if raw_chat is None:
        assert parsed.chat is None
        assert parsed.conversation is None
    else:
        assert parsed.chat is not None
        assert parsed.chat.id == raw_chat["id"]
        assert parsed.chat.type == raw_chat["type"]
        assert parsed.conversation is not None
        assert parsed.conversation.chat_id == raw_chat["id"]
        assert parse_conversation_key(parsed.conversation.encode()) == parsed.conversation

    if parsed.kind in MESSAGE_LIKE:
        assert parsed.message is not None
        assert parsed.message.message_id == body["message_id"]
        assert parsed.message.date == body["date"]
        assert parsed.message.edited is False
    else:
        assert parsed.message is None


# --- specific samples ----------------------------------------------------------------


def test_private_text_message() -> None:
    parsed = parse_update(load("01_message.json"))
    assert parsed == ParsedUpdate(
        update_id=892252934,
        kind="message",
        chat=ChatRef(
            id=218485655,
            type="private",
            title=None,
            username="WaffleLapkin",
            first_name="Waffle",
            last_name=None,
        ),
        sender=SenderRef(
            id=218485655,
            is_bot=False,
            username="WaffleLapkin",
            first_name="Waffle",
            last_name=None,
            is_chat=False,
        ),
        conversation=ConversationKey(218485655),
        message=InboundMessage(
            message_id=6557,
            date=1569518342,
            text="hello there",
            thread_id=None,
            edited=False,
            kind="text",
        ),
    )
    assert parsed.conversation is not None
    assert parsed.conversation.encode() == "tg:218485655"


def test_forum_topic_message_is_keyed_by_its_topic() -> None:
    parsed = parse_update(load("28_message.json"))
    assert parsed.conversation == ConversationKey(-1001847508954, thread_id=4)
    assert parsed.conversation.encode() == "tg:-1001847508954:t=4"
    assert parsed.message is not None
    assert parsed.message.thread_id == 4
    assert parsed.message.text == "blah"
    assert parsed.sender is not None
    assert parsed.sender.username == "wafflelapkin"


def test_forum_topic_creation_service_message_is_in_the_topic() -> None:
    parsed = parse_update(load("27_message.json"))
    assert parsed.conversation == ConversationKey(-1001847508954, thread_id=4)
    assert parsed.message is not None
    assert parsed.message.kind == "forum_topic_created"


def test_forum_topic_key_differs_from_the_forum_general_key() -> None:
    in_topic = parse_update(load("28_message.json"))
    general = load("28_message.json")
    for field in ("message_thread_id", "is_topic_message", "reply_to_message"):
        del general["message"][field]
    in_general = parse_update(general)
    assert in_general.conversation == ConversationKey(-1001847508954)
    assert in_topic.conversation is not None
    assert in_topic.conversation.encode() != in_general.conversation.encode()


def test_reply_thread_in_ordinary_supergroup_stays_in_the_group_conversation() -> None:
    parsed = parse_update(load("03_message.json"))
    assert parsed.conversation == ConversationKey(-1001293752024)
    assert parsed.conversation == parse_update(load("02_message.json")).conversation
    # The raw thread id is kept on the message for replies, just not in the key.
    assert parsed.message is not None
    assert parsed.message.thread_id == 134545


@pytest.mark.parametrize(
    ("is_topic_message", "is_forum", "keyed_by_thread"),
    [(True, False, True), (False, True, True), (None, None, False), (False, False, False)],
)
def test_thread_id_splits_the_conversation_only_for_topics(
    is_topic_message: bool | None, is_forum: bool | None, keyed_by_thread: bool
) -> None:
    payload = load("18_message.json")
    payload["message"]["message_thread_id"] = 31
    if is_topic_message is not None:
        payload["message"]["is_topic_message"] = is_topic_message
    if is_forum is not None:
        payload["message"]["chat"]["is_forum"] = is_forum
    parsed = parse_update(payload)
    assert parsed.conversation is not None
    assert parsed.conversation.thread_id == (31 if keyed_by_thread else None)


def test_channel_post_has_the_channel_as_chat_and_sender() -> None:
    parsed = parse_update(rewrap("31_message.json", "channel_post"))
    assert parsed.kind == "channel_post"
    assert parsed.chat == ChatRef(id=-1002236736395, type="channel", title="Test")
    assert parsed.sender == SenderRef(id=-1002236736395, is_bot=None, is_chat=True, title="Test")
    assert parsed.conversation == ConversationKey(-1002236736395)
    assert parsed.message is not None
    assert parsed.message.kind == "giveaway"


def test_anonymous_admin_is_the_group_not_the_placeholder_bot() -> None:
    parsed = parse_update(load("21_message.json"))
    assert parsed.sender is not None
    assert parsed.sender.is_chat is True
    assert parsed.sender.id == -1001160242915
    assert parsed.sender.id != load("21_message.json")["message"]["from"]["id"]


def test_business_message_is_keyed_apart_from_the_regular_chat() -> None:
    regular = parse_update(load("01_message.json"))
    business = parse_update(
        rewrap("01_message.json", "business_message", business_connection_id="Bc_7:x/y")
    )
    assert business.kind == "business_message"
    assert business.conversation == ConversationKey(218485655, business_connection_id="Bc_7:x/y")
    assert business.conversation.encode() == "tg:218485655:b=Bc_7%3Ax%2Fy"
    assert regular.conversation is not None
    assert regular.conversation.encode() != business.conversation.encode()
    assert business.chat == regular.chat


def test_empty_business_connection_id_means_the_regular_chat() -> None:
    parsed = parse_update(rewrap("01_message.json", "message", business_connection_id=""))
    assert parsed.conversation == ConversationKey(218485655)


@pytest.mark.parametrize("bad_id", [17, ["x"], "bad\ud800"], ids=repr)
def test_malformed_business_connection_id_gives_no_conversation(bad_id: object) -> None:
    # Falling back to the regular key would merge a business chat into the bot's chat.
    parsed = parse_update(
        rewrap("01_message.json", "business_message", business_connection_id=bad_id)
    )
    assert parsed.conversation is None
    assert parsed.chat is not None
    assert parsed.message is not None


def test_deleted_business_messages_use_the_business_key() -> None:
    payload = {
        "update_id": 5,
        "deleted_business_messages": {
            "business_connection_id": "conn1",
            "chat": {"id": 42, "type": "private", "first_name": "Ann"},
            "message_ids": [1, 2],
        },
    }
    parsed = parse_update(payload)
    assert parsed.conversation == ConversationKey(42, business_connection_id="conn1")
    assert parsed.sender is None
    assert parsed.message is None


@pytest.mark.parametrize(
    ("kind", "edited"),
    [
        ("edited_message", True),
        ("edited_channel_post", True),
        ("edited_business_message", True),
        ("channel_post", False),
        ("business_message", False),
    ],
)
def test_edited_kinds_mark_the_message_edited(kind: str, edited: bool) -> None:
    parsed = parse_update(rewrap("18_message.json", kind, edit_date=1568290000))
    assert parsed.message is not None
    assert parsed.message.edited is edited
    assert parsed.message.text == "Лол кек 😂"


def test_caption_is_the_text_of_a_media_message() -> None:
    parsed = parse_update(load("26_message.json"))
    assert parsed.message is not None
    assert parsed.message.kind == "photo"
    assert parsed.message.text == "www.example.com"


def test_content_kind_prefers_the_specific_field_telegram_duplicates() -> None:
    venue = parse_update(load("24_message.json"))  # carries "location" too
    animation = parse_update(rewrap("18_message.json", "message", animation={}, document={}))
    assert venue.message is not None
    assert venue.message.kind == "venue"
    assert animation.message is not None
    assert animation.message.kind == "text"  # text is listed first
    no_text = rewrap("19_message.json", "message", animation={}, document={})
    del no_text["message"]["sticker"]
    parsed = parse_update(no_text)
    assert parsed.message is not None
    assert parsed.message.kind == "animation"


def test_message_without_content_field_has_unknown_kind() -> None:
    parsed = parse_update(load("29_message.json"))
    assert parsed.message is not None
    assert parsed.message.kind == "unknown"
    assert parsed.sender is None


def test_direct_messages_topic_is_its_own_conversation() -> None:
    payload = rewrap(
        "31_message.json",
        "message",
        direct_messages_topic={"topic_id": 9001, "user": {"id": 5, "is_bot": False}},
    )
    payload["message"]["chat"]["is_direct_messages"] = True
    parsed = parse_update(payload)
    assert parsed.conversation == ConversationKey(-1002236736395, direct_messages_topic_id=9001)
    assert parsed.conversation.encode() == "tg:-1002236736395:d=9001"


def test_reaction_by_user() -> None:
    parsed = parse_update(load("09_message_reaction.json"))
    assert parsed.kind == "message_reaction"
    assert parsed.chat == ChatRef(id=-1002184233434, type="supergroup", title="Test")
    assert parsed.sender == SenderRef(
        id=1459074222, is_bot=False, username="shdwchn10", first_name="shadowchain"
    )
    assert parsed.conversation == ConversationKey(-1002184233434)
    assert parsed.message is None


def test_anonymous_reaction_is_by_the_actor_chat() -> None:
    parsed = parse_update(load("10_message_reaction.json"))
    assert parsed.sender == SenderRef(id=-1002199793788, is_bot=None, is_chat=True, title="тест")


def test_chat_boost_is_in_the_channel_and_by_the_booster() -> None:
    parsed = parse_update(load("12_chat_boost.json"))
    assert parsed.kind == "chat_boost"
    assert parsed.chat == ChatRef(id=-1002236736395, type="channel", title="Test")
    assert parsed.conversation == ConversationKey(-1002236736395)
    assert parsed.sender is not None
    assert parsed.sender.id == 1459074222
    removed = parse_update(load("13_removed_chat_boost.json"))
    assert removed.kind == "removed_chat_boost"
    assert removed.sender == parsed.sender
    assert removed.conversation == parsed.conversation


def test_my_chat_member() -> None:
    parsed = parse_update(load("08_my_chat_member.json"))
    assert parsed.update_id == 0
    assert parsed.kind == "my_chat_member"
    assert parsed.chat == ChatRef(
        id=0, type="private", username="UN", first_name="FN", last_name="LN"
    )
    assert parsed.sender == SenderRef(
        id=0, is_bot=False, username="UN", first_name="FN", last_name="LN"
    )
    assert parsed.conversation == ConversationKey(0)
    assert parsed.message is None


def test_unknown_update_kind_has_no_chat_and_does_not_fail() -> None:
    parsed = parse_update(load("07_new_update_kind.json"))
    assert parsed == ParsedUpdate(
        update_id=1,
        kind="new_update_kind",
        chat=None,
        sender=None,
        conversation=None,
        message=None,
    )


def test_purchased_paid_media_has_a_sender_but_no_chat() -> None:
    parsed = parse_update(load("14_purchased_paid_media.json"))
    assert parsed.kind == "purchased_paid_media"
    assert parsed.chat is None
    assert parsed.conversation is None
    assert parsed.sender is not None
    assert parsed.sender.id == 408258968


def test_callback_query_on_a_message_is_in_that_message_chat() -> None:
    message = load("28_message.json")["message"]
    payload = {
        "update_id": 10,
        "callback_query": {
            "id": "4382bfdwdsb323b2d9",
            "from": {"id": 77, "is_bot": False, "first_name": "Zed"},
            "message": message,
            "chat_instance": "-123",
            "data": "yes",
        },
    }
    parsed = parse_update(payload)
    assert parsed.chat is not None
    assert parsed.chat.id == -1001847508954
    assert parsed.conversation == ConversationKey(-1001847508954, thread_id=4)
    assert parsed.sender is not None
    assert parsed.sender.id == 77
    # A callback is an action on the bot's own message, not a new inbound message.
    assert parsed.message is None


def test_guest_message_is_a_separate_conversation() -> None:
    regular = parse_update(load("18_message.json"))
    guest = parse_update(rewrap("18_message.json", "guest_message", guest_query_id="q"))
    assert guest.kind == "guest_message"
    assert guest.conversation == ConversationKey(250918540, guest=True)
    assert regular.conversation is not None
    assert guest.conversation.encode() != regular.conversation.encode()
    assert guest.message is not None
    assert guest.message.text == "Лол кек 😂"


def test_poll_answer_by_anonymous_voter_chat() -> None:
    payload = {
        "update_id": 3,
        "poll_answer": {
            "poll_id": "p",
            "voter_chat": {"id": -100777, "type": "channel", "title": "News"},
            "option_ids": [0],
            "option_persistent_ids": ["a"],
        },
    }
    parsed = parse_update(payload)
    assert parsed.sender == SenderRef(id=-100777, is_bot=None, is_chat=True, title="News")
    assert parsed.chat is None


# --- kinds ---------------------------------------------------------------------------


def test_every_update_kind_in_the_bot_api_is_known() -> None:
    api = json.loads((DATA / "api.json").read_text("utf-8"))
    fields = {f["name"] for f in api["types"]["Update"]["fields"]}
    assert fields - {"update_id"} == KNOWN_KINDS


def test_content_fields_are_real_message_fields() -> None:
    from app.telegram.updates import _CONTENT_FIELDS

    api = json.loads((DATA / "api.json").read_text("utf-8"))
    message_fields = [f["name"] for f in api["types"]["Message"]["fields"]]
    assert set(_CONTENT_FIELDS) <= set(message_fields)
    # Bot API order, which resolves animation/document and venue/location.
    assert sorted(_CONTENT_FIELDS, key=message_fields.index) == list(_CONTENT_FIELDS)


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        ({"update_id": 1}, "unknown"),
        ({"update_id": 1, "Not A Kind!": {}}, "unknown"),
        ({"update_id": 1, "x" * 65: {}}, "unknown"),
        ({"update_id": 1, "future_kind": {}, "message": {}}, "message"),
        ({"message": {}, "update_id": 1, "poll": {}}, "message"),
        ({"update_id": 1, "future_kind2": 5}, "future_kind2"),
    ],
    ids=repr,
)
def test_an_update_kind_is_its_known_field_else_its_unknown_one(
    payload: dict[str, Any], kind: str
) -> None:
    assert parse_update(payload).kind == kind


# --- update_id and payload shape -----------------------------------------------------


@pytest.mark.parametrize(
    "update_id",
    [-1, "7", 7.0, True, False, None, 2**63, [7], {"id": 7}],
    ids=repr,
)
def test_bad_update_id_is_invalid(update_id: object) -> None:
    with pytest.raises(InvalidUpdate):
        parse_update({"update_id": update_id, "message": load("01_message.json")["message"]})


def test_missing_update_id_is_invalid() -> None:
    payload = load("01_message.json")
    del payload["update_id"]
    with pytest.raises(InvalidUpdate):
        parse_update(payload)


@pytest.mark.parametrize("payload", [[], [{"update_id": 1}], "x", None, 5, b"{}"], ids=repr)
def test_non_dict_payload_is_invalid(payload: object) -> None:
    with pytest.raises(InvalidUpdate):
        parse_update(payload)  # type: ignore[arg-type]


def test_invalid_update_is_a_value_error() -> None:
    assert issubclass(InvalidUpdate, ValueError)


def test_largest_storable_update_id_is_accepted() -> None:
    assert parse_update({"update_id": 2**63 - 1}).update_id == 2**63 - 1


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.update(chat="not a chat"),
        lambda m: m.update(chat={"id": "218485655", "type": "private"}),
        lambda m: m.update(chat={"id": True, "type": "private"}),
        lambda m: m.update(chat={"id": 2**70, "type": "private"}),
        lambda m: m.pop("chat"),
    ],
)
def test_malformed_chat_gives_no_chat_and_no_conversation(mutate: Any) -> None:
    payload = load("01_message.json")
    mutate(payload["message"])
    parsed = parse_update(payload)
    assert parsed.chat is None
    assert parsed.conversation is None
    assert parsed.sender is not None  # the rest is still read


def test_odd_field_types_become_none() -> None:
    payload = load("01_message.json")
    msg = payload["message"]
    msg["chat"] = {"id": 218485655, "type": 3, "username": ["x"]}
    msg["from"] = {"id": 218485655, "is_bot": "no", "first_name": None}
    msg["text"] = {"t": 1}
    msg["date"] = "yesterday"
    msg["message_thread_id"] = 1.5
    parsed = parse_update(payload)
    assert parsed.chat == ChatRef(id=218485655, type="unknown")
    assert parsed.sender == SenderRef(id=218485655, is_bot=None)
    assert parsed.message is not None
    assert parsed.message.text is None
    assert parsed.message.date == 0
    assert parsed.message.thread_id is None


def test_message_without_id_has_no_inbound_message() -> None:
    payload = load("01_message.json")
    del payload["message"]["message_id"]
    parsed = parse_update(payload)
    assert parsed.message is None
    assert parsed.conversation == ConversationKey(218485655)


@pytest.mark.parametrize("kind", sorted(KNOWN_KINDS))
@pytest.mark.parametrize("body", [None, 1, "s", [], [{"chat": {"id": 1}}], {}])
def test_known_kind_with_odd_body_yields_empty_parts(kind: str, body: object) -> None:
    parsed = parse_update({"update_id": 9, kind: body})
    assert parsed.kind == kind
    assert (parsed.chat, parsed.sender, parsed.conversation, parsed.message) == (
        None,
        None,
        None,
        None,
    )


_FIELD_NAMES = st.sampled_from(
    [
        "chat",
        "id",
        "type",
        "from",
        "user",
        "sender_chat",
        "actor_chat",
        "voter_chat",
        "message",
        "message_id",
        "date",
        "text",
        "caption",
        "message_thread_id",
        "is_topic_message",
        "is_forum",
        "business_connection_id",
        "direct_messages_topic",
        "topic_id",
        "guest_query_id",
        "boost",
        "source",
        "is_bot",
        "username",
    ]
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_FIELD_NAMES, inner, max_size=6),
    max_leaves=20,
)


@given(
    update_id=st.integers(min_value=0, max_value=2**63 - 1),
    kind=st.sampled_from(sorted(KNOWN_KINDS)) | st.text(max_size=8),
    body=_JSON,
)
def test_any_shape_under_a_valid_update_id_parses(update_id: int, kind: str, body: Any) -> None:
    if kind == "update_id":
        return
    parsed = parse_update({"update_id": update_id, kind: body})
    assert parsed.update_id == update_id
    if parsed.chat is not None:
        assert type(parsed.chat.id) is int
    if parsed.conversation is not None:
        assert parse_conversation_key(parsed.conversation.encode()) == parsed.conversation
    if parsed.message is not None:
        assert type(parsed.message.message_id) is int


# --- capabilities never reach a ParsedUpdate ----------------------------------------

SECRET = "CAPABILITY-8f2d1c"


def _capability_payloads() -> list[dict[str, Any]]:
    """Every sample, plus updates of each kind that carries a capability value."""
    user = {"id": 77, "is_bot": False, "first_name": "Zed"}
    payloads: list[dict[str, Any]] = []
    for path in SAMPLE_FILES:
        sample = json.loads(path.read_text("utf-8"))
        payloads.append(sample)
        if "message" not in sample:
            continue
        message = sample["message"]
        for kind in MESSAGE_LIKE:
            payloads.append(
                {"update_id": 1, kind: {**copy.deepcopy(message), "guest_query_id": SECRET}}
            )
        payloads.append(
            {
                "update_id": 2,
                "callback_query": {
                    "id": SECRET,
                    "from": user,
                    "message": copy.deepcopy(message),
                    "inline_message_id": SECRET,
                    "chat_instance": "1",
                },
            }
        )
    payloads += [
        {
            "update_id": 3,
            "callback_query": {
                "id": SECRET,
                "from": user,
                "inline_message_id": SECRET,
                "chat_instance": "1",
            },
        },
        {"update_id": 4, "inline_query": {"id": SECRET, "from": user, "query": "", "offset": ""}},
        {
            "update_id": 5,
            "chosen_inline_result": {
                "result_id": SECRET,
                "from": user,
                "inline_message_id": SECRET,
                "query": "",
            },
        },
        {"update_id": 6, "shipping_query": {"id": SECRET, "from": user, "invoice_payload": "p"}},
        {"update_id": 7, "pre_checkout_query": {"id": SECRET, "from": user, "currency": "XTR"}},
        {
            "update_id": 8,
            "chat_join_request": {
                "chat": {"id": -100, "type": "supergroup", "title": "G"},
                "from": user,
                "user_chat_id": 77,
                "date": 1,
                "query_id": SECRET,
            },
        },
    ]
    return payloads


CAPABILITY_PAYLOADS = _capability_payloads()


def test_capability_payloads_really_carry_the_secret() -> None:
    # 45 samples; for each of the 37 message samples 7 guest variants and one
    # callback; six more for the query kinds.
    messages = sum(expected_kind(path) == "message" for path in SAMPLE_FILES)
    assert messages == 37
    assert len(CAPABILITY_PAYLOADS) == 45 + messages * 8 + 6
    assert sum(SECRET in json.dumps(p) for p in CAPABILITY_PAYLOADS) == messages * 8 + 6


def test_repr_would_show_a_leaked_value() -> None:
    # Control: the check below can fail, because repr shows field contents.
    leaky = rewrap("18_message.json", "message", text=SECRET)
    assert SECRET in repr(parse_update(leaky))


@pytest.mark.parametrize("index", range(len(CAPABILITY_PAYLOADS)))
def test_no_capability_in_repr_or_conversation_key(index: int) -> None:
    parsed = parse_update(CAPABILITY_PAYLOADS[index])
    assert SECRET not in repr(parsed)
    assert SECRET not in str(parsed)
    if parsed.conversation is not None:
        assert SECRET not in parsed.conversation.encode()


def test_guest_query_id_marks_the_conversation_without_entering_it() -> None:
    parsed = parse_update(rewrap("18_message.json", "message", guest_query_id=SECRET))
    assert parsed.conversation == ConversationKey(250918540, guest=True)
    assert parsed.conversation.encode() == "tg:250918540:g"
