"""Message text for Telegram: how it will look, and whether Telegram will take it.

A message is approved by a reviewer before it is sent, so a text Telegram would refuse
("Bad Request: can't parse entities: ...", "message text is empty", "message is too
long") must be refused when it is submitted, not after approval. `validate_text` applies
the Bot API's formatting rules (https://core.telegram.org/bots/api#formatting-options)
the way the official Bot API server applies them, and raises `InvalidText` naming the
offending character. `visible_text` gives the text as recipients will see it.

Decisions, and why:

- Length. sendMessage takes "1-4096 characters after entities parsing". The server
  counts Unicode code points of the visible text after its clean-up (below), not UTF-16
  code units: those are only the unit of entity offsets. 4096 emoji outside the Basic
  Multilingual Plane (8192 UTF-16 code units) are sent; 4097 are "message is too long".
  `len()` of the visible text is that count.
- Clean-up. The server turns control characters other than a line feed (tab included)
  into spaces, drops carriage returns, U+2028-U+202E and the combining marks U+030A,
  U+0333 and U+033F, turns all but the last of a run of direction marks (U+200E, U+200F)
  into zero-width non-joiners, and strips spaces and line feeds from the end, and from
  the start up to the first entity. A text left with only spaces, line feeds and
  invisible characters (zero-width ones, no-break space, the other Unicode spaces) is
  "message text is empty".
- Refuse, don't guess. Where the server would accept a text but silently show something
  other than its markup says (drop a link whose URL it does not take, drop formatting
  nested where Telegram does not allow it, take `[text]` without `(url)` as a link to
  "text"), the text is refused, so that what the reviewer approves is what is sent.
  For the same reason HTML follows the documentation's rule that every `<`, `>` and `&`
  outside a tag or an entity is escaped, although the server lets a bare `>` or `&`
  through; entities are the four named ones (`&lt;` `&gt;` `&amp;` `&quot;`) and numeric
  ones, each ending with `;`.
- HTML tags. Tag names are case-insensitive, as on the server (`<B>` is bold); attribute
  names are not (the server only knows lowercase ones). An attribute is accepted only
  where it means something: `href` on `a`, `class` on `span` (`tg-spoiler`) and on
  `code` (`language-...`), `emoji-id` on `tg-emoji`, `expandable` on `blockquote`. There
  is no `<br>`: a line break is a newline character.
- Nesting (the documented rules, which the server enforces by dropping entities):
  nothing goes inside code or pre, except `<pre><code class="language-...">` wrapping
  the whole block; code and pre go nowhere but inside a blockquote; links, custom emoji
  and blockquotes do not go inside links or custom emoji; blockquotes do not nest.
- Link URLs: `http://` or `https://` (any case), or no scheme (taken as http), with a
  host containing a dot (or an IPv6 address) and a valid port; or `tg:`, `ton:` and
  `tonsite:` links to a plain host, such as `tg://user?id=123` or
  `tg://resolve?domain=name`. No whitespace. Every other scheme is refused: Telegram
  drops `javascript:` links, and has no mailto link (it would turn `mailto:a@b.example`
  into a web link to the host b.example).
- MarkdownV2 is read as the server reads it: left to right, a reserved character closes
  the innermost open entity when it can, and opens a new one otherwise. For `_` that
  means: `__` closes an open underline, a single `_` (not followed by another) closes an
  open italic, and otherwise `__` opens underline and `_` opens italic. So
  `_a __b___` is italic containing underline, while `___a___` is refused, as the server
  refuses it. A backslash escapes any ASCII character anywhere, in code and URLs too
  (inside code, `\\d` shows "d"; a backslash is written `\\\\`).
- Legacy Markdown: `*bold*`, `_italic_`, `` `code` ``, ```` ```pre``` ```` and
  `[text](url)`; entities do not nest, and a backslash escapes only `_`, `*`, `` ` ``
  and `[`. An unclosed entity is refused, as the server refuses it.
- Positions are 0-based indices into the submitted string (code points), where the
  server reports UTF-8 byte offsets. A lone UTF-16 surrogate cannot be sent as UTF-8
  and is refused.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NoReturn

MAX_MESSAGE_LENGTH = 4096


class ParseMode(enum.StrEnum):
    """The Bot API's `parse_mode` values."""

    HTML = "HTML"
    MARKDOWN_V2 = "MarkdownV2"
    MARKDOWN = "Markdown"


@dataclass(frozen=True)
class TextProblem:
    """Why Telegram would refuse a text, for the API's 422 answer.

    `message` is one sentence naming the offending position; it quotes at most a short
    piece of markup (a tag name, a URL scheme), never the text. `position` is the 0-based
    character offset in the submitted text, or None when the problem is the text as a
    whole (its length, or its being empty).
    """

    message: str
    position: int | None


