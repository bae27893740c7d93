"""Per-recipient content: templates checked at enqueue, rendered at send time, both transports."""

from __future__ import annotations

import email
import email.policy
import json
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import trio
from trackingkit import SERVER_HOST, Harness, tracking_service

from mailpipe.errors import RequestInvalid
from mailpipe.http.app import error_response
from mailpipe.ingest import Limits, parse_send_request
from mailpipe.store import NewMessage
from mailpipe.timeutil import utcnow

ANN, EVE = "ann@example.com", "eve@example.com"
PEOPLE = [{"email": ANN, "data": {"name": "Ann"}}, {"email": EVE, "data": {"name": "<script>"}}]
GREETING = {"subject": "Hi {{ name }}", "content": "<p>Dear {{ name }}</p>"}


@pytest.fixture(params=["ses", "outbox"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str
) -> AbstractAsyncContextManager[Harness]:
    return tracking_service(tmp_path, monkeypatch if transport == "ses" else None)


def stored(h: Harness) -> tuple[int, int]:
    ((contents,),) = h.query("SELECT COUNT(*) FROM email_contents")
    ((requests,),) = h.query("SELECT COUNT(*) FROM email_requests")
    return contents, requests


async def test_each_recipient_gets_its_own_escaped_content_and_a_text_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    with trio.fail_after(30):
        async with running(tmp_path, monkeypatch, transport) as h:
            mail = await h.send("hello", recipients=PEOPLE, **GREETING)
    ann, eve = mail[ANN], mail[EVE]
    assert ann.subject == "Hi Ann"
    assert "<p>Dear Ann</p>" in ann.html
    assert eve.subject == "Hi <script>"  # the subject is not HTML: no escaping
    assert "<p>Dear &lt;script&gt;</p>" in eve.html
    assert "<script>" not in eve.html
    assert ann.text.strip() == "Dear Ann"
    assert eve.text.strip() == "Dear <script>"
    for m in (ann, eve):
        assert m.headers["x-request-id"].isdigit()
        assert m.headers["list-unsubscribe"].startswith(f"<{SERVER_HOST}/v1/unsubscribe?")
        assert m.headers["list-unsubscribe-post"] == "List-Unsubscribe=One-Click"
        assert f'src="{SERVER_HOST}/v1/events/open?' in m.html


async def test_a_recipient_missing_a_variable_is_a_400_naming_it_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    lacking = [*PEOPLE, {"email": "bob@example.com", "data": {"nickname": "B"}}]
    with trio.fail_after(20):
        async with tracking_service(tmp_path) as h:
            cases: list[tuple[dict[str, Any], list[str]]] = [
                ({"recipients": lacking, **GREETING}, ["bob@example.com", "'name'", "subject"]),
                ({"emails": [ANN], **GREETING}, [ANN, "'name'"]),
                (
                    {
                        "recipients": PEOPLE,
                        "subject": "Hi",
                        "content": "<p>{{ name }} {{ city }}",
                        "text": "x",
                    },
                    [ANN, "'city'", "content"],
                ),
                (
                    {"recipients": PEOPLE, "subject": "Hi {{ name", "content": "x"},
                    ["subject", "line 1"],
                ),
                ({"recipients": PEOPLE, "subject": "Hi", "content": "{% if %}"}, ["content"]),
                (
                    {"recipients": PEOPLE, "subject": "Hi", "content": "x", "text": "{{ 1 + }}"},
                    ["text"],
                ),
                (
                    {"recipients": [{"email": ANN, "data": {"name": "A\r\nBcc: x@y"}}], **GREETING},
                    [ANN, "line break"],
                ),
            ]
            for message, words in cases:
                ok = {"topicId": "ok", "emails": [ANN], "subject": "s", "content": "c"}
                response = await h.post(ok, {"topicId": "bad", **message})
                assert response.status_code == 400, message
                error = response.json()["error"]
                assert error.startswith("messages[1]"), error
                for word in words:
                    assert word in error, (word, error)
            assert stored(h) == (0, 0)


async def test_the_outbox_file_is_multipart_alternative_text_then_html(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with tracking_service(tmp_path) as h:
            mail = await h.send(
                "mime",
                recipients=PEOPLE[:1],
                text="Plain {{ name }}: {{ unsubscribe_url }}",
                subject="Grüße {{ name }}",
                content="<p>Hallo {{ name }} ✓</p>",
            )
    raw = mail[ANN].raw
    assert raw is not None
    assert b"\r\n" in raw
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Subject"] == "Grüße Ann"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in parts)
    unsubscribe = mail[ANN].unsubscribe_url
    assert parts[0].get_content() == f"Plain Ann: {unsubscribe}\r\n"
    assert "<p>Hallo Ann ✓</p>" in parts[1].get_content()
    assert msg["List-Unsubscribe"] == f"<{unsubscribe}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


async def test_a_text_part_is_derived_from_the_html_before_tracking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    content = '<h1>News</h1><p>Read <a href="https://example.com/a">the story</a>.</p>'
    with trio.fail_after(30):
        async with running(tmp_path, monkeypatch, transport) as h:
            mail = await h.send("derived", emails=[ANN], content=content)
    assert mail[ANN].text.strip() == "News\n\nRead the story (https://example.com/a)."
    assert "/v1/events/click?" in mail[ANN].html


async def test_a_render_failure_at_send_time_fails_that_request_only(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with tracking_service(tmp_path) as h:
            # Stored without the enqueue check (as by an older version): renders for one only.
            broken = NewMessage(
                "broken",
                "Hi {{ name }}",
                "<p>x</p>",
                [ANN, EVE],
                data=[json.dumps({"name": "Ann"}), None],
            )
            await h.svc.store.insert_messages([broken], utcnow())
            h.svc.scheduler.nudge()
            await h.settled("broken")
            rows = h.query('SELECT "to", status, error FROM email_requests ORDER BY id')
            after = await h.send("after", emails=[EVE])
    assert rows[0] == (ANN, 2, None)
    assert rows[1][:2] == (EVE, 3)
    assert rows[1][2].startswith("TemplateError: recipient eve@example.com: subject:")
    assert "'name' is undefined" in rows[1][2]
    assert list(after) == [EVE]


# -- validation of the request body (no service) ----------------------------------------------


def parse(**message: Any) -> NewMessage:
    body = {"topicId": "t", "subject": "s", "content": "c", **message}
    (msg,) = parse_send_request(json.dumps({"messages": [body]}).encode(), Limits())
    return msg


def refused(**message: Any) -> str:
    with pytest.raises(RequestInvalid) as caught:
        parse(**message)
    return str(caught.value)


def test_plain_emails_carry_no_data_and_track_by_default() -> None:
    msg = parse(emails=[ANN, "Bob@Example.COM", ANN])
    assert list(msg.emails) == [ANN, "Bob@example.com"]
    assert (msg.data, msg.text, msg.track_opens, msg.track_clicks) == (None, None, True, True)


def test_recipients_and_emails_merge_and_duplicates_must_agree() -> None:
    msg = parse(
        emails=["bob@example.com", ANN],
        recipients=[
            {"email": ANN},  # no data, like the emails entry: the same recipient
            {"email": "eve@EXAMPLE.com", "data": {"name": "Eve", "tags": ["a", 1]}},
            {"email": "eve@example.com", "data": {"tags": ["a", 1], "name": "Eve"}},
        ],
        text="Hi",
        trackOpens=False,
        trackClicks=True,
    )
    assert list(msg.emails) == ["bob@example.com", ANN, EVE]
    assert msg.data is not None
    assert [None if d is None else json.loads(d) for d in msg.data] == [
        None,
        None,
        {"name": "Eve", "tags": ["a", 1]},
    ]
    assert (msg.text, msg.track_opens, msg.track_clicks) == ("Hi", False, True)
    error = refused(emails=[ANN], recipients=[{"email": ANN, "data": {"name": "Ann"}}])
    assert "messages[0].recipients[0]" in error
    assert "messages[0].emails" in error
    error = refused(
        recipients=[
            {"email": ANN, "data": {"name": "Ann"}},
            {"email": ANN, "data": {"name": "Anne"}},
        ]
    )
    assert "messages[0].recipients[1]" in error
    assert "messages[0].recipients[0]" in error


@pytest.mark.parametrize(
    ("message", "words"),
    [
        ({"recipients": []}, ["recipients", "non-empty"]),
        ({"recipients": [ANN]}, ["recipients[0]", "'email'"]),
        ({"recipients": [{"email": "not-an-address"}]}, ["recipients[0].email"]),
        ({"recipients": [{"email": ANN, "data": ["x"]}]}, ["recipients[0].data", "object"]),
        ({"emails": [ANN], "trackOpens": "no"}, ["trackOpens", "true or false"]),
        ({"emails": [ANN], "trackClicks": 1}, ["trackClicks"]),
        ({"emails": [ANN], "text": 5}, ["text"]),
        ({"emails": [ANN], "text": ""}, ["text"]),
        ({}, ["'emails' or 'recipients'"]),
    ],
)
def test_malformed_recipients_and_options_are_refused(
    message: dict[str, Any], words: list[str]
) -> None:
    error = refused(**message)
    for word in words:
        assert word in error


def test_recipients_count_towards_the_request_limit() -> None:
    body = {
        "messages": [
            {
                "topicId": "t",
                "subject": "s",
                "content": "c",
                "emails": [ANN],
                "recipients": [{"email": EVE}, {"email": "bob@example.com"}],
            }
        ]
    }
    with pytest.raises(RequestInvalid) as caught:
        parse_send_request(json.dumps(body).encode(), Limits(max_recipients=2))
    assert error_response(caught.value)[0] == 413  # answered as too large


def test_only_data_that_could_fail_is_rendered_at_enqueue() -> None:
    # A template without variables renders alike for all: plain emails are fine.
    msg = parse(emails=[ANN], content='<a href="{{ unsubscribe_url }}">Unsubscribe</a>')
    assert msg.data is None
    # Data the template does not read is stored anyway (it is the caller's to give).
    msg = parse(recipients=[{"email": ANN, "data": {"unused": True}}])
    assert msg.data == ['{"unused":true}']
