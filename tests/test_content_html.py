"""Link rewriting, open pixel, link extraction and plain-text derivation."""

from __future__ import annotations

from html import escape
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailpipe.content.html import add_tracking, html_to_text, is_web_url, links

PIXEL = "https://t.example/v1/events/open?requestId=1&t=abc"


def track(url: str) -> str:
    return f"https://t.example/c?url={quote(url, safe='')}&t=x"


def attr(url: str) -> str:
    """The tracked URL of ``url`` as written into an attribute."""
    return escape(track(url), quote=True)


def rewrite(html: str, **kw: object) -> str:
    return add_tracking(html, pixel_url=None, click_url=track, **kw)  # type: ignore[arg-type]


# -- add_tracking -----------------------------------------------------------


def test_nothing_to_do_returns_input_unchanged() -> None:
    html = '<a href="https://a.example">x</a>'
    assert add_tracking(html, pixel_url=None, click_url=None) is html


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ('<a href="https://a.example/x">', f'<a href="{attr("https://a.example/x")}">'),
        ("<a href='http://a.example/x'>", f'<a href="{attr("http://a.example/x")}">'),
        ("<a href=https://a.example/x>", f'<a href="{attr("https://a.example/x")}">'),
        ('<A HREF="HTTPS://a.example/">', f'<A HREF="{attr("HTTPS://a.example/")}">'),
        (
            '<a class="btn" target=_blank href = "https://a.example" id=\'k\'>',
            f'<a class="btn" target=_blank href = "{attr("https://a.example")}" id=\'k\'>',
        ),
        (
            '<a\ntitle="a > b"\nhref="https://a.example">',
            f'<a\ntitle="a > b"\nhref="{attr("https://a.example")}">',
        ),
        ('<a href=" https://a.example/ ">', f'<a href="{attr("https://a.example/")}">'),
    ],
)
def test_rewrites_web_links_whatever_the_quoting(tag: str, expected: str) -> None:
    assert rewrite(tag + "x</a>") == expected + "x</a>"


def test_attribute_value_is_unescaped_then_escaped_again() -> None:
    out = rewrite('<a href="https://a.example/?a=1&amp;b=2">x</a>')
    target = "https://a.example/?a=1&b=2"
    assert out == f'<a href="{attr(target)}">x</a>'
    assert links(out) == [track(target)]


@pytest.mark.parametrize(
    "tag",
    [
        '<a href="mailto:a@b.example">',
        '<a href="#top">',
        '<a href="/relative/path">',
        '<a href="tel:+100">',
        '<a href="javascript:alert(1)">',
        '<a href="">',
        "<a name=anchor>",
        '<abbr title="https://a.example">',
        '<area href="https://a.example">',
        '<a data-href="https://a.example">',
        '<link href="https://a.example/style.css">',
    ],
)
def test_leaves_other_links_alone(tag: str) -> None:
    html = tag + "x</a>"
    assert rewrite(html) == html


def test_excluded_urls_are_not_rewritten() -> None:
    unsub = "https://m.example/v1/unsubscribe?requestId=1&t=x"
    html = f'<a href="{unsub.replace("&", "&amp;")}">stop</a><a href="https://a.example">go</a>'
    out = rewrite(html, exclude=(unsub,))
    assert out.startswith(f'<a href="{unsub.replace("&", "&amp;")}">stop</a>')
    assert attr("https://a.example") in out


def test_comments_and_scripts_are_not_touched() -> None:
    html = (
        '<!-- <a href="https://c.example">x</a> -->'
        "<script>var s = '<a href=\"https://s.example\">';</script>"
        '<style>a[href="https://y.example"]{}</style>'
    )
    assert rewrite(html) == html


def test_only_the_first_href_counts() -> None:
    out = rewrite('<a href="https://a.example" href="https://b.example">x</a>')
    assert out == f'<a href="{attr("https://a.example")}" href="https://b.example">x</a>'


def test_unterminated_tag_is_left_alone_quickly() -> None:
    html = "<a " + "x" * 50_000
    assert rewrite(html) == html


def test_pixel_goes_before_body_end() -> None:
    out = add_tracking("<html><BODY><p>x</p></BODY></html>", pixel_url=PIXEL, click_url=None)
    assert out.startswith("<html><BODY><p>x</p><img ")
    assert out.endswith("</BODY></html>")
    assert 'src="https://t.example/v1/events/open?requestId=1&amp;t=abc"' in out
    assert 'width="1" height="1"' in out


def test_pixel_is_appended_without_body() -> None:
    out = add_tracking("<p>x</p>", pixel_url=PIXEL, click_url=None)
    assert out.startswith("<p>x</p><img ")