class InvalidText(ValueError):
    """A text Telegram would refuse; `problem` says why and where."""

    def __init__(self, problem: TextProblem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def visible_text(text: str, parse_mode: ParseMode | None) -> str:
    """The text as recipients will see it: markup parsed, entities decoded, cleaned up.

    Raises InvalidText when the markup is one Telegram refuses (or would silently alter,
    see the module's documentation). An empty or over-long result is returned as it is:
    `validate_text` is the check of the whole message.
    """
    _refuse_surrogates(text)
    mode = None if parse_mode is None else ParseMode(parse_mode)
    if mode is ParseMode.HTML:
        parsed = _HtmlParser(text).parse()
    elif mode is ParseMode.MARKDOWN_V2:
        parsed = _MarkdownV2Parser(text).parse()
    elif mode is ParseMode.MARKDOWN:
        parsed = _parse_markdown(text)
    else:
        parsed = _Parsed(text, [])
    return _clean_up(parsed)


def validate_text(text: str, parse_mode: ParseMode | None) -> None:
    """Raise InvalidText unless Telegram's sendMessage would take `text` in `parse_mode`.

    The markup must parse (see `visible_text`), and the visible text must be 1 to
    MAX_MESSAGE_LENGTH characters (code points) long and not blank.
    """
    shown = visible_text(text, parse_mode)
    if all(char in _BLANK for char in shown):
        _fail("The message text is empty once formatting is applied; Telegram refuses it.", None)
    if len(shown) > MAX_MESSAGE_LENGTH:
        _fail(
            f"The message is {len(shown)} characters long once formatting is applied; "
            f"Telegram allows at most {MAX_MESSAGE_LENGTH}.",
            None,
        )


def escape_html(text: str) -> str:
    """`text` written for parse mode HTML: shown exactly as plain `text` would be."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# The backslash too: before an ASCII character it would escape that character.
_MARKDOWN_V2_SPECIAL = re.compile(r"([_*\[\]()~`>#+\-=|{}.!\\])")


def escape_markdown_v2(text: str) -> str:
    """`text` written for parse mode MarkdownV2: shown exactly as plain `text` would be."""
    return _MARKDOWN_V2_SPECIAL.sub(r"\\\1", text)


def _fail(message: str, position: int | None) -> NoReturn:
    raise InvalidText(TextProblem(message, position))


def _short(fragment: str) -> str:
    """A quotable piece of the submitted markup: messages must not carry the text."""
    return fragment if len(fragment) <= 24 else fragment[:24] + "..."


_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_surrogates(text: str) -> None:
    match = _SURROGATE.search(text)
    if match is not None:
        _fail(
            f"Character {match.start()} is a lone UTF-16 surrogate, which cannot be sent.",
            match.start(),
        )


class _Kind(enum.Enum):
    """An entity type; the value names it in messages."""

    BOLD = "bold text"
    ITALIC = "italic text"
    UNDERLINE = "underlined text"
    STRIKETHROUGH = "strikethrough text"
    SPOILER = "spoiler"
    LINK = "link"
    CUSTOM_EMOJI = "custom emoji"
    CODE = "inline code"
    PRE = "pre block"
    BLOCKQUOTE = "quote"


_CODE_KINDS = frozenset({_Kind.CODE, _Kind.PRE})
_LINK_KINDS = frozenset({_Kind.LINK, _Kind.CUSTOM_EMOJI})


def _nesting_conflict(kind: _Kind, open_kinds: Sequence[_Kind]) -> int | None:
    """The index in `open_kinds` of an open entity that may not contain a `kind` one."""
    for index in range(len(open_kinds) - 1, -1, -1):
        outer = open_kinds[index]
        if (
            outer in _CODE_KINDS
            or (kind in _CODE_KINDS and outer is not _Kind.BLOCKQUOTE)
            or ((kind in _LINK_KINDS or kind is _Kind.BLOCKQUOTE) and outer in _LINK_KINDS)
            or (kind is _Kind.BLOCKQUOTE and outer is _Kind.BLOCKQUOTE)
        ):
            return index
    return None


@dataclass
class _Parsed:
    """A text with its markup parsed, before the server's clean-up."""

    text: str
    # [start, end) of every non-empty entity: the clean-up's left trim stops at the first.
    spans: list[tuple[int, int]]


@dataclass
class _Output:
    """The visible text a parser builds, one character at a time."""

    chars: list[str] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.chars)

    def add(self, char: str) -> None:
        self.chars.append(char)

    def entity(self, start: int) -> None:
        """An entity from `start` to here ends; like the server, an empty one is no entity."""
        if len(self.chars) > start:
            self.spans.append((start, len(self.chars)))

    def parsed(self) -> _Parsed:
        return _Parsed("".join(self.chars), self.spans)


