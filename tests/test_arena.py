"""The arena's conversation state: blind pairing, each side's history, message limits and safe Markdown."""

import random
import re

import pytest

from demo.arena import (
    Conversation,
    Side,
    TurnView,
    chat_messages,
    label,
    new_conversation,
    safe_markdown,
)
from demo.protocol import MAX_MESSAGE_CHARS, check_message


# -- pairing and reveal --------------------------------------------------------------------------------------
def test_blind_pairing_draws_both_orders_and_non_blind_keeps_left_on_a():
    blind = {new_conversation(True, random.Random(seed)).models for seed in range(40)}
    assert blind == {(0, 1), (1, 0)}
    assert {new_conversation(False, random.Random(seed)).models for seed in range(40)} == {(0, 1)}
    assert len({new_conversation(True).id for _ in range(50)}) == 50  # fresh ids, system randomness by default


def test_names_are_revealed_only_after_the_verdict_in_blind_mode():
    conv = Conversation(id="c", models=(1, 0), blind=True)
    assert not conv.revealed
    assert label("a", "lima-1030", conv) == "### Model A"
    assert label("b", "lima-1000", None) == "### Model B"
    conv.verdict = "tie"
    assert conv.revealed
    assert label("a", "lima-1030", conv) == "### Model A: `lima-1030`"
    assert Conversation(id="d", models=(0, 1), blind=False).revealed


# -- one side's history ----------------------------------------------------------------------------------------
def side_with_every_kind_of_turn() -> Side:
    return Side(
        turns=[
            TurnView(user="hi", assistant="hello", turn_id="t1"),
            TurnView(user="and?", assistant="half an ans", turn_id="t2", error="the server answered 500"),
            TurnView(user="again", assistant="fine", turn_id="t3"),
            TurnView(user="last one"),  # open: still streaming
        ]
    )


def test_history_holds_answered_turns_and_the_open_message_but_no_failed_turn():
    # The failed turn is left out whole, so user and assistant still alternate for the model's template.
    assert side_with_every_kind_of_turn().history() == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "fine"},
        {"role": "user", "content": "last one"},
    ]
    assert Side().history() == []


def test_only_stored_successful_turns_are_rateable():
    assert [key[:2] for key in side_with_every_kind_of_turn().rateable()] == [(1, "t1"), (3, "t3")]
    assert Side(turns=[TurnView(user="x", assistant="streamed")]).rateable() == ()


def test_chat_messages_show_the_error_line_and_the_streaming_text():
    shown = chat_messages(side_with_every_kind_of_turn(), streaming="partial <b>answer</b>")
    assert [m["role"] for m in shown] == ["user", "assistant"] * 4
    assert shown[1]["content"] == "hello"
    assert shown[3]["content"] == "half an ans\n\n⚠️ **the server answered 500**"
    assert shown[5]["content"] == "fine"
    assert shown[7]["content"] == "partial &lt;b>answer&lt;/b>"
    assert chat_messages(side_with_every_kind_of_turn())[7]["content"] == "…"  # nothing streamed yet
    failed_early = Side(turns=[TurnView(user="q", turn_id="t", error="cannot reach http://x: <html>")])
    assert chat_messages(failed_early)[1]["content"] == "⚠️ **cannot reach http://x: &lt;html>**"


def test_an_unclosed_code_block_in_a_failed_answer_does_not_swallow_the_error_line():
    side = Side(turns=[TurnView(user="q", assistant="```python\nprint(1", turn_id="t", error="timed out")])
    html = render(chat_messages(side)[1]["content"])
    assert '<pre><code class="language-python">print(1\n</code></pre>' in html
    assert "<p>⚠️ <strong>timed out</strong></p>" in html


# -- what a message may be -------------------------------------------------------------------------------------
def test_check_message():
    assert check_message("  hello \n") == "hello"
    assert check_message("x" * MAX_MESSAGE_CHARS) == "x" * MAX_MESSAGE_CHARS
    for empty in (None, "", "  \n\t"):
        with pytest.raises(ValueError, match="type a message first"):
            check_message(empty)
    with pytest.raises(ValueError, match=f"limited to {MAX_MESSAGE_CHARS} characters .this one has 4001"):
        check_message("x" * (MAX_MESSAGE_CHARS + 1))


