"""RFC 5322 messages parsed back with the stdlib parser."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailpipe.content.mime import build_message, to_bytes

UNSUB = (
    "<https://mail.example.com/v1/unsubscribe?requestId=123456789&t=AbCdEfGhIjKlMnOpQrStUv>, "
    "<mailto:unsubscribe@example.com?subject=unsubscribe>"
)
HEADERS = [
    ("X-Request-ID", "42"),
    ("List-Unsubscribe", UNSUB),
    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
]


def build(**kw: object) -> EmailMessage:
    args: dict[str, object] = {
        "sender": "Shop <news@shop.example>",
        "to": "alice@example.com",
        "subject": "Hello",
        "html": "<p>Hello</p>",
        "text": "Hello\n",
        "headers": HEADERS,
    }
    args.update(kw)
    return build_message(**args)  # type: ignore[arg-type]


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_structure_is_multipart_alternative_text_first() -> None:
    msg = parse(to_bytes(build()))
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in parts)
    assert parts[0].get_content().replace("\r\n", "\n") == "Hello\n"
    assert parts[1].get_content().replace("\r\n", "\n") == "<p>Hello</p>\n"
    assert all("MIME-Version" not in p for p in parts)
    assert msg["MIME-Version"] == "1.0"


def test_headers_present() -> None:
    msg = parse(to_bytes(build()))
    assert msg["From"] == "Shop <news@shop.example>"
    assert msg["To"] == "alice@example.com"
    assert msg["Subject"] == "Hello"
    assert msg["X-Request-ID"] == "42"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsedate_to_datetime(msg["Date"]).tzinfo is not None
    assert msg["Message-ID"].startswith("<")
    assert msg["Message-ID"].endswith("@shop.example>")


def test_message_id_domain_can_be_chosen() -> None:
    msg = build(message_id_domain="mx.example.org")
    assert str(msg["Message-ID"]).endswith("@mx.example.org>")
    assert build()["Message-ID"] != build()["Message-ID"]


def test_list_unsubscribe_is_never_encoded() -> None:
    raw = to_bytes(build())
    assert b"=?" not in raw.split(b"\r\n\r\n", 1)[0]
    assert b"<https://mail.example.com/v1/unsubscribe?requestId=123456789&t=" in raw
    assert parse(raw)["List-Unsubscribe"] == UNSUB


def test_crlf_line_endings_and_line_length() -> None:
    raw = to_bytes(build(html="<p>" + "x" * 5000 + "</p>", text="y" * 3000))
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_non_ascii_subject_body_and_names() -> None:
    subject = "Grüße aus Köln — 東京"
    msg = build(
        subject=subject,
        to="Jörg Müller <joerg@example.com>",
        html="<p>Hällo 東京</p>",
        text="Hällo 東京\n",
    )
    raw = to_bytes(msg)
    assert raw.isascii()
    assert b"Subject: =?utf-8?" in raw
    back = parse(raw)
    assert back["Subject"] == subject
    assert back["To"] == "Jörg Müller <joerg@example.com>"
    parts = list(back.iter_parts())
    assert "Hällo 東京" in parts[0].get_content()
    assert "Hällo 東京" in parts[1].get_content()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "Hi\r\nBcc: victim@example.com"),
        ("subject", "Hi\nthere"),
        ("to", "a@example.com\r\nBcc: b@example.com"),
        ("sender", "a@example.com\rX: y"),
    ],
)
def test_line_breaks_in_fields_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        build(**{field: value})


@pytest.mark.parametrize(
    "header",
    [
        ("X-Evil", "a\r\nBcc: b@example.com"),
        ("X-Evil", "a\nb"),
        ("X-Evil", "a\u2028b"),
        ("X-Evil", "a\x00b"),
        ("X Evil", "a"),
        ("X-Evil:", "a"),
        ("", "a"),
        ("X-Évil", "a"),
        ("Subject", "second subject"),
        ("content-type", "text/plain"),
    ],
)
def test_bad_extra_headers_are_refused(header: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match="header"):
        build(headers=[header])


@given(
    subject=st.text(
        st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=200
    ).filter(lambda s: "=?" not in s),
    body=st.text(st.characters(exclude_categories=["Cs"]), max_size=300),
)
def test_round_trip(subject: str, body: str) -> None:
    back = parse(to_bytes(build(subject=subject, text=body, html=f"<p>{body}</p>")))
    assert back["Subject"] == subject.lstrip(" ")  # parsers drop the space after the colon
    text = next(back.iter_parts()).get_content()
    assert text.replace("\r\n", "\n").rstrip("\n") == body.replace("\r\n", "\n").replace(
        "\r", "\n"
    ).rstrip("\n")


@pytest.mark.parametrize(
    ("given_to", "sent"),
    [
        ("ann@bücher.de", "ann@xn--bcher-kva.de"),
        ("ann@BÜCHER.de", "ann@xn--bcher-kva.de"),
        ("ann@xn--bcher-kva.de", "ann@xn--bcher-kva.de"),
        ("ann@example.com", "ann@example.com"),
    ],
)
def test_addresses_are_written_in_ascii_with_punycode_domains(given_to: str, sent: str) -> None:
    raw = to_bytes(build(to=given_to, sender="Bücher <news@bücher.de>"))
    assert raw.isascii()
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed["To"] == sent
    assert parsed["From"].addresses[0].addr_spec == "news@xn--bcher-kva.de"
    assert parsed["From"].addresses[0].display_name == "Bücher"


def test_a_non_ascii_local_part_cannot_be_written() -> None:
    with pytest.raises(ValueError, match="SMTPUTF8"):
        build(to="jörg@example.com")