# The server's clean-up (see the module's documentation).
_TO_SPACE = frozenset(chr(code) for code in range(32) if chr(code) not in "\n\r")
_DROPPED = frozenset(
    {"\r", "\u030a", "\u0333", "\u033f", *(chr(code) for code in range(0x2028, 0x202F))}
)
_DIRECTION_MARKS = frozenset({"\u200e", "\u200f"})
_TRIMMED = " \n"
# What the server takes for nothing when it checks that a text is not empty.
_BLANK = frozenset(
    {
        " ",
        "\n",
        "\u00a0",
        "\u1680",
        "\u180e",
        *(chr(code) for code in range(0x2000, 0x2010)),
        "\u202f",
        "\u205f",
        "\u2800",
        "\u3000",
        "\ufeff",
        "\ufffc",
        *(chr(code) for code in range(0xE0000, 0xE0080)),
    }
)


def _clean_up(parsed: _Parsed) -> str:
    chars: list[str] = []
    # Where each character of the parsed text lands, to carry entity spans along.
    landing = [0] * (len(parsed.text) + 1)
    for index, char in enumerate(parsed.text):
        landing[index] = len(chars)
        if char not in _DROPPED:
            chars.append(" " if char in _TO_SPACE else char)
    landing[len(parsed.text)] = len(chars)
    for index in range(len(chars) - 1):
        if chars[index] in _DIRECTION_MARKS and chars[index + 1] in _DIRECTION_MARKS:
            chars[index] = "\u200c"
    text = "".join(chars)
    end = len(text.rstrip(_TRIMMED))
    # Entities that are empty after the clean-up, or lie in the trimmed end, are gone.
    starts = [
        landing[start]
        for start, stop in parsed.spans
        if landing[start] < landing[stop] and landing[start] < end
    ]
    first_entity = min(starts, default=end)
    begin = 0
    while begin < first_entity and text[begin] in _TRIMMED:
        begin += 1
    return text[begin:end]


# --- Links -----------------------------------------------------------------------------

_SCHEME_SEPARATOR = re.compile(r"[^:/?#@\[\]]*://")
# "mailto:", "javascript:"; not "example.com:8080", which is a host and a port.
_BARE_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(?![0-9])")
_PORT = re.compile(r"[0-9]+")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_!$,~*'();&+=")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_INTERNAL_SCHEMES = ("tonsite", "ton", "tg")
_SUPPORTED_SCHEMES = "http, https, tg, ton or tonsite"


def _link_problem(url: str) -> str | None:
    """Why Telegram would drop a link to `url`, or None when it keeps it."""
    if not url:
        return "it is empty"
    if any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in url):
        return "it contains whitespace or a control character"
    lowered = url.lower()
    for scheme in _INTERNAL_SCHEMES:
        if lowered.startswith(scheme + ":"):
            return _internal_link_problem(url[len(scheme) + 1 :], scheme)
    separator = _SCHEME_SEPARATOR.match(url)
    if separator is not None:
        scheme = separator.group()[:-3].lower()
        if scheme not in ("http", "https"):
            return f"the scheme '{_short(scheme)}' is not supported (use {_SUPPORTED_SCHEMES})"
        return _web_link_problem(url[separator.end() :])
    bare = _BARE_SCHEME.match(url)
    if bare is not None:
        scheme = bare.group(1).lower()
        return f"the scheme '{_short(scheme)}' is not supported (use {_SUPPORTED_SCHEMES})"
    # No scheme: Telegram takes it for an http link.
    return _web_link_problem(url)


@dataclass(frozen=True)
class _Authority:
    userinfo: str
    host: str
    port: str | None


def _split_authority(rest: str) -> _Authority:
    """Userinfo, host and port of `rest`, the URL after its scheme, as the server splits them."""
    end = next((index for index, char in enumerate(rest) if char in "/?#"), len(rest))
    authority = rest[:end]
    # The port follows the last ':' that comes after any '@' and any IPv6 ']'.
    colon = len(authority) - 1
    while colon > 0 and authority[colon] not in ":]@":
        colon -= 1
    port = None
    if colon > 0 and authority[colon] == ":":
        port = authority[colon + 1 :]
        authority = authority[:colon]
    userinfo, _, host = authority.rpartition("@")
    return _Authority(userinfo, host, port)


def _host_problem(host: str) -> str | None:
    if not host or host == ".":
        return "it has no host"
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return "its IPv6 host is not an IPv6 address"
        return None
    lowered = host.lower()
    index = 0
    while index < len(lowered):
        char = lowered[index]
        if char == "%":
            encoded = lowered[index + 1 : index + 3]
            if len(encoded) < 2 or not all(digit in _HEX_DIGITS for digit in encoded):
                return "its host has a bad percent-encoded character"
            index += 3
            continue
        # Non-ASCII host names are taken as they are (internationalised domains).
        if char not in _HOST_CHARS and char.isascii():
            return f"its host has the character '{char}'"
        index += 1
    return None


