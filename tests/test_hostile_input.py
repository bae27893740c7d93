"""What a hostile client sends is refused as a class, against a real running service:
template bombs (while normal POSTs go on), loose request shapes, numbers and dates out
of range, unaddressable topics and addresses SES cannot send to."""

from __future__ import annotations

import email
import email.policy
import logging
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import api_client, make_config, running_service
from test_api_validation import message, poster

from mailpipe.content.bounded import MAX_LOOP_ITERATIONS
from mailpipe.service import Service

NESTED = "{% for a in range(10000) %}{% for b in range(1000) %}x{% endfor %}{% endfor %}"
CENTER = "{{ ('x'|center(1000000000))|length }}"
SLOW = "{% set s = 'x' * 3000000 %}{% for i in range(10000) %}{{ s.count('y') }}{% endfor %}"
"""Under every count bound, about 10 s of work: only the time budget or a cancel stops it."""


def personalised(content: str, n: int = 3) -> dict[str, Any]:
    """A message whose template is rendered for each of ``n`` recipients."""
    people = [{"email": f"p{i}@example.com", "data": {"n": i}} for i in range(n)]
    return message(content=content + "{{ n }}", emails=None, recipients=people)


@pytest.mark.parametrize(
    ("content", "bound"),
    [
        (NESTED, f"template exceeds the loop budget of {MAX_LOOP_ITERATIONS} iterations"),
        (CENTER, "template builds a value too large"),
        ("{% if 'unsubscribe.invalid' in unsubscribe_url %}ok{% else %}{{ 1/0 }}{% endif %}",
         "division by zero"),
    ],
)  # fmt: skip
async def test_a_template_bomb_is_a_400_naming_the_bound(
    tmp_path: Path, content: str, bound: str
) -> None:
    with trio.fail_after(20):
        async with poster(tmp_path) as p:
            for body in (message(content=content), personalised(content)):
                error = await p.refused(400, json={"messages": [body]})
                assert error.startswith("messages[0]: recipient ")
                assert bound in error


async def _post(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/v1/messages", json={"messages": [body]})


async def test_a_normal_post_beside_two_template_bombs_is_answered(config: Any) -> None:
    async with running_service(config) as svc, api_client(svc) as client:
        answers: list[int] = []

        async def bomb() -> None:
            answers.append((await _post(client, personalised(SLOW, 50))).status_code)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bomb)
                nursery.start_soon(bomb)
                await _slots_taken(svc, 2)  # both validation slots are the bombs'
                with trio.fail_after(15):  # the time budget (5 s) frees a slot at the latest
                    normal = await _post(client, message())
                assert normal.status_code == 200, normal.text
    assert answers == [400, 400]


async def _slots_taken(svc: Service, n: int) -> None:
    """Return once exactly ``n`` validation slots are in use."""
    while svc.cpu_limiter.borrowed_tokens != n:
        await trio.sleep(0.01)


async def test_validation_stops_when_the_client_leaves(config: Any) -> None:
    async with running_service(config) as svc, api_client(svc) as client:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_post, client, personalised(SLOW))
                await _slots_taken(svc, 1)
                nursery.cancel_scope.cancel()  # the client leaves mid-validation
        with trio.fail_after(3):  # well before the 5 s time budget would stop it
            await _slots_taken(svc, 0)


# -- strict request shapes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"messages": [message()], "dryRun": True}, "body: unknown field 'dryRun'"),
        ({"messages": [message(scheduled_at="2030-01-01T00:00:00Z")]},
         "messages[0]: unknown field 'scheduled_at' (did you mean 'scheduledAt'?)"),
        ({"messages": [message(emails=None, recipients=[{"email": "a@example.com", "name": "A"}])]},
         "messages[0].recipients[0]: unknown field 'name'"),
    ],
)  # fmt: skip
async def test_an_unknown_field_at_any_level_is_a_400_naming_it(
    tmp_path: Path, body: dict[str, Any], named: str
) -> None:
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            error = await p.refused(400, json=body)
    assert named in error


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with each message's None fields left out (``emails=None`` in ``message``)."""
    return {"messages": [_drop_none_one(m) for m in body["messages"]]}


@pytest.mark.parametrize(
    "when",
    ["0001-01-01T00:00:00+09:00", "9999-12-31T23:59:59-09:00", "0000-01-01T00:00:00Z"],
)
async def test_a_date_out_of_range_is_a_400(tmp_path: Path, when: str) -> None:
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            error = await p.refused(400, json={"messages": [message(scheduledAt=when)]})
    assert "scheduledAt" in error


@pytest.mark.parametrize(
    "template",
    [
        b'{"messages": [{"topicId": "t", "emails": ["a@example.com"], "subject": "s",'
        b' "content": "c", "trackOpens": N}]}',
        b'{"messages": [{"topicId": "t", "recipients": [{"email": "a@example.com",'
        b' "data": {"n": N}}], "subject": "s", "content": "c"}]}',
        b'{"messages": [], "x": N}',
        b"N",
    ],
)
async def test_a_5000_digit_number_anywhere_is_a_400(tmp_path: Path, template: bytes) -> None:
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            error = await p.refused(400, content=template.replace(b"N", b"9" * 5000))
    assert "digits" in error


