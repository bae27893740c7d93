"""The composer: per-recipient rendering, signed links, headers, and the per-content cache."""

from __future__ import annotations

import json
from functools import partial

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailpipe.compose import Composer
from mailpipe.content import Tokens, add_tracking
from mailpipe.content.prepared import PreparedContent, TrackedBody
from mailpipe.errors import PermanentSendError
from mailpipe.pipeline.jobs import Job
from mailpipe.store import Content

BASE = "https://mail.example.test"
TOKENS = Tokens(b"0123456789abcdef0123456789abcdef")
FRAGMENTS = [
    '<a href="https://a.example/x?y=1&amp;z=2">a</a>',
    "<a href='http://b.example/'>b</a>",
    "<A HREF=https://c.example/c>c</A>",
    '<a href="mailto:x@example.com">m</a>',
    '<a href="#top">t</a>',
    "<a>bare</a>",
    "<p>text &amp; more</p>",
    "<!-- <a href='https://hidden.example/'> -->",
    "<script>var a = '<a href=\"https://s.example/\">';</script>",
    "<body>",
    "</body>",
    "</BODY >",
    "<img src='https://img.example/i.png'>",
    " ",
    "\u00e9\u2713",
    "<",
    ">",
]


def job(content: Content, to: str = "ann@example.com", rid: int = 7, data: object = None) -> Job:
    return Job(rid, "t", to, content, data=None if data is None else json.dumps(data))


@given(st.lists(st.sampled_from(FRAGMENTS), max_size=12), st.booleans(), st.booleans())
def test_a_static_body_filled_per_recipient_equals_tracking_it_per_recipient(
    parts: list[str], pixel: bool, clicks: bool
) -> None:
    html = "".join(parts)
    body = TrackedBody.build(html, pixel=pixel, clicks=clicks)
    assert body is not None
    for rid in (1, 2):
        open_url = TOKENS.open_url(BASE, rid) if pixel else None
        click = partial(TOKENS.click_url, BASE, rid) if clicks else None
        assert body.fill(open_url, click) == add_tracking(html, pixel_url=open_url, click_url=click)


def test_a_body_holding_nul_is_tracked_per_recipient() -> None:
    assert TrackedBody.build("a\x00b", pixel=True, clicks=True) is None
    prepared = PreparedContent("s", '<a href="https://x.example/">\x00</a>', None)
    rendered = prepared.finish(
        {},
        unsubscribe_url="u",
        open_url="https://o.example/p",
        click_url=lambda url: "https://c.example/?u=" + url,
    )
    assert 'href="https://c.example/?u=https://x.example/"' in rendered.html
    assert 'src="https://o.example/p"' in rendered.html