def _web_link_problem(rest: str) -> str | None:
    authority = _split_authority(rest)
    if authority.port is not None and not (
        _PORT.fullmatch(authority.port) and 1 <= int(authority.port) <= 65535
    ):
        return "its port is not a number from 1 to 65535"
    problem = _host_problem(authority.host)
    if problem is not None:
        return problem
    if "." not in authority.host and not authority.host.startswith("["):
        return "its host has no dot (a domain name such as example.com is needed)"
    return None


def _internal_link_problem(rest: str, scheme: str) -> str | None:
    """A tg:, ton: or tonsite: link: Telegram keeps it when it names a plain host."""
    if rest.startswith("//"):
        rest = rest[2:]
    if _SCHEME_SEPARATOR.match(rest) is not None:
        return f"a {scheme}: link cannot hold another URL"
    authority = _split_authority(rest)
    if authority.userinfo or authority.port is not None:
        return f"a {scheme}: link has no user or port"
    if not authority.host:
        return "it has no host"
    allowed = "-_." if scheme == "tonsite" else "-_"
    if not all((char.isascii() and char.isalnum()) or char in allowed for char in authority.host):
        return f"the host of a {scheme}: link is letters, digits, '-' and '_' only"
    return None


_CUSTOM_EMOJI_URL = re.compile(r"tg://emoji\?id=([0-9]+)", re.IGNORECASE)
_EMOJI_ID = re.compile(r"-?[0-9]+")


def _valid_emoji_id(value: str) -> bool:
    """A custom emoji identifier: a non-zero 64-bit integer."""
    return _EMOJI_ID.fullmatch(value) is not None and 0 < abs(int(value)) < 2**63


# --- HTML ------------------------------------------------------------------------------

_HTML_SPACES = frozenset(" \t\n\r\v\f")
_HTML_TAG_KINDS = {
    "b": _Kind.BOLD,
    "strong": _Kind.BOLD,
    "i": _Kind.ITALIC,
    "em": _Kind.ITALIC,
    "u": _Kind.UNDERLINE,
    "ins": _Kind.UNDERLINE,
    "s": _Kind.STRIKETHROUGH,
    "strike": _Kind.STRIKETHROUGH,
    "del": _Kind.STRIKETHROUGH,
    "span": _Kind.SPOILER,
    "tg-spoiler": _Kind.SPOILER,
    "a": _Kind.LINK,
    "tg-emoji": _Kind.CUSTOM_EMOJI,
    "code": _Kind.CODE,
    "pre": _Kind.PRE,
    "blockquote": _Kind.BLOCKQUOTE,
}
# The one attribute each tag may have.
_HTML_ATTRIBUTES = {
    "a": "href",
    "span": "class",
    "code": "class",
    "tg-emoji": "emoji-id",
    "blockquote": "expandable",
}
_HTML_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
_DECIMAL_DIGITS = frozenset("0123456789")
# An unquoted attribute value (an SGML name token).
_NAME_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")


def _html_entity(text: str, start: int) -> tuple[str | None, int]:
    """Decode the entity at `text[start]` ('&') as the server does.

    Returns the character, or None where the server would leave the '&' as it is, and the
    index just past the entity's name or digits (a ';' there is not included).
    """
    index = start + 1
    if text.startswith("#", index):
        index += 1
        base, digits = 10, _DECIMAL_DIGITS
        # Only a lowercase 'x' makes a hexadecimal reference on the server.
        if text.startswith("x", index):
            index += 1
            base, digits = 16, _HEX_DIGITS
        first_digit = index
        while index < len(text) and text[index] in digits:
            index += 1
        # The server gives up on references of ten characters or more, counted from '&'.
        if index == first_digit or index - start >= 10:
            return None, index
        code = int(text[first_digit:index], base)
        if code == 0 or code >= 0x10FFFF:
            return None, index
        return chr(code), index
    while index < len(text) and text[index].isascii() and text[index].isalpha():
        index += 1
    return _HTML_ENTITIES.get(text[start + 1 : index]), index


@dataclass
class _OpenTag:
    name: str
    kind: _Kind
    position: int  # of its '<' in the submitted text
    start: int  # where its content begins in the output
    # For a pre: where its <code> child began (in the submitted text) and ended (output).
    code_position: int | None = None
    code_end: int | None = None


