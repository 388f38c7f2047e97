"""Message text validation: each case is a text, a parse mode and what Telegram makes of it.

A valid case states the exact visible text; an invalid one a piece of the message and the
position (a character offset in the submitted text, or None for the text as a whole).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from app.messages.formatting import (
    MAX_MESSAGE_LENGTH,
    InvalidText,
    ParseMode,
    TextProblem,
    escape_html,
    escape_markdown_v2,
    validate_text,
    visible_text,
)

HTML = ParseMode.HTML
MD2 = ParseMode.MARKDOWN_V2
MD = ParseMode.MARKDOWN
PLAIN = None


@dataclass(frozen=True)
class Shows:
    """Telegram takes the text and shows exactly this."""

    visible: str


@dataclass(frozen=True)
class Refused:
    """Telegram refuses the text (or would alter it); the message names the position."""

    fragment: str
    position: int | None


def case(text: str, mode: ParseMode | None, expected: Shows | Refused, name: str) -> object:
    return pytest.param(text, mode, expected, id=name)


HTML_CASES = [
    case("plain text", HTML, Shows("plain text"), "html-plain"),
    case("<b>bold</b>", HTML, Shows("bold"), "html-bold"),
    case(
        "<strong>a</strong><i>b</i><em>c</em><u>d</u><ins>e</ins><s>f</s><strike>g</strike>"
        "<del>h</del>",
        HTML,
        Shows("abcdefgh"),
        "html-every-formatting-tag",
    ),
    case("<b>bold <i>italic <u>both</u></i></b>", HTML, Shows("bold italic both"), "html-nested"),
    case("<B>x</B> <b>y</B>", HTML, Shows("x y"), "html-uppercase-tags"),
    case("<b >x</b >", HTML, Shows("x"), "html-spaces-in-tags"),
    case("<tg-spoiler>x</tg-spoiler>", HTML, Shows("x"), "html-tg-spoiler"),
    case('<span class="tg-spoiler">x</span>', HTML, Shows("x"), "html-span-spoiler"),
    case("<span class=tg-spoiler>x</span>", HTML, Shows("x"), "html-unquoted-class"),
    case('<a href="https://x.example">link</a>', HTML, Shows("link"), "html-link"),
    case("<a href='https://x.example'>link</a>", HTML, Shows("link"), "html-link-single-quotes"),
    case('<a href="tg://user?id=123">Bob</a>', HTML, Shows("Bob"), "html-user-mention"),
    case('<a href="tg://resolve?domain=durov">x</a>', HTML, Shows("x"), "html-tg-resolve"),
    case('<a href="ton://wallet">x</a>', HTML, Shows("x"), "html-ton-link"),
    case('<a href="tonsite://site.ton">x</a>', HTML, Shows("x"), "html-tonsite-link"),
    case(
        '<a href="http://x.example:8080/a?b=1&c=2#f">x</a>',
        HTML,
        Shows("x"),
        "html-link-query-with-bare-ampersand",
    ),
    case('<a href="https://x.example/?a=1&amp;b=2">x</a>', HTML, Shows("x"), "html-href-entity"),
    case('<a href="HTTPS://X.EXAMPLE">x</a>', HTML, Shows("x"), "html-uppercase-scheme"),
    case('<a href="x.example/page">x</a>', HTML, Shows("x"), "html-link-without-scheme"),
    case('<a href="https://[::1]:8443/">x</a>', HTML, Shows("x"), "html-ipv6-link"),
    case('<a href="https://user:pw@x.example">x</a>', HTML, Shows("x"), "html-link-userinfo"),
    case('<a href="https://b\u00fccher.example">x</a>', HTML, Shows("x"), "html-idn-host"),
    case("<code>x &lt; y</code>", HTML, Shows("x < y"), "html-code"),
    case("<pre>block</pre>", HTML, Shows("block"), "html-pre"),
    case(
        '<pre><code class="language-python">print(1)</code></pre>',
        HTML,
        Shows("print(1)"),
        "html-pre-code-language",
    ),
    case("<pre><code>x</code></pre>", HTML, Shows("x"), "html-pre-code"),
    case("<blockquote>q</blockquote>", HTML, Shows("q"), "html-blockquote"),
    case("<blockquote expandable>q</blockquote>", HTML, Shows("q"), "html-expandable-quote"),
    case("<blockquote><pre>x</pre></blockquote>", HTML, Shows("x"), "html-pre-in-quote"),
    case(
        '<blockquote><b>x</b> <a href="https://x.example">l</a></blockquote>',
        HTML,
        Shows("x l"),
        "html-link-in-quote",
    ),
    case("<b><blockquote>q</blockquote></b>", HTML, Shows("q"), "html-quote-in-bold"),
    case('<b><a href="https://x.example">l</a></b>', HTML, Shows("l"), "html-link-in-bold"),
    case('<a href="https://x.example"><b>l</b></a>', HTML, Shows("l"), "html-bold-in-link"),
    case("<b><b>x</b></b>", HTML, Shows("x"), "html-bold-in-bold"),
    case(
        '<tg-emoji emoji-id="5368324170671202286">\U0001f44d</tg-emoji>',
        HTML,
        Shows("\U0001f44d"),
        "html-custom-emoji",
    ),
    case("&lt;&gt;&amp;&quot;", HTML, Shows('<>&"'), "html-named-entities"),
    case("&#65;&#x42;&#x1F600;&#1114110;", HTML, Shows("AB\U0001f600\U0010fffe"), "html-numeric"),
    case("a > b", HTML, Refused("'>' at character 2 must be escaped as &gt;", 2), "html-bare-gt"),
    case("<b></b>x", HTML, Shows("x"), "html-empty-entity"),
    case("  <b> x</b>  ", HTML, Shows(" x"), "html-left-trim-stops-at-an-entity"),
    case("  x<b> </b>", HTML, Shows("x"), "html-entity-in-the-trimmed-end"),
    case("<b>a</b>\n\n", HTML, Shows("a"), "html-trailing-newlines"),
    case("&#10;x&#9;y", HTML, Shows("x y"), "html-decoded-whitespace-is-cleaned"),
    # Refused.
    case("<b><i>x</b></i>", HTML, Refused("does not match <i>", 7), "html-bad-nesting"),
    case("<div>x</div>", HTML, Refused("Unsupported tag <div>", 0), "html-unknown-tag"),
    case("a < b", HTML, Refused("'<' at character 2 must be escaped as &lt;", 2), "html-bare-lt"),
    case("x<3", HTML, Refused("must be escaped as &lt;", 1), "html-lt-before-digit"),
    case("\U0001f600\U0001f600<div>", HTML, Refused("<div>", 2), "html-position-in-characters"),
    case("AT&T", HTML, Refused("'&' at character 2 must be escaped as &amp;", 2), "html-bare-amp"),
    case("a &nbsp; b", HTML, Refused("Unsupported entity &nbsp;", 2), "html-unknown-entity"),
    case("&amp b", HTML, Refused("must end with ';'", 0), "html-entity-without-semicolon"),
    case("&#0;", HTML, Refused("not a valid character", 0), "html-numeric-zero"),
    case("&#1114111;", HTML, Refused("not a valid character", 0), "html-numeric-too-large"),
    case("&#00000065;", HTML, Refused("not a valid character", 0), "html-numeric-too-long"),
    case("&#X41;", HTML, Refused("'&' at character 0", 0), "html-uppercase-hex-marker"),
    case("&#xD83D;&#xDE00;", HTML, Refused("surrogate", 0), "html-surrogate-entity"),
    case("<a>x</a>", HTML, Refused("needs a non-empty href", 0), "html-link-without-href"),
    case('<a href="">x</a>', HTML, Refused("needs a non-empty href", 0), "html-empty-href"),
    case("<a href>x</a>", HTML, Refused("needs a non-empty href", 0), "html-valueless-href"),
    case(
        '<a href="javascript:alert(1)">x</a>',
        HTML,
        Refused("scheme 'javascript' is not supported", 0),
        "html-javascript-link",
    ),
    case(
        '<a href="mailto:a@b.example">x</a>',
        HTML,
        Refused("scheme 'mailto'", 0),
        "html-mailto-link",
    ),
    case('<a href="ftp://x.example">x</a>', HTML, Refused("scheme 'ftp'", 0), "html-ftp-link"),
    case(
        '<a href="https://x.example/a b">x</a>',
        HTML,
        Refused("whitespace", 0),
        "html-link-with-space",
    ),
    case('<a href="https://localhost/">x</a>', HTML, Refused("no dot", 0), "html-dotless-host"),
    case('<a href="https://x.example:0/">x</a>', HTML, Refused("port", 0), "html-port-zero"),
    case('<a href="https://x.example:99999">x</a>', HTML, Refused("port", 0), "html-big-port"),
    case('<a href="https://">x</a>', HTML, Refused("no host", 0), "html-link-without-host"),
    case('<a href="https://x_y.example/">x</a>', HTML, Shows("x"), "html-underscore-in-host"),
    case('<a href="https://x^y.example/">x</a>', HTML, Refused("'^'", 0), "html-bad-host-char"),
    case('<a href="https://[nope]/">x</a>', HTML, Refused("IPv6", 0), "html-bad-ipv6-host"),
    case('<a href="tg://">x</a>', HTML, Refused("no host", 0), "html-tg-without-host"),
    case('<a href="tg://a.b">x</a>', HTML, Refused("letters, digits", 0), "html-tg-dotted-host"),
    case('<a href="tg://user:1">x</a>', HTML, Refused("no user or port", 0), "html-tg-port"),
    case(
        '<a href="tg:https://x.example">x</a>',
        HTML,
        Refused("cannot hold another URL", 0),
        "html-tg-wrapping-a-url",
    ),
    case("<span>x</span>", HTML, Refused('needs class="tg-spoiler"', 0), "html-bare-span"),
    case('<span class="big">x</span>', HTML, Refused("tg-spoiler", 0), "html-span-other-class"),
    case(
        '<b class="x">y</b>',
        HTML,
        Refused("Unsupported attribute class on the <b> tag", 0),
        "html-attribute-on-b",
    ),
    case(
        '<a HREF="https://x.example">x</a>',
        HTML,
        Refused("Unsupported attribute HREF", 0),
        "html-attribute-names-are-lowercase",
    ),
    case('<code class="python">x</code>', HTML, Refused("language-", 0), "html-code-class"),
    case("<br>", HTML, Refused("Unsupported tag <br>", 0), "html-br"),
    case("a<br/>b", HTML, Refused("A line break is a newline", 1), "html-self-closing-br"),
    case("<b/>", HTML, Refused("Self-closing tag <b/>", 0), "html-self-closing-b"),
    case('<a href="https://x.example"/>', HTML, Refused("Self-closing", 0), "html-self-closing-a"),
    case("<b =x>y</b>", HTML, Refused("Unexpected character '='", 3), "html-nameless-attribute"),
    case(
        "<a href=https://x.example>x</a>",
        HTML,
        Refused("must be in quotes", 8),
        "html-unquoted-url",
    ),
    case("<code><b>x</b></code>", HTML, Refused("cannot be inside <code>", 6), "html-b-in-code"),
    case("<b><code>x</code></b>", HTML, Refused("cannot be inside <b>", 3), "html-code-in-b"),
    case("<i><pre>x</pre></i>", HTML, Refused("cannot be inside <i>", 3), "html-pre-in-i"),
    case(
        '<pre>a<code class="language-python">x</code></pre>',
        HTML,
        Refused("must wrap the whole <pre> block", 6),
        "html-code-not-at-pre-start",
    ),
    case(
        '<pre><code class="language-python">x</code>b</pre>',
        HTML,
        Refused("must wrap the whole <pre> block", 5),
        "html-code-not-at-pre-end",
    ),
    case(
        "<pre><code>a</code><code>b</code></pre>",
        HTML,
        Refused("must wrap the whole <pre> block", 19),
        "html-two-codes-in-pre",
    ),
    case(
        '<a href="https://a.example"><a href="https://b.example">x</a></a>',
        HTML,
        Refused("cannot be inside <a>", 28),
        "html-link-in-link",
    ),
    case(
        '<a href="https://a.example"><b><a href="https://b.example">x</a></b></a>',
        HTML,
        Refused("cannot be inside <a> (opened at character 0)", 31),
        "html-link-in-link-through-bold",
    ),
    case(
        "<blockquote><blockquote>x</blockquote></blockquote>",
        HTML,
        Refused("cannot be inside <blockquote>", 12),
        "html-nested-quotes",
    ),
    case(
        '<a href="https://x.example"><tg-emoji emoji-id="1">y</tg-emoji></a>',
        HTML,
        Refused("cannot be inside <a>", 28),
        "html-emoji-in-link",
    ),
    case("<tg-emoji>x</tg-emoji>", HTML, Refused("numeric emoji-id", 0), "html-emoji-without-id"),
    case(
        '<tg-emoji emoji-id="abc">x</tg-emoji>',
        HTML,
        Refused("numeric emoji-id", 0),
        "html-emoji-id-not-a-number",
    ),
    case("<b>x", HTML, Refused("Unclosed <b> tag opened at character 0", 0), "html-unclosed"),
    case("x <b>y <i>z</i>", HTML, Refused("Unclosed <b>", 2), "html-unclosed-outer"),
    case("x</b>", HTML, Refused("closes no open tag", 1), "html-stray-end-tag"),
    case("<b>x</>", HTML, Refused("has no name; write </b>", 4), "html-nameless-end-tag"),
    case("<b>x</b y>", HTML, Refused("must end with '>'", 4), "html-attribute-in-end-tag"),
    case("<b>x</b", HTML, Refused("must end with '>'", 4), "html-end-tag-cut-short"),
    case("<b", HTML, Refused("never closed with '>'", 0), "html-start-tag-cut-short"),
    case(
        '<a href="https://x.example>x</a>',
        HTML,
        Refused("never closed with '>'", 0),
        "html-unterminated-quote",
    ),
]

MARKDOWN_V2_CASES = [
    case("*bold*", MD2, Shows("bold"), "md2-bold"),
    case("_italic_", MD2, Shows("italic"), "md2-italic"),
    case("__underline__", MD2, Shows("underline"), "md2-underline"),
    case("~strike~", MD2, Shows("strike"), "md2-strikethrough"),
    case("||spoiler||", MD2, Shows("spoiler"), "md2-spoiler"),
    case("*_x_*", MD2, Shows("x"), "md2-italic-in-bold"),
    case("*bold _italic ~both~_*", MD2, Shows("bold italic both"), "md2-deep-nesting"),
    case("_a __b___", MD2, Shows("a b"), "md2-underline-closing-inside-italic"),
    case("*multi\nline*", MD2, Shows("multi\nline"), "md2-entity-over-lines"),
    case("Price: 10\\.5\\!", MD2, Shows("Price: 10.5!"), "md2-escaped-dot-and-bang"),
    case(
        "\\_\\*\\[\\]\\(\\)\\~\\`\\>\\#\\+\\-\\=\\|\\{\\}\\.\\!\\\\",
        MD2,
        Shows("_*[]()~`>#+-=|{}.!\\"),
        "md2-every-escape",
    ),
    case("C:\\Users", MD2, Shows("C:Users"), "md2-backslash-escapes-any-ascii"),
    case("caf\\\u00e9", MD2, Shows("caf\\\u00e9"), "md2-backslash-before-non-ascii"),
    case("[link](https://x.example)", MD2, Shows("link"), "md2-link"),
    case(
        "[link](https://x.example/a_\\(b\\))",
        MD2,
        Shows("link"),
        "md2-link-with-escaped-paren",
    ),
    case("[Bob](tg://user?id=123)", MD2, Shows("Bob"), "md2-user-mention"),
    case("[*bold link*](https://x.example)", MD2, Shows("bold link"), "md2-bold-in-link"),
    case("`code \\\\ with \\` quote`", MD2, Shows("code \\ with ` quote"), "md2-code-escapes"),
    case("`a.b!c*d`", MD2, Shows("a.b!c*d"), "md2-code-keeps-specials"),
    case("```python\nprint(1)\n```", MD2, Shows("print(1)"), "md2-pre-with-language"),
    case("```\ncode\n```", MD2, Shows("code"), "md2-pre"),
    case("```python```", MD2, Shows("python"), "md2-pre-language-needs-whitespace"),
    case(">quote\n>line two\nafter", MD2, Shows("quote\nline two\nafter"), "md2-blockquote"),
    case("**>expandable\n>quote||", MD2, Shows("expandable\nquote"), "md2-expandable-quote"),
    case("**>one line||\nafter", MD2, Shows("one line\nafter"), "md2-expandable-then-text"),
    case(">q *b\n>c*", MD2, Shows("q b\nc"), "md2-entity-over-quote-lines"),
    case(
        "![\U0001f44d](tg://emoji?id=5368324170671202286)",
        MD2,
        Shows("\U0001f44d"),
        "md2-custom-emoji",
    ),
    # Refused.
    case("Hello.", MD2, Refused("Character '.' at character 5 is reserved", 5), "md2-bare-dot"),
    case("Hi!", MD2, Refused("Character '!' at character 2 is reserved", 2), "md2-bare-bang"),
    case("a-b", MD2, Refused("'-'", 1), "md2-bare-minus"),
    case("a)b", MD2, Refused("')'", 1), "md2-bare-paren"),
    case("x > y", MD2, Refused("'>' at character 2 is reserved", 2), "md2-gt-mid-line"),
    case("|x", MD2, Refused("'|'", 0), "md2-single-pipe"),
    case("*bold", MD2, Refused("Unclosed bold text opened at character 0", 0), "md2-unclosed"),
    case("a _b", MD2, Refused("Unclosed italic text opened at character 2", 2), "md2-open-italic"),
    case(
        "___x___", MD2, Refused("Unclosed italic text opened at character 6", 6), "md2-underscores"
    ),
    case("*a _b* c_", MD2, Refused("Unclosed italic text", 8), "md2-crossed-entities"),
    case("`code", MD2, Refused("Unclosed inline code", 0), "md2-unclosed-code"),
    case("```\ncode", MD2, Refused("Unclosed pre block", 0), "md2-unclosed-pre"),
    case("```\na`b```", MD2, Refused("inside a pre block must be escaped", 5), "md2-quote-in-pre"),
    case("[text]", MD2, Refused("needs its URL in parentheses", 0), "md2-link-without-url"),
    case(
        "[text](https://x.example",
        MD2,
        Refused("'(' at character 6 has no closing ')'", 6),
        "md2-unclosed-url",
    ),
    case(
        "[text](javascript:alert\\(1\\))",
        MD2,
        Refused("scheme 'javascript'", 6),
        "md2-javascript-link",
    ),
    case(
        "[`code`](https://x.example)", MD2, Refused("cannot be inside the link", 1), "md2-code-link"
    ),
    case(
        "[a [b](https://b.example)](https://a.example)",
        MD2,
        Refused("inside the link", 3),
        "md2-link-in-link",
    ),
    case(
        ">quote *bold\n>more*\nend *x",
        MD2,
        Refused("Unclosed bold text opened at character 24", 24),
        "md2-unclosed-after-quote",
    ),
    case(">q *b\nafter*", MD2, Refused("must end on its line", 3), "md2-entity-past-quote-end"),
    case("![x](https://x.example)", MD2, Refused("tg://emoji?id=", 4), "md2-emoji-bad-url"),
    case("![x] y", MD2, Refused("needs (tg://emoji?id=...)", 0), "md2-emoji-without-url"),
]

MARKDOWN_CASES = [
    case("*b* _i_ `c` [l](https://x.example)", MD, Shows("b i c l"), "md-all-entities"),
    case("```python\nx = 1\n```", MD, Shows("x = 1"), "md-pre"),
    case("snake\\_case", MD, Shows("snake_case"), "md-escaped-underscore"),
    case("a.b! (c) #d", MD, Shows("a.b! (c) #d"), "md-no-other-reserved-characters"),
    case("*a _b_*", MD, Shows("a _b_"), "md-no-nesting"),
    case("C:\\Users", MD, Shows("C:\\Users"), "md-backslash-kept"),
    case("[](https://x.example)", MD, Shows("(https://x.example)"), "md-empty-link-text"),
    case("*bold", MD, Refused("Unclosed bold text opened at character 0", 0), "md-unclosed"),
    case("2 * 3 = 6", MD, Refused("Unclosed bold text opened at character 2", 2), "md-lone-star"),
    case("snake_case", MD, Refused("Unclosed italic text", 5), "md-lone-underscore"),
    case("[INFO] started", MD, Refused("needs its URL in parentheses", 0), "md-bracketed-word"),
    case("[x](https://x.example", MD, Refused("no closing ')'", 3), "md-unclosed-url"),
    case("[x](javascript:void)", MD, Refused("scheme 'javascript'", 3), "md-javascript-link"),
]

LENGTH_CASES = [
    case("a" * 4096, PLAIN, Shows("a" * 4096), "length-4096"),
    case("a" * 4097, PLAIN, Refused("4097 characters long", None), "length-4097"),
    case("<b>" + "a" * 4096 + "</b>", HTML, Shows("a" * 4096), "length-4096-in-html-markup"),
    case("*" + "a" * 4096 + "*", MD2, Shows("a" * 4096), "length-4096-in-markdown-v2-markup"),
    case("&amp;" * 4096, HTML, Shows("&" * 4096), "length-4096-decoded-entities"),
    case("<b>" + "a" * 4097 + "</b>", HTML, Refused("4097 characters", None), "length-4097-html"),
    # Code points, not UTF-16 code units: each of these emoji is a surrogate pair in UTF-16.
    case("\U0001f600" * 4096, PLAIN, Shows("\U0001f600" * 4096), "length-4096-emoji"),
    case("\U0001f600" * 4097, PLAIN, Refused("4097 characters", None), "length-4097-emoji"),
    case("\U0001f600" * 2049, PLAIN, Shows("\U0001f600" * 2049), "length-4098-utf16-units"),
    case("a" * 4096 + " \n \n", PLAIN, Shows("a" * 4096), "length-trailing-blanks-not-counted"),
    case("a\r\n" * 2048, PLAIN, Shows(("a\n" * 2048)[:-1]), "length-carriage-returns-dropped"),
    case("", PLAIN, Refused("empty", None), "empty"),
    case("   \n\t ", PLAIN, Refused("empty", None), "whitespace-only"),
    case("\u200b\u00a0\u3000\ufeff", PLAIN, Refused("empty", None), "invisible-only"),
    case("<b></b>", HTML, Refused("empty", None), "empty-after-html"),
    case("<b> </b>\n", HTML, Refused("empty", None), "blank-after-html"),
    case("**", MD2, Refused("empty", None), "empty-after-markdown-v2"),
]

PLAIN_CASES = [
    case("<b>not *parsed*</b> a.b", PLAIN, Shows("<b>not *parsed*</b> a.b"), "plain-no-markup"),
    case("a\r\nb\tc\x00d", PLAIN, Shows("a\nb c d"), "plain-control-characters"),
    case("a\u2028b\u202ec\u0333d", PLAIN, Shows("abcd"), "plain-dropped-characters"),
    case("\u200e\u200f\u200ex", PLAIN, Shows("\u200c\u200c\u200ex"), "plain-direction-mark-run"),
    case("\n  x  \n", PLAIN, Shows("x"), "plain-trimmed"),
    case("a\ud800b", PLAIN, Refused("lone UTF-16 surrogate", 1), "plain-lone-surrogate"),
    case("<b>\udfff</b>", HTML, Refused("surrogate", 3), "html-lone-surrogate"),
]


@pytest.mark.parametrize(
    ("text", "mode", "expected"),
    HTML_CASES + MARKDOWN_V2_CASES + MARKDOWN_CASES + LENGTH_CASES + PLAIN_CASES,
)
def test_text(text: str, mode: ParseMode | None, expected: Shows | Refused) -> None:
    if isinstance(expected, Shows):
        assert visible_text(text, mode) == expected.visible
        validate_text(text, mode)
        return
    with pytest.raises(InvalidText) as raised:
        validate_text(text, mode)
    problem = raised.value.problem
    assert expected.fragment in problem.message
    assert problem.position == expected.position


def test_markup_errors_are_raised_by_visible_text_too() -> None:
    with pytest.raises(InvalidText) as raised:
        visible_text("<b>x", HTML)
    assert raised.value.problem == TextProblem("Unclosed <b> tag opened at character 0.", 0)


def test_visible_text_leaves_the_length_to_validate_text() -> None:
    assert visible_text("<b></b>", HTML) == ""
    assert visible_text("a" * 5000, PLAIN) == "a" * 5000


def test_the_problem_is_a_value_error_carrying_its_sentence() -> None:
    with pytest.raises(ValueError, match=r"Unsupported tag <div> at character 0\.") as raised:
        validate_text("<div>", HTML)
    assert isinstance(raised.value, InvalidText)
    assert str(raised.value) == raised.value.problem.message
    with pytest.raises(dataclasses.FrozenInstanceError):
        raised.value.problem.position = 1  # type: ignore[misc]


def test_the_message_never_carries_the_text() -> None:
    text = "<b>" + "confidential " * 400 + "<div>"
    with pytest.raises(InvalidText) as raised:
        validate_text(text, HTML)
    assert "confidential" not in raised.value.problem.message
    assert raised.value.problem.position == len(text) - 5
    long_tag = "<" + "x" * 300 + ">"
    with pytest.raises(InvalidText) as raised:
        validate_text(long_tag, HTML)
    assert len(raised.value.problem.message) < 100


def test_parse_modes_are_the_bot_api_strings() -> None:
    assert [mode.value for mode in ParseMode] == ["HTML", "MarkdownV2", "Markdown"]
    assert ParseMode("MarkdownV2") is MD2
    assert MAX_MESSAGE_LENGTH == 4096


def test_escapes() -> None:
    assert escape_html('<a href="x">&') == '&lt;a href="x"&gt;&amp;'
    assert escape_markdown_v2("a.b_c\\d") == "a\\.b\\_c\\\\d"


# --- Properties ------------------------------------------------------------------------

ESCAPES = {HTML: escape_html, MD2: escape_markdown_v2}
escaping_modes = st.sampled_from([HTML, MD2])

# Texts Telegram shows as they are: no control, format or separator characters (which
# the server drops or turns into spaces), and no blank at either end.
shown_as_is = st.text(
    alphabet=st.characters(
        exclude_categories=("Cc", "Cs", "Cf", "Zs", "Zl", "Zp"),
        exclude_characters="\u030a\u0333\u033f\u2800\ufffc",
        include_characters=" \n",
    ),
    min_size=1,
    max_size=300,
).filter(lambda text: text == text.strip(" \n") and bool(text.strip()))

# Repetitions of a short piece, of lengths around the limit.
near_the_limit = st.builds(
    lambda piece, length: (piece * length)[:length],
    st.text(min_size=1, max_size=3),
    st.integers(MAX_MESSAGE_LENGTH - 5, MAX_MESSAGE_LENGTH + 5),
)

MARKUP_CHARACTERS = [
    *"<>&/;#x=\"' abiu*_~|[]()`!\\.-:\n\r",
    "<b>",
    "</b>",
    "<a href=",
    "https://x.example",
    "&amp;",
    "&#",
    "```",
    "||",
    "__",
    "\n>",
    "**>",
    "\U0001f600",
]
markup_soup = st.lists(
    st.one_of(st.sampled_from(MARKUP_CHARACTERS), st.characters()), max_size=40
).map("".join)


def outcome(text: str, mode: ParseMode | None) -> str | None:
    try:
        validate_text(text, mode)
    except InvalidText as error:
        return error.problem.message
    return None


@given(text=st.text(), mode=escaping_modes)
@example(text=">quote", mode=MD2)
@example(text="&amp; <b> \\", mode=HTML)
@example(text="a\\b", mode=MD2)
def test_escaped_text_shows_as_plain_text(text: str, mode: ParseMode) -> None:
    assert visible_text(ESCAPES[mode](text), mode) == visible_text(text, PLAIN)


@given(text=st.one_of(st.text(), near_the_limit), mode=escaping_modes)
def test_escaped_text_is_valid_exactly_when_plain_text_is(text: str, mode: ParseMode) -> None:
    assert outcome(ESCAPES[mode](text), mode) == outcome(text, PLAIN)


@given(text=shown_as_is, mode=escaping_modes)
@example(text="a" * MAX_MESSAGE_LENGTH, mode=HTML)
@example(text="<" * MAX_MESSAGE_LENGTH, mode=MD2)
def test_escaped_text_is_valid_and_shown_as_it_is(text: str, mode: ParseMode) -> None:
    escaped = ESCAPES[mode](text)
    validate_text(escaped, mode)
    assert visible_text(escaped, mode) == text
    wrapped = f"<b>{escaped}</b>" if mode is HTML else f"*{escaped}*"
    assert visible_text(wrapped, mode) == text


@given(text=markup_soup, mode=st.sampled_from([HTML, MD2, MD, PLAIN]))
def test_any_text_is_shown_or_refused_at_a_position_inside_it(
    text: str, mode: ParseMode | None
) -> None:
    try:
        shown = visible_text(text, mode)
    except InvalidText as error:
        position = error.problem.position
        assert position is not None
        assert 0 <= position < len(text)
        return
    # Markup only ever takes characters away.
    assert len(shown) <= len(text)