# -- Markdown that loads nothing -------------------------------------------------------------------------------
def render(markdown: str) -> str:
    """HTML from a real CommonMark renderer with raw HTML on, as a chat window would allow before sanitising."""
    markdown_it = pytest.importorskip("markdown_it")
    return markdown_it.MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(markdown)


SAFE_TAGS = {"p", "code", "pre", "em", "strong", "a", "ul", "ol", "li", "blockquote", "h1", "h2", "h3", "br", "hr"}
SAFE_TAGS |= {"table", "thead", "tbody", "tr", "th", "td", "s"}


def tags(html: str) -> set[str]:
    return set(re.findall(r"<([a-zA-Z][a-zA-Z0-9-]*)", html))


def test_raw_html_shows_as_text():
    assert safe_markdown("<script>alert(1)</script>") == "&lt;script>alert(1)&lt;/script>"
    assert safe_markdown("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)>"
    html = render(safe_markdown("a <img src=x onerror=alert(1)> b"))
    assert html == "<p>a &lt;img src=x onerror=alert(1)&gt; b</p>\n"


def test_an_image_becomes_inline_code():
    html = render(safe_markdown("look: ![a](http://x/y.png)"))
    assert html == "<p>look: <code>![a](http://x/y.png)</code></p>\n"


def test_code_is_left_as_written():
    for code in (
        "```python\nif a < b and c > d:\n    print('<b>![a](u)</b>')\n```",
        "Run `ls -la` then `grep x`.",
        "```\n```",
        "text\n\n~~~\nx\n~~~\n",
    ):
        assert safe_markdown(code) == code
    # inline code holding `<` comes back as the same code element, whatever a renderer made of its backticks
    assert render(safe_markdown("use `vector<int>` here")) == "<p>use <code>vector&lt;int&gt;</code> here</p>\n"
    assert render(safe_markdown("a `![x](http://x/y.png)` b")) == "<p>a <code>![x](http://x/y.png)</code> b</p>\n"


@pytest.mark.parametrize(
    "text",
    [
        "![a [b] c](http://x/y.png)",  # brackets inside the alt text
        "![a][r]\n\n[r]: http://x/y.png",  # a reference-style image
        "![a](http://x/`y`.png)",  # backticks inside the URL
        "see ```<img src=http://x/y.png>",  # three backticks that open no block
        "\\`<img src=http://x/y.png>`",  # an escaped backtick opens no code span
        "`<img src=http://x/y.png>``",  # runs of different lengths close nothing
        "`a\nb` <img src=http://x/y.png> `",  # a code span across a line break
        "[a](`) <img src=http://x/y.png> `",  # a backtick inside a link destination
        "- ```\n  <b>\n  ```\n  <img src=http://x/y.png>\n",  # a fence inside a list item
        "~~~\n```\n~~~\n<img src=http://x/y.png>",  # a tilde fence holding backticks
        " ```\n```\n<img src=http://x/y.png>",  # an indented fence closed by an unindented one
        "| `a | ![b](http://x/y.png) |",  # a stray backtick before an image
    ],
)
def test_corners_of_markdown_load_no_image(text):
    html = render(safe_markdown(text))
    assert "<img" not in html and tags(html) <= SAFE_TAGS, html


def test_no_mix_of_markdown_fragments_loads_an_image_or_adds_a_tag():
    pieces = ["`", "``", "```", "~~~", "\\", "<img src=x>", "<", "![a](u)", "![", "](", "[r]: u", "[a](", ")"]
    pieces += ["\n", "\n\n", "- ", "> ", "1. ", "   ", "a", " ", "|", "*", "!", "[", "]"]
    rng = random.Random(1)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 30)))
        html = render(safe_markdown(text))
        assert "<img" not in html and tags(html) <= SAFE_TAGS, (text, html)


def test_redact_hides_every_name_of_a_side_and_first_words_quote_an_answer():
    from demo.arena import first_words, redact

    error = "cannot reach http://10.0.0.5:8081: is the server running? (org/lima-1030 on http://10.0.0.5:8081)"
    shown = redact(error, ["http://10.0.0.5:8081", "org/lima-1030", "", "B"], "b")
    assert shown == "cannot reach model B: is the server running? (model B on model B)"
    ten = "one two three four five six seven eight nine ten"
    assert first_words(ten) == "one two three four five six seven eight …"
    assert first_words("  short\nanswer ") == "short answer"