class _HtmlParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.out = _Output()
        self.open: list[_OpenTag] = []

    def parse(self) -> _Parsed:
        text = self.text
        index = 0
        while index < len(text):
            char = text[index]
            if char == "<":
                if text.startswith("/", index + 1):
                    index = self._end_tag(index)
                else:
                    index = self._start_tag(index)
            elif char == "&":
                index = self._entity(index)
            elif char == ">":
                _fail(f"Character '>' at character {index} must be escaped as &gt;.", index)
            else:
                self.out.add(char)
                index += 1
        if self.open:
            tag = self.open[-1]
            _fail(f"Unclosed <{tag.name}> tag opened at character {tag.position}.", tag.position)
        return self.out.parsed()

    def _skip_spaces(self, index: int) -> int:
        while index < len(self.text) and self.text[index] in _HTML_SPACES:
            index += 1
        return index

    def _entity(self, start: int) -> int:
        char, end = _html_entity(self.text, start)
        name = self.text[start + 1 : end]
        has_semicolon = self.text.startswith(";", end)
        if char is not None and has_semicolon:
            if _SURROGATE.match(char):
                _fail(
                    f"The entity at character {start} is a UTF-16 surrogate, which cannot "
                    "be sent; write the character's own code point.",
                    start,
                )
            self.out.add(char)
            return end + 1
        if char is not None:
            _fail(f"The entity &{name} at character {start} must end with ';'.", start)
        if has_semicolon and name.startswith("#"):
            _fail(f"The numeric entity at character {start} is not a valid character.", start)
        if has_semicolon and name:
            _fail(
                f"Unsupported entity &{_short(name)}; at character {start}: Telegram knows "
                "only &lt; &gt; &amp; &quot; and numeric entities.",
                start,
            )
        _fail(f"Character '&' at character {start} must be escaped as &amp;.", start)

    def _start_tag(self, start: int) -> int:
        text = self.text
        index = start + 1
        while index < len(text) and text[index] not in _HTML_SPACES and text[index] != ">":
            index += 1
        written = text[start + 1 : index]
        name = written.lower()
        kind = _HTML_TAG_KINDS.get(name)
        if kind is None:
            self._unsupported_tag(written, start)
        attributes, index = self._attributes(name, start, index)
        self._check_attributes(name, attributes, start)
        self._check_nesting(name, kind, start)
        self.open.append(_OpenTag(name, kind, start, len(self.out)))
        return index

    def _unsupported_tag(self, written: str, start: int) -> NoReturn:
        if written.endswith("/") and written[:-1].lower() in _HTML_TAG_KINDS:
            self._self_closing(written[:-1].lower(), start)
        match = _TAG_NAME.match(written)
        if match is None:
            _fail(f"Character '<' at character {start} must be escaped as &lt;.", start)
        tag = match.group().lower()
        hint = " A line break is a newline character." if tag == "br" else ""
        _fail(f"Unsupported tag <{_short(tag)}> at character {start}.{hint}", start)

    def _self_closing(self, name: str, start: int) -> NoReturn:
        _fail(
            f"Self-closing tag <{name}/> at character {start} is not supported; "
            f"close it with </{name}>.",
            start,
        )

    def _unclosed_start_tag(self, name: str, start: int) -> NoReturn:
        _fail(f"The <{name}> tag at character {start} is never closed with '>'.", start)

    def _attributes(self, name: str, start: int, index: int) -> tuple[dict[str, str | None], int]:
        """The tag's attributes, read as the server reads them, and the index past its '>'."""
        text = self.text
        attributes: dict[str, str | None] = {}
        while True:
            index = self._skip_spaces(index)
            if index >= len(text):
                self._unclosed_start_tag(name, start)
            if text[index] == ">":
                return attributes, index + 1
            name_start = index
            while (
                index < len(text)
                and text[index] not in _HTML_SPACES
                and text[index] not in "=>/\"'"
            ):
                index += 1
            attribute = text[name_start:index]
            if not attribute:
                if text[index] == "/":
                    self._self_closing(name, start)
                _fail(
                    f"Unexpected character {text[index]!r} at character {index} "
                    f"in the <{name}> tag.",
                    index,
                )
            index = self._skip_spaces(index)
            if index >= len(text):
                self._unclosed_start_tag(name, start)
            if text[index] != "=":
                attributes[attribute] = None
                continue
            index = self._skip_spaces(index + 1)
            if index >= len(text):
                self._unclosed_start_tag(name, start)
            if text[index] in "\"'":
                value, index = self._quoted_value(name, start, index)
            else:
                value_start = index
                while index < len(text) and text[index] in _NAME_TOKEN_CHARS:
                    index += 1
                # The server lowercases an unquoted value.
                value = text[value_start:index].lower()
                if index >= len(text):
                    self._unclosed_start_tag(name, start)
                if text[index] not in _HTML_SPACES and text[index] != ">":
                    _fail(
                        f"The value of {_short(attribute)} at character {value_start} "
                        "must be in quotes.",
                        value_start,
                    )
            attributes[attribute] = value

    def _quoted_value(self, name: str, start: int, index: int) -> tuple[str, int]:
        text = self.text
        quote = text[index]
        index += 1
        chars: list[str] = []
        while index < len(text) and text[index] != quote:
            if text[index] == "&":
                # Inside a tag a bare '&' is allowed (a URL's query): only entities decode.
                char, end = _html_entity(text, index)
                if char is not None:
                    if _SURROGATE.match(char):
                        _fail(
                            f"The entity at character {index} is a UTF-16 surrogate, "
                            "which cannot be sent.",
                            index,
                        )
                    chars.append(char)
                    index = end + 1 if text.startswith(";", end) else end
                    continue
            chars.append(text[index])
            index += 1
        if index >= len(text):
            self._unclosed_start_tag(name, start)
        return "".join(chars), index + 1

    def _check_attributes(self, name: str, attributes: dict[str, str | None], start: int) -> None:
        allowed = _HTML_ATTRIBUTES.get(name)
        for attribute in attributes:
            if attribute != allowed:
                _fail(
                    f"Unsupported attribute {_short(attribute)} on the <{name}> tag "
                    f"at character {start}.",
                    start,
                )
        value = attributes.get(allowed) if allowed is not None else None
        if name == "span" and value != "tg-spoiler":
            _fail(f'The <span> tag at character {start} needs class="tg-spoiler".', start)
        if name == "a":
            if not value:
                _fail(f"The <a> tag at character {start} needs a non-empty href.", start)
            problem = _link_problem(value)
            if problem is not None:
                _fail(f"The link URL at character {start} is invalid: {problem}.", start)
        if name == "tg-emoji" and (value is None or not _valid_emoji_id(value)):
            _fail(f"The <tg-emoji> tag at character {start} needs a numeric emoji-id.", start)
        if name == "code" and "class" in attributes and not (value or "").startswith("language-"):
            _fail(
                f'The class of the <code> tag at character {start} must be "language-<name>".',
                start,
            )

    def _check_nesting(self, name: str, kind: _Kind, start: int) -> None:
        parent = self.open[-1] if self.open else None
        if kind is _Kind.CODE and parent is not None and parent.kind is _Kind.PRE:
            # <pre><code class="language-x"> is one block, so the code must be all of it.
            if parent.code_position is not None or len(self.out) != parent.start:
                _fail(
                    f"The <code> tag at character {start} must wrap the whole <pre> block.",
                    start,
                )
            parent.code_position = start
            return
        conflict = _nesting_conflict(kind, [tag.kind for tag in self.open])
        if conflict is not None:
            outer = self.open[conflict]
            _fail(
                f"Tag <{name}> at character {start} cannot be inside <{outer.name}> "
                f"(opened at character {outer.position}).",
                start,
            )

    def _end_tag(self, start: int) -> int:
        text = self.text
        index = start + 2
        while index < len(text) and text[index] not in _HTML_SPACES and text[index] != ">":
            index += 1
        name = text[start + 2 : index].lower()
        index = self._skip_spaces(index)
        if index >= len(text) or text[index] != ">":
            _fail(f"The end tag at character {start} must end with '>'.", start)
        if not self.open:
            _fail(f"End tag </{_short(name)}> at character {start} closes no open tag.", start)
        tag = self.open[-1]
        if not name:
            _fail(f"End tag </> at character {start} has no name; write </{tag.name}>.", start)
        if name != tag.name:
            _fail(
                f"End tag </{_short(name)}> at character {start} does not match "
                f"<{tag.name}> opened at character {tag.position}.",
                start,
            )
        self.open.pop()
        if tag.code_position is not None and tag.code_end != len(self.out):
            _fail(
                f"The <code> tag at character {tag.code_position} must wrap the whole <pre> block.",
                tag.code_position,
            )
        if tag.kind is _Kind.CODE and self.open and self.open[-1].kind is _Kind.PRE:
            self.open[-1].code_end = len(self.out)
        self.out.entity(tag.start)
        return index + 1