def test_every_email_carries_its_own_signed_links_and_one_click_headers() -> None:
    content = Content(
        1,
        "Hi {{ name }}",
        '<p>{{ name }}</p><a href="https://x.example/">x</a>'
        '<a href="{{ unsubscribe_url }}">stop</a>',
    )
    composer = Composer("sender@example.com", TOKENS, BASE)
    email = composer.compose(job(content, data={"name": "Ann"}))
    unsubscribe = TOKENS.unsubscribe_url(BASE, 7, "ann@example.com")
    assert email.subject == "Hi Ann"
    assert dict(email.headers) == {
        "X-Request-ID": "7",
        "Feedback-ID": "t:1:mailpipe:example.com",
        "List-Unsubscribe": f"<{unsubscribe}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert email.text == f"Ann\n\nx (https://x.example/)stop ({unsubscribe})\n"
    assert TOKENS.click_url(BASE, 7, "https://x.example/").replace("&", "&amp;") in email.html
    assert f'href="{unsubscribe.replace("&", "&amp;")}"' in email.html  # never click-tracked
    assert TOKENS.open_url(BASE, 7).replace("&", "&amp;") in email.html
    other = composer.compose(job(content, "bob@example.com", 8, {"name": "Bob"}))
    assert other.subject == "Hi Bob"
    assert TOKENS.open_url(BASE, 8).replace("&", "&amp;") in other.html


def test_content_is_prepared_once_and_tracking_follows_its_switches() -> None:
    composer = Composer("s@example.com", TOKENS, BASE)
    quiet = Content(2, "s", '<a href="https://x.example/">x</a>', "plain", False, False)
    first = composer.compose(job(quiet))
    assert (first.html, first.text) == ('<a href="https://x.example/">x</a>', "plain")
    assert composer._prepare(quiet) is composer._prepare(quiet)
    assert dict(first.headers)["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_without_tokens_nothing_is_tracked() -> None:
    email = Composer("s@example.com").compose(job(Content(3, "s", "<p>x</p>")))
    assert (email.html, email.text, email.headers) == (
        "<p>x</p>", "x\n", (("X-Request-ID", "7"), ("Feedback-ID", "t:3:mailpipe:example.com"))
    )


@pytest.mark.parametrize(
    ("content", "data", "words"),
    [
        (Content(4, "Hi {{ name }}", "x"), {}, ["'name' is undefined", "subject"]),
        (Content(5, "s", "{{ 1 / 0 }}"), {}, ["content", "division by zero"]),
        (Content(6, "s", "{% if %}"), {}, ["content"]),
        (Content(7, "{{ a }}", "x"), {"a": "x\ny"}, ["line break"]),
    ],
)
def test_a_render_failure_is_a_permanent_template_error(
    content: Content, data: dict[str, str], words: list[str]
) -> None:
    with pytest.raises(PermanentSendError) as caught:
        Composer("s@example.com", TOKENS, BASE).compose(job(content, data=data or None))
    assert caught.value.code == "TemplateError"
    assert "recipient ann@example.com" in caught.value.message
    for word in words:
        assert word in caught.value.message


def test_stored_data_that_is_not_an_object_is_a_template_error() -> None:
    broken = Job(1, "t", "ann@example.com", Content(8, "s", "x"), data="[1]")
    with pytest.raises(PermanentSendError, match="TemplateError"):
        Composer("s@example.com", TOKENS, BASE).compose(broken)


def test_a_unicode_domain_stored_earlier_is_sent_as_punycode() -> None:
    content = Content(1, "Hi", '<a href="{{ unsubscribe_url }}">stop</a>')
    email = Composer("sender@example.com", TOKENS, BASE).compose(
        job(content, "ann@bücher.de", 9)
    )
    assert email.to == "ann@xn--bcher-kva.de"
    # The link still names the address as stored, which unsubscribing checks.
    assert TOKENS.unsubscribe_url(BASE, 9, "ann@bücher.de") in dict(email.headers)[
        "List-Unsubscribe"]


@pytest.mark.parametrize(
    ("topic", "sender_id", "header"),
    [
        ("spring-sale", "example.com", "spring-sale:1:mailpipe:example.com"),
        ("a:b c\r\nd", "ex:ample.com", "abcd:1:mailpipe:example.com"),  # colons, spaces, CR/LF
        (None, "example.com", "none:1:mailpipe:example.com"),
        ("x" * 100, "y" * 100, f"{'x' * 40}:1:mailpipe:{'y' * 40}"),  # length bounded
        ("ünï", "example.com", "n:1:mailpipe:example.com"),  # ASCII only
        ("ü", "example.com", "none:1:mailpipe:example.com"),
    ],
)
def test_the_feedback_id_header(topic: str | None, sender_id: str, header: str) -> None:
    composer = Composer("News <news@example.com>", feedback_sender_id=sender_id)
    email = composer.compose(Job(7, topic, "ann@example.com", Content(1, "s", "<p>x</p>")))
    assert dict(email.headers)["Feedback-ID"] == header


def test_the_feedback_sender_id_defaults_to_the_sending_domain() -> None:
    composer = Composer("News <news@mail.example.com>")
    email = composer.compose(Job(7, "t", "ann@example.com", Content(1, "s", "<p>x</p>")))
    assert dict(email.headers)["Feedback-ID"] == "t:1:mailpipe:mail.example.com"
