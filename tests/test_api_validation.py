"""``POST /v1/messages`` refuses every invalid request whole: a JSON error, nothing stored.

Each test posts against a real service on port 0 and reads the row counts from
the SQLite file itself before and after.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import api_client, make_config, running_service

LATER = "2099-01-01T00:00:00Z"  # seeded rows stay put while the test runs


def row_counts(db: Path) -> tuple[int, int]:
    """(requests, contents) as the database file holds them."""
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        row = conn.execute(
            "SELECT (SELECT COUNT(*) FROM email_requests), (SELECT COUNT(*) FROM email_contents)"
        ).fetchone()
    return int(row[0]), int(row[1])


def message(**fields: Any) -> dict[str, Any]:
    """A valid message, with ``fields`` replacing or adding fields."""
    base: dict[str, Any] = {
        "topicId": "v",
        "emails": ["ann@example.com", "bob@example.com"],
        "subject": "Hello",
        "content": "<p>Hello</p>",
        "scheduledAt": LATER,
    }
    base.update(fields)
    return base


class Poster:
    """A client of a running service that checks nothing got stored by a refusal."""

    def __init__(self, client: httpx.AsyncClient, db: Path) -> None:
        self.client = client
        self.db = db

    async def refused(
        self,
        status: int,
        *,
        json: Any = None,
        content: bytes | None = None,
        path: str = "/v1/messages",
        method: str = "POST",
    ) -> str:
        """Send the request; assert ``status``, a JSON error, and no new rows. The error."""
        before = row_counts(self.db)
        if content is not None:
            response = await self.client.request(
                method, path, content=content, headers={"content-type": "application/json"}
            )
        else:
            response = await self.client.request(method, path, json=json)
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/json")
        error = response.json()["error"]
        assert isinstance(error, str)
        assert error
        assert row_counts(self.db) == before
        return error


@asynccontextmanager
async def poster(tmp_path: Path, **env: Any) -> AsyncIterator[Poster]:
    """A service with one message already stored (so "unchanged" is not just "empty")."""
    config = make_config(tmp_path, **env)
    async with running_service(config) as svc, api_client(svc) as client:
        seeded = await client.post("/v1/messages", json={"messages": [message(topicId="seed")]})
        assert seeded.status_code == 200
        assert row_counts(config.db_path) == (2, 1)
        yield Poster(client, config.db_path)


async def test_malformed_json_is_400(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            error = await p.refused(400, content=b'{"messages": [')
    assert "malformed JSON" in error


async def test_empty_messages_is_400(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            error = await p.refused(400, json={"messages": []})
    assert "messages" in error


async def test_empty_emails_is_400(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            error = await p.refused(400, json={"messages": [message(emails=[])]})
    assert "emails" in error


@pytest.mark.parametrize("blank", ["", "   ", "\t\n "])
async def test_blank_subject_is_400(tmp_path: Path, blank: str) -> None:
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            error = await p.refused(400, json={"messages": [message(subject=blank)]})
    assert "subject" in error


@pytest.mark.parametrize("blank", ["", "  ", "\n"])
async def test_blank_content_is_400(tmp_path: Path, blank: str) -> None:
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            error = await p.refused(400, json={"messages": [message(content=blank)]})
    assert "content" in error


@pytest.mark.parametrize(
    "bad",
    [
        "not-an-address",
        "ann@",
        "@example.com",
        "a b@example.com",
        "ann@example..com",
        "ann@-example.com",
        "ann..x@example.com",
    ],
)
async def test_one_bad_address_among_good_ones_is_400_naming_it(tmp_path: Path, bad: str) -> None:
    emails = [f"good{i}@example.com" for i in range(50)] + [bad] + ["last@example.com"]
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            error = await p.refused(400, json={"messages": [message(emails=emails)]})
    assert "emails[50]" in error
    assert repr(bad) in error


@pytest.mark.parametrize("subject", ["Hello\r\nBcc: x@example.com", "Hello\nWorld", "Hi\r"])
async def test_cr_or_lf_in_subject_is_400(tmp_path: Path, subject: str) -> None:
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            error = await p.refused(400, json={"messages": [message(subject=subject)]})
    assert "CR or LF" in error


async def test_topic_id_over_255_characters_is_400(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            error = await p.refused(400, json={"messages": [message(topicId="t" * 256)]})
            accepted = await p.client.post(
                "/v1/messages", json={"messages": [message(topicId="t" * 255)]}
            )
    assert "topicId" in error
    assert accepted.status_code == 200


@pytest.mark.parametrize("topic", ["a\x00b", "tab\there", "line\nbreak", "del\x7f", "esc\x1b[0m"])
async def test_topic_id_with_control_characters_is_400(tmp_path: Path, topic: str) -> None:
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            error = await p.refused(400, json={"messages": [message(topicId=topic)]})
    assert "control characters" in error


@pytest.mark.parametrize(
    "when",
    [
        "tomorrow",
        "2025-13-01T00:00:00Z",
        "2025-01-01 00:00:00",
        "2025-01-01T00:00:00",
        "2025-02-30T10:00:00Z",
        "1735689600",
        1735689600,
        ["2025-01-01T00:00:00Z"],
    ],
)
async def test_bad_scheduled_at_is_400(tmp_path: Path, when: Any) -> None:
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            error = await p.refused(400, json={"messages": [message(scheduledAt=when)]})
    assert "scheduledAt" in error


async def test_bad_second_message_after_a_good_first_is_400(tmp_path: Path) -> None:
    good = message(topicId="first", emails=[f"u{i}@example.com" for i in range(20)])
    bad = message(topicId="second", emails=["ok@example.com", "broken@"])
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            error = await p.refused(400, json={"messages": [good, bad]})
    assert error.startswith("messages[1].emails[1]")


async def test_more_recipients_than_the_limit_is_413(tmp_path: Path) -> None:
    emails = [f"r{i}@example.com" for i in range(101)]
    with trio.fail_after(10):
        async with poster(tmp_path, MAX_RECIPIENTS_PER_REQUEST=100) as p:
            error = await p.refused(413, json={"messages": [message(emails=emails)]})
            split = [message(emails=emails[:60]), message(emails=emails[60:])]
            error_split = await p.refused(413, json={"messages": split})
            exactly = await p.client.post(
                "/v1/messages", json={"messages": [message(emails=emails[:100])]}
            )
    assert "MAX_RECIPIENTS_PER_REQUEST" in error
    assert "MAX_RECIPIENTS_PER_REQUEST" in error_split
    assert exactly.status_code == 200


async def test_body_larger_than_max_body_bytes_is_413(tmp_path: Path) -> None:
    emails = [f"someone{i}@example.com" for i in range(200)]  # about 5 KB of JSON
    with trio.fail_after(10):
        async with poster(tmp_path, MAX_BODY_BYTES=4096) as p:
            error = await p.refused(413, json={"messages": [message(emails=emails)]})
    assert "MAX_BODY_BYTES" in error


async def test_unknown_route_is_a_json_404(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            await p.refused(404, path="/v1/nothing-here", method="GET")
            await p.refused(404, path="/v1/message", json={"messages": [message()]})


async def test_wrong_method_is_a_json_405(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            await p.refused(405, method="PUT", json={"messages": [message()]})
            await p.refused(405, method="GET")


@pytest.mark.parametrize(
    "body",
    [
        [],
        "text",
        {"messages": "x"},
        {"messages": [1]},
        {"messages": [message(topicId=7)]},
        {"messages": [message(emails=["a@example.com", 7])]},
        {"messages": [message(emails="a@example.com")]},
        {"messages": [message(subject=["x"])]},
        {"messages": [message(topicId="   ")]},
        {"messages": [message(subject="x" * 999)]},
    ],
)
async def test_wrong_shapes_are_400(tmp_path: Path, body: Any) -> None:
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            await p.refused(400, json=body)


async def test_three_spellings_of_one_address_store_one_row(tmp_path: Path) -> None:
    spellings = ["ann@example.com", "ann@EXAMPLE.COM", " ann@Example.Com "]
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            response = await p.client.post(
                "/v1/messages", json={"messages": [message(topicId="once", emails=spellings)]}
            )
            assert response.status_code == 200
            assert response.json()["count"] == 1
            with closing(sqlite3.connect(p.db)) as conn:
                stored = conn.execute(
                    "SELECT \"to\" FROM email_requests WHERE topic_id = 'once'"
                ).fetchall()
    assert stored == [("ann@example.com",)]


@pytest.mark.parametrize(
    "body",
    [
        b'{"messages": [{"topicId": "t\\ud800", "emails": ["a@example.com"], "subject": "s",'
        b' "content": "c"}]}',
        b'{"messages": [{"topicId": "t", "emails": ["a@example.com"], "subject": "\\uDFFF",'
        b' "content": "c"}]}',
        b"[" * 100_000,
        '{"messages": [{"topicId": "caf\u00e9"}]}'.encode("latin-1"),
        '{"messages": []}'.encode("utf-16"),
    ],
    ids=["lone-surrogate-topic", "lone-surrogate-subject", "deep-nesting", "latin-1", "utf-16"],
)
async def test_text_that_is_not_utf8_json_is_400(tmp_path: Path, body: bytes) -> None:
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            error = await p.refused(400, content=body)
    assert "malformed JSON" in error


async def test_a_valid_surrogate_pair_is_text(tmp_path: Path) -> None:
    body = (
        b'{"messages": [{"topicId": "\\ud83d\\ude00", "emails": ["a@example.com"],'
        b' "subject": "s", "content": "c", "scheduledAt": "2099-01-01T00:00:00Z"}]}'
    )
    with trio.fail_after(10):
        async with poster(tmp_path) as p:
            response = await p.client.post(
                "/v1/messages", content=body, headers={"content-type": "application/json"}
            )
            stats = (await p.client.get("/v1/topics/\U0001f600")).json()
    assert response.status_code == 200
    assert stats["request"]["total"] == 1