# --- MarkdownV2 ------------------------------------------------------------------------

_MARKDOWN_V2_RESERVED = frozenset("_*[]()~`>#+-=|{}.!\n")
# What closes each entity; italic is a single '_' not followed by another.
_MARKDOWN_V2_CLOSERS = {
    _Kind.BOLD: "*",
    _Kind.ITALIC: "_",
    _Kind.UNDERLINE: "__",
    _Kind.STRIKETHROUGH: "~",
    _Kind.SPOILER: "||",
    _Kind.CODE: "`",
    _Kind.PRE: "```",
    _Kind.LINK: "]",
    _Kind.CUSTOM_EMOJI: "]",
}


def _pre_content_start(text: str, index: int) -> int:
    """Where a pre block's content begins, `index` being just past its opening ```.

    A language name follows the ``` when it runs up to whitespace (not to a backquote, not
    to the end); then one line break is skipped. Neither is shown.
    """
    end = index
    while end < len(text) and text[end] not in _HTML_SPACES and text[end] != "`":
        end += 1
    if end != index and end < len(text) and text[end] != "`":
        index = end
    if text[index : index + 1] in ("\n", "\r"):
        pair = text[index : index + 2]
        index += 2 if pair in ("\r\n", "\n\r") else 1
    return index


@dataclass
class _OpenEntity:
    kind: _Kind
    position: int  # of its opening marker in the submitted text
    start: int  # where its content begins in the output


