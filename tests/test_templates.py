"""Per-recipient rendering and enqueue-time validation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailpipe.content.templates import (
    MAX_RENDERED_CHARS,
    TemplateError,
    _compile_field,
    check_recipients,
    compile_message,
)
from mailpipe.errors import MailpipeError

UNSUB = "https://mail.example.com/v1/unsubscribe?requestId=1&t=abc"


def render(subject: str, html: str, text: str | None = None, **data: Any) -> tuple[str, ...]:
    r = compile_message(subject, html, text).render(data, unsubscribe_url=UNSUB)
    return r.subject, r.html, r.text


# -- rendering ----------------------------------------------------------------


def test_plain_content_renders_to_itself() -> None:
    html = "<p>Hello, world & friends</p>\n"
    compiled = compile_message("Big sale!", html, "Hello\n")
    assert not compiled.personalised
    first = compiled.render({}, unsubscribe_url=UNSUB)
    assert (first.subject, first.html, first.text) == ("Big sale!", html, "Hello\n")
    assert compiled.render({"x": 1}, unsubscribe_url="other") is first  # no work per recipient


def test_plain_html_without_text_gets_derived_text() -> None:
    assert render("s", "<p>Hi <b>there</b></p>")[2] == "Hi there\n"


def test_variables_render_per_recipient() -> None:
    subject, html, text = render(
        "Hi {{ name }}", "<p>{{ name }}</p>", "Dear {{ name }}", name="Ann"
    )
    assert (subject, html, text) == ("Hi Ann", "<p>Ann</p>", "Dear Ann")


def test_html_is_autoescaped_but_subject_and_text_are_not() -> None:
    evil = "<script>alert('x')</script>"
    subject, html, text = render("{{ v }}", "<p>{{ v }}</p>", "{{ v }}", v=evil)
    assert subject == evil
    assert text == evil
    assert "<script>" not in html
    assert "&lt;script&gt;" in html


def test_derived_text_shows_data_unescaped() -> None:
    _, html, text = render("s", "<p>{{ v }}</p>", v="Tom & Jerry <3")
    assert html == "<p>Tom &amp; Jerry &lt;3</p>"
    assert text == "Tom & Jerry <3\n"


def test_unsubscribe_url_is_always_available() -> None:
    _, html, text = render(
        "s", '<a href="{{ unsubscribe_url }}">stop</a>', "Stop: {{ unsubscribe_url }}"
    )
    assert html == f'<a href="{UNSUB.replace("&", "&amp;")}">stop</a>'
    assert text == f"Stop: {UNSUB}"


def test_unsubscribe_url_cannot_be_overridden_by_data() -> None:
    _, _, text = render("s", "x", "{{ unsubscribe_url }}", unsubscribe_url="https://evil")
    assert text == UNSUB


def test_missing_variable_is_named() -> None:
    compiled = compile_message("Hi {{ first_name }}", "x", None)
    with pytest.raises(TemplateError, match="first_name") as info:
        compiled.render({}, unsubscribe_url=UNSUB)
    assert info.value.field == "subject"
    assert isinstance(info.value, MailpipeError)


def test_missing_attribute_is_an_error() -> None:
    compiled = compile_message("s", "{{ user.name }}", None)
    with pytest.raises(TemplateError, match="name") as info:
        compiled.render({"user": {}}, unsubscribe_url=UNSUB)
    assert info.value.field == "content"


@pytest.mark.parametrize(
    ("field", "args"),
    [
        ("subject", ("{{ x", "", None)),
        ("content", ("", "{% if %}", None)),
        ("text", ("", "", "{% for x in y %}")),
    ],
)
def test_syntax_error_names_field_and_line(field: str, args: tuple[str, str, str | None]) -> None:
    with pytest.raises(TemplateError, match=rf"^{field}: line 1: ") as info:
        compile_message(*args)
    assert info.value.field == field


@pytest.mark.parametrize("value", ["a\nb", "a\r\nBcc: x@y.z", "a\rb", "a\u2028b"])
def test_line_break_in_rendered_subject_is_refused(value: str) -> None:
    compiled = compile_message("Hi {{ v }}", "x", None)
    with pytest.raises(TemplateError, match="line break"):
        compiled.render({"v": value}, unsubscribe_url=UNSUB)


def test_line_break_in_static_subject_is_refused_at_compile_time() -> None:
    with pytest.raises(TemplateError, match="line break"):
        compile_message("Hello\nBcc: x@y.z", "x", None)


def test_sandbox_blocks_internals() -> None:
    compiled = compile_message("s", "{{ v.__class__.__mro__ }}", None)
    with pytest.raises(TemplateError):
        compiled.render({"v": ""}, unsubscribe_url=UNSUB)


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * n }}",
        "{{ [1] * n }}",
        "{{ 10 ** n }}",
        "{% for i in range(999) %}{% for j in range(99) %}{{ 'x' * 99 }}{% endfor %}{% endfor %}",
    ],
)
def test_huge_output_is_refused(source: str) -> None:
    compiled = compile_message("s", source, None)
    with pytest.raises(TemplateError, match="too large"):
        compiled.render({"n": 10**7}, unsubscribe_url=UNSUB)


def test_output_limit_leaves_room_for_real_email() -> None:
    assert MAX_RENDERED_CHARS >= 1_000_000
    big = "x" * 500_000
    assert render("s", "{{ v }}", v=big)[1] == big


def test_runtime_error_becomes_template_error() -> None:
    compiled = compile_message("{{ 1 / n }}", "x", None)
    with pytest.raises(TemplateError, match="subject"):
        compiled.render({"n": 0}, unsubscribe_url=UNSUB)


def test_trailing_newline_is_kept() -> None:
    assert render("s", "<p>{{ a }}</p>\n", "{{ a }}\n", a=1)[1:] == ("<p>1</p>\n", "1\n")


def test_compilation_is_cached() -> None:
    compile_message("Hi {{ cached }}", "<p>{{ cached }}</p>", None)
    hits = _compile_field.cache_info().hits
    compile_message("Hi {{ cached }}", "<p>{{ cached }}</p>", None)
    assert _compile_field.cache_info().hits == hits + 2


def test_variables_exclude_globals_and_unsubscribe_url() -> None:
    compiled = compile_message(
        "{{ a }}", "{% for i in range(2) %}{{ b.c }}{% endfor %}{{ unsubscribe_url }}", "{{ d }}"
    )
    assert compiled.variables == {"a", "b", "d"}


@given(st.text(st.characters(exclude_categories=("Cc", "Zl", "Zp"))).filter(lambda s: "{" not in s))
def test_text_without_syntax_is_verbatim(s: str) -> None:
    r = compile_message(s, s, s).render({}, unsubscribe_url=UNSUB)
    assert (r.subject, r.html, r.text) == (s, s, s)


# -- check_recipients -------------------------------------------------------


def recipients(*data: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(f"r{i}@example.com", d) for i, d in enumerate(data)]


def test_check_passes_when_all_recipients_have_the_data() -> None:
    compiled = compile_message("Hi {{ name }}", "<p>{{ name }} {{ unsubscribe_url }}</p>", None)
    check_recipients(compiled, recipients({"name": "a"}, {"name": "b", "extra": 1}))


def test_check_names_recipient_and_variable() -> None:
    compiled = compile_message("Hi {{ name }}", "<p>{{ code }}</p>", None)
    with pytest.raises(TemplateError) as info:
        check_recipients(compiled, recipients({"name": "a", "code": 1}, {"name": "b"}))
    assert info.value.recipient == "r1@example.com"
    assert info.value.field == "content"
    assert "r1@example.com" in str(info.value)
    assert "'code' is undefined" in str(info.value)


def test_check_catches_nested_missing_data() -> None:
    compiled = compile_message("Hi {{ user.name | title }}", "x", None)
    with pytest.raises(TemplateError, match=r"recipient r1@example.com: subject: .*name"):
        check_recipients(compiled, recipients({"user": {"name": "a"}}, {"user": {}}))


def test_check_accepts_defaults_for_missing_data() -> None:
    compiled = compile_message("Hi {{ name | default('friend') }}", "x", None)
    check_recipients(compiled, recipients({}, {"name": "b"}))


def test_check_catches_line_breaks_from_data() -> None:
    compiled = compile_message("Hi {{ name }}", "x", None)
    with pytest.raises(TemplateError, match=r"r0@example\.com: subject: contains a line break"):
        check_recipients(compiled, recipients({"name": "a\nBcc: x@y.z"}))


def test_check_renders_templates_without_variables_once() -> None:
    compiled = compile_message("{{ 1 / 0 }}", "x", None)
    with pytest.raises(TemplateError, match=r"r0@example\.com"):
        check_recipients(compiled, recipients({}, {}))


def test_check_of_no_recipients_is_a_no_op() -> None:
    check_recipients(compile_message("{{ a }}", "x", None), [])


def test_check_is_fast_for_large_flat_sends() -> None:
    compiled = compile_message("Hi {{ name }}", "<p>{{ name }}</p>" * 100, None)
    many = recipients(*({"name": f"n{i}"} for i in range(50_000)))
    check_recipients(compiled, many)  # set arithmetic only, no rendering


@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.text(max_size=5)))
def test_check_agrees_with_render(data: dict[str, str]) -> None:
    compiled = compile_message("{{ a }}", "<p>{{ b }}</p>", "{{ c }}")
    try:
        compiled.render(data, unsubscribe_url=UNSUB)
    except TemplateError:
        with pytest.raises(TemplateError):
            check_recipients(compiled, recipients(data))
    else:
        check_recipients(compiled, recipients(data))