@pytest.mark.parametrize("path", ["/v1/unsubscribe", "/v1/events/open", "/v1/events/click"])
@pytest.mark.parametrize("rid", ["9999999999999999999", "9223372036854775808"])
async def test_a_request_id_beyond_64_bits_is_invalid_without_a_traceback(
    config: Any, caplog: pytest.LogCaptureFixture, path: str, rid: str
) -> None:
    caplog.set_level(logging.INFO)
    url = f"{path}?requestId={rid}&t=AAAAAAAAAAAAAAAAAAAAAA&url=https%3A%2F%2Fexample.com"
    with trio.fail_after(10):
        async with running_service(config) as svc, api_client(svc, key=None) as client:
            for method in ("GET", "POST") if path == "/v1/unsubscribe" else ("GET",):
                response = await client.request(
                    method,
                    url,
                    data={"List-Unsubscribe": "One-Click"} if method == "POST" else None,
                )
                expected = 200 if path.endswith("open") else 400
                assert response.status_code == expected, response.text
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "fields",
    [
        {"subject": "Hi\x00there"},
        {"subject": "Hi\x1b[31m"},
        {"subject": "Hi\x7f"},
        {"subject": "Hi {{ v }}", "emails": None,
         "recipients": [{"email": "a@example.com", "data": {"v": "x\x00"}}]},
        {"subject": "Hi {{ v }}", "emails": None,
         "recipients": [{"email": "a@example.com", "data": {"v": "x" * 998}}]},
        {"subject": "{{ 'x' * 999 }}"},
    ],
)  # fmt: skip
async def test_a_subject_with_control_characters_or_too_long_is_a_400(
    tmp_path: Path, fields: dict[str, Any]
) -> None:
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            error = await p.refused(400, json=_drop_none({"messages": [message(**fields)]}))
    assert "subject" in error


@pytest.mark.parametrize("topic", ["news/2030", ".", "..", "a?b", "a#b", "100%", "a\\b"])
async def test_an_unaddressable_topic_id_is_a_400(tmp_path: Path, topic: str) -> None:
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            error = await p.refused(400, json={"messages": [message(topicId=topic)]})
    assert "addressable as /v1/topics/{topicId}" in error


async def test_an_accepted_topic_id_is_reachable(tmp_path: Path) -> None:
    topics = ["news 2030", "café:é", "a.b", "...", "a+b=c&d", "~x@y"]
    with trio.fail_after(20):
        async with poster(tmp_path) as p:
            for topic in topics:
                answer = await p.client.post(
                    "/v1/messages", json={"messages": [message(topicId=topic)]}
                )
                assert answer.status_code == 200, answer.text
                path = (
                    "/v1/topics/" + httpx.URL("/").copy_with(path="/" + topic).raw_path.decode()[1:]
                )
                stats = await p.client.get(path)
                assert stats.status_code == 200, (topic, stats.text)
                assert stats.json()["request"]["total"] == 2, topic
                assert (await p.client.delete(path)).json() == {"stopped": 2}


# -- addresses SES accepts -------------------------------------------------------------


async def test_a_unicode_domain_is_stored_and_sent_as_punycode(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with trio.fail_after(20):
        async with running_service(config) as svc, api_client(svc) as client:
            body = message(emails=["ann@bücher.de"], scheduledAt=None, topicId="idn")
            body["recipients"] = [{"email": "Bob@BÜCHER.de"}]
            answer = await client.post("/v1/messages", json={"messages": [_drop_none_one(body)]})
            assert answer.status_code == 200, answer.text
            outbox = config.outbox_dir
            while len(list(outbox.glob("*.eml"))) < 2:
                await trio.sleep(0.02)
    with closing(sqlite3.connect(config.db_path)) as conn:
        stored = {
            r[0] for r in conn.execute("SELECT \"to\" FROM email_requests WHERE topic_id='idn'")
        }
    assert stored == {"ann@xn--bcher-kva.de", "Bob@xn--bcher-kva.de"}
    sent = set()
    for path in outbox.glob("*.eml"):
        raw = path.read_bytes()
        assert raw.isascii()
        sent.add(email.message_from_bytes(raw, policy=email.policy.default)["To"])
    assert sent == {"ann@xn--bcher-kva.de", "Bob@xn--bcher-kva.de"}


def _drop_none_one(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize("address", ["ünï@example.com", "jörg@xn--bcher-kva.de", "δ@bücher.de"])
async def test_a_non_ascii_local_part_is_a_400(tmp_path: Path, address: str) -> None:
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            for body in (
                message(emails=["ok@example.com", address]),
                message(emails=None, recipients=[{"email": address}]),
            ):
                error = await p.refused(400, json={"messages": [_drop_none_one(body)]})
                assert "must be ASCII" in error
                assert "SMTPUTF8" in error