class _MarkdownV2Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.out = _Output()
        self.open: list[_OpenEntity] = []
        self.in_quote = False
        # A '>' starts a quote only at the start of a line.
        self.line_start = True

    def parse(self) -> _Parsed:
        text = self.text
        index = 0
        while index < len(text):
            char = text[index]
            following = text[index + 1 : index + 2]
            if char == "\\" and following and 0 < ord(following) <= 126:
                self.out.add(following)
                if following != "\r":
                    self.line_start = following == "\n"
                index += 2
                continue
            in_code = bool(self.open) and self.open[-1].kind in _CODE_KINDS
            if char not in ("`" if in_code else _MARKDOWN_V2_RESERVED):
                self.out.add(char)
                if char != "\r":
                    self.line_start = False
                index += 1
                continue
            index = self._close(index) if self._closes(index) else self._open(index)
        return self._finish()

    def _closes(self, index: int) -> bool:
        if not self.open:
            return False
        text = self.text
        if self.in_quote and text[index] == "\n" and not text.startswith(">", index + 1):
            return True
        kind = self.open[-1].kind
        if kind is _Kind.ITALIC:
            return text[index] == "_" and not text.startswith("__", index)
        closer = _MARKDOWN_V2_CLOSERS.get(kind)
        return closer is not None and text.startswith(closer, index)

    def _reserved(self, index: int) -> NoReturn:
        _fail(
            f"Character '{self.text[index]}' at character {index} is reserved and must be "
            "escaped with the preceding '\\'.",
            index,
        )

    def _unclosed(self, entity: _OpenEntity, reason: str) -> NoReturn:
        _fail(
            f"Unclosed {entity.kind.value} opened at character {entity.position}: {reason}.",
            entity.position,
        )

    def _open(self, index: int) -> int:
        text = self.text
        char = text[index]
        if self.open and self.open[-1].kind is _Kind.PRE:
            # Only a backquote gets here: inside a block it must be escaped.
            _fail(
                f"Character '`' at character {index} inside a pre block must be escaped "
                "with the preceding '\\'.",
                index,
            )
        if char == "\n":
            self.out.add(char)
            self.line_start = True
            return index + 1
        end = index + 1
        if char == ">":
            if not self.line_start:
                self._reserved(index)
            if self.in_quote:
                return end  # the '>' that continues the quote on a new line
            kind = _Kind.BLOCKQUOTE
        elif text.startswith("__", index):
            kind, end = _Kind.UNDERLINE, index + 2
        elif char == "_":
            kind = _Kind.ITALIC
        elif char == "*":
            kind = _Kind.BOLD
        elif char == "~":
            kind = _Kind.STRIKETHROUGH
        elif text.startswith("||", index):
            kind, end = _Kind.SPOILER, index + 2
        elif char == "[":
            kind = _Kind.LINK
        elif text.startswith("![", index):
            kind, end = _Kind.CUSTOM_EMOJI, index + 2
        elif text.startswith("```", index):
            kind, end = _Kind.PRE, _pre_content_start(text, index + 3)
        elif char == "`":
            kind = _Kind.CODE
        else:
            self._reserved(index)
        conflict = _nesting_conflict(kind, [entity.kind for entity in self.open])
        if conflict is not None:
            outer = self.open[conflict]
            _fail(
                f"The {kind.value} at character {index} cannot be inside the "
                f"{outer.kind.value} opened at character {outer.position}.",
                index,
            )
        if kind is _Kind.BLOCKQUOTE:
            self.in_quote = True
        self.open.append(_OpenEntity(kind, index, len(self.out)))
        return end

    def _close(self, index: int) -> int:
        text = self.text
        entity = self.open.pop()
        if text[index] == "\n" and entity.kind is not _Kind.BLOCKQUOTE:
            # The quote ends with this line; only the "||" that makes it expandable may
            # still be open, right before the line break.
            just_before = entity.position == index - 2 or (
                entity.position == index - 3 and text[index - 1] == "\r"
            )
            if entity.kind is _Kind.SPOILER and just_before:
                entity = self.open.pop()
            if entity.kind is not _Kind.BLOCKQUOTE:
                self._unclosed(entity, "an entity inside a quote must end on its line")
        if entity.kind is _Kind.BLOCKQUOTE:
            self.out.add("\n")
            self.line_start = True
            self.in_quote = False
            self.out.entity(entity.start)
            return index + 1
        if entity.kind is _Kind.LINK:
            end = self._link_url(entity, index)
        elif entity.kind is _Kind.CUSTOM_EMOJI:
            end = self._custom_emoji_url(entity, index)
        else:
            end = index + len(_MARKDOWN_V2_CLOSERS[entity.kind])
        self.out.entity(entity.start)
        return end

    def _parenthesized(self, paren: int) -> tuple[str, int]:
        """The URL after the '(' at `paren`, up to the first unescaped ')'; the index past it."""
        text = self.text
        index = paren + 1
        chars: list[str] = []
        while index < len(text) and text[index] != ")":
            following = text[index + 1 : index + 2]
            if text[index] == "\\" and following and 0 < ord(following) <= 126:
                chars.append(following)
                index += 2
                continue
            chars.append(text[index])
            index += 1
        if index >= len(text):
            _fail(f"The '(' at character {paren} has no closing ')'.", paren)
        return "".join(chars), index + 1

    def _link_url(self, entity: _OpenEntity, index: int) -> int:
        if not self.text.startswith("(", index + 1):
            _fail(
                f"The link opened at character {entity.position} needs its URL in "
                "parentheses right after ']'.",
                entity.position,
            )
        url, end = self._parenthesized(index + 1)
        problem = _link_problem(url)
        if problem is not None:
            _fail(
                f"The link URL opened by '(' at character {index + 1} is invalid: {problem}.",
                index + 1,
            )
        return end

    def _custom_emoji_url(self, entity: _OpenEntity, index: int) -> int:
        if not self.text.startswith("(", index + 1):
            _fail(
                f"The custom emoji at character {entity.position} needs "
                "(tg://emoji?id=...) right after ']'.",
                entity.position,
            )
        url, end = self._parenthesized(index + 1)
        match = _CUSTOM_EMOJI_URL.fullmatch(url)
        if match is None or not _valid_emoji_id(match.group(1)):
            _fail(
                f"The custom emoji URL opened by '(' at character {index + 1} must be tg://emoji?id=<number>.",
                index + 1,
            )
        return end

    def _finish(self) -> _Parsed:
        if self.in_quote:
            # A quote may end the text, its last line ending with the expandable "||".
            if self.open[-1].kind is _Kind.SPOILER and self.open[-1].position == len(self.text) - 2:
                self.open.pop()
            if self.open[-1].kind is _Kind.BLOCKQUOTE:
                self.out.entity(self.open.pop().start)
                self.in_quote = False
        if self.open:
            entity = self.open[-1]
            # A quote is closed above, so the entity has a closing marker.
            closer = _MARKDOWN_V2_CLOSERS.get(entity.kind, "")
            self._unclosed(entity, f"no matching '{closer}' follows")
        return self.out.parsed()