@given(st.text(alphabet="<>aAhHrReEfF=\"' =/:#", max_size=80))
def test_rewriting_never_raises_and_keeps_text_without_links(html: str) -> None:
    out = rewrite(html)
    if not links(html):
        assert out == html


@given(
    st.lists(
        st.from_regex(r"https://[a-z]{1,8}\.example/[a-z0-9?=&#%]{0,12}", fullmatch=True),
        max_size=5,
    )
)
def test_every_web_link_is_rewritten(urls: list[str]) -> None:
    html = "".join(
        f'<p><a href="{u.replace("&", "&amp;")}">{i}</a></p>' for i, u in enumerate(urls)
    )
    assert links(rewrite(html)) == list(dict.fromkeys(track(u) for u in urls))


# -- links and is_web_url ---------------------------------------------------


def test_links_are_distinct_web_urls_in_order() -> None:
    html = (
        '<a href="https://b.example">1</a><a href="mailto:x@y.example">2</a>'
        '<a HREF=https://a.example>3</a><a href="https://b.example">4</a>'
    )
    assert links(html) == ["https://b.example", "https://a.example"]


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://a.example", True),
        ("HTTP://a.example/x", True),
        ("http:/a.example", False),
        ("ftp://a.example", False),
        ("//a.example", False),
        ("http://[::1", False),
    ],
)
def test_is_web_url(url: str, ok: bool) -> None:
    assert is_web_url(url) is ok


# -- html_to_text -----------------------------------------------------------


def test_text_paragraphs_breaks_and_entities() -> None:
    html = "<h1>Hello&nbsp;&amp; welcome</h1><p>First   line<br>second\nline</p><p>Next</p>"
    assert html_to_text(html) == "Hello & welcome\n\nFirst line\nsecond line\n\nNext\n"


def test_text_links_show_their_url() -> None:
    html = (
        '<p><a href="https://a.example/x?a=1&amp;b=2">Read more</a> or '
        '<a href="https://a.example/">https://a.example/</a> or '
        '<a href="https://b.example/">b.example</a> or '
        '<a href="mailto:me@c.example?subject=hi">write</a> or '
        '<a href="#top">top</a></p>'
    )
    assert html_to_text(html) == (
        "Read more (https://a.example/x?a=1&b=2) or https://a.example/ or b.example"
        " or write (me@c.example) or top\n"
    )


def test_text_image_link_uses_alt_or_url() -> None:
    html = (
        '<a href="https://a.example"><img src="l.png" alt="Logo"></a> '
        '<a href="https://b.example"><img src="x.png"></a>'
    )
    assert html_to_text(html) == "Logo (https://a.example) https://b.example\n"


def test_text_drops_scripts_styles_head_hidden_and_comments() -> None:
    html = (
        "<html><head><title>T</title><style>p {color: red}</style></head><body>"
        '<div style="display: none">preview text&zwnj;&nbsp;</div>'
        "<script>alert('x')</script><!-- note --><p>Body</p></body></html>"
    )
    assert html_to_text(html) == "Body\n"


def test_text_lists_tables_and_pre() -> None:
    html = (
        "<ul><li>one</li><li>two</li></ul>"
        "<ol><li>first<li>second</ol>"
        "<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>"
        "<pre>  keep\n    this</pre>"
    )
    assert html_to_text(html) == (
        "- one\n- two\n\n1. first\n2. second\n\na b\nc\n\n  keep\n    this\n"
    )


def test_text_of_empty_or_tagless_input() -> None:
    assert html_to_text("") == ""
    assert html_to_text("<div> </div>") == ""
    assert html_to_text("just text") == "just text\n"


@given(st.text(max_size=200))
def test_text_never_contains_tags_from_markup(s: str) -> None:
    out = html_to_text(f"<div><b>{s}</b><script>x</script></div>")
    assert "<b>" not in out or "<b>" in s
    assert "<script>" not in out


def test_text_keeps_content_of_a_hidden_element_that_never_closes() -> None:
    assert html_to_text('<span style="display:none">pre</div><p>Body</p>') == "pre\n\nBody\n"


@pytest.mark.parametrize(
    "chunk", ["<a", "<a ", "<a x='>' ", '<a x="', "<p", "</a", "<!", "<script"]
)
def test_pathological_markup_is_handled_in_linear_time(chunk: str) -> None:
    # A quadratic tokenizer needs minutes here; ours needs milliseconds.
    html = chunk * 20_000
    assert add_tracking(html, pixel_url=None, click_url=track) == html
    assert links(html) == []
    assert "<a href" not in html_to_text(html)