# --- Legacy Markdown -------------------------------------------------------------------

_MARKDOWN_MARKERS = frozenset("_*`[")
_MARKDOWN_KINDS = {"_": _Kind.ITALIC, "*": _Kind.BOLD, "`": _Kind.CODE, "[": _Kind.LINK}


def _parse_markdown(text: str) -> _Parsed:
    out = _Output()
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and text[index + 1 : index + 2] in _MARKDOWN_MARKERS:
            out.add(text[index + 1])
            index += 2
            continue
        if char not in _MARKDOWN_MARKERS:
            out.add(char)
            index += 1
            continue
        position = index
        kind = _MARKDOWN_KINDS[char]
        if text.startswith("```", index):
            kind, closer = _Kind.PRE, "```"
            index = _pre_content_start(text, index + 3)
        else:
            closer = "]" if char == "[" else char
            index += 1
        start = len(out)
        # No nesting: everything up to the closing marker is shown as it is.
        while index < len(text) and not text.startswith(closer, index):
            out.add(text[index])
            index += 1
        if index >= len(text):
            _fail(
                f"Unclosed {kind.value} opened at character {position}: "
                f"no matching '{closer}' follows.",
                position,
            )
        index += len(closer)
        # Like the server, an empty link text leaves what follows it alone.
        if kind is _Kind.LINK and len(out) > start:
            index = _markdown_link_url(text, position, index)
        out.entity(start)
    return out.parsed()


def _markdown_link_url(text: str, position: int, index: int) -> int:
    """Check the "(url)" at `index`, just past a link's ']'; the index past its ')'."""
    if not text.startswith("(", index):
        _fail(
            f"The link opened at character {position} needs its URL in parentheses "
            "right after ']'.",
            position,
        )
    end = text.find(")", index + 1)
    if end < 0:
        _fail(f"The '(' at character {index} has no closing ')'.", index)
    problem = _link_problem(text[index + 1 : end])
    if problem is not None:
        _fail(f"The link URL opened by '(' at character {index} is invalid: {problem}.", index)
    return end + 1
