"""A running service whose sends land in FakeSES (or the outbox), and its public links.

    async with tracking_service(tmp_path, monkeypatch) as h:
        mail = await h.send("t", emails=["ann@example.com"], content="<a href='https://x.test/'>x</a>")
        response = await h.public.get(h.local(mail["ann@example.com"].pixel_url))

``h.public`` is a client with no API key that never follows redirects; ``h.local``
points a link built for ``SERVER_HOST`` at the running service.
"""

from __future__ import annotations

import email
import email.policy
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager, closing, nullcontext
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import api_client, make_config, running_service, ses_config
from fake_ses import FakeSES
from feedbackkit import Progress

from mailpipe.http.api import topic_stats_json
from mailpipe.service import Service

SERVER_HOST = "https://mail.example.test"
_IMG = re.compile(r"<img\s[^>]*src=\"([^\"]+)\"", re.IGNORECASE)
_HREF = re.compile(r"<a\s[^>]*href=\"([^\"]+)\"", re.IGNORECASE)


@dataclass(frozen=True)
class Delivered:
    """One message as the provider (or the outbox file) got it."""

    to: str
    subject: str
    html: str
    text: str
    headers: dict[str, str]
    raw: bytes | None = None

    @property
    def pixel_url(self) -> str:
        """The open pixel's URL (exactly one image is expected)."""
        (url,) = [unescape(u) for u in _IMG.findall(self.html)]
        return url

    @property
    def hrefs(self) -> list[str]:
        """Every ``<a href>`` value, unescaped, in document order."""
        return [unescape(u) for u in _HREF.findall(self.html)]

    @property
    def unsubscribe_url(self) -> str:
        """The URL of the ``List-Unsubscribe`` header."""
        match = re.fullmatch(r"<(https?://[^>]+)>", self.headers["list-unsubscribe"])
        assert match, self.headers["list-unsubscribe"]
        return match.group(1)


@dataclass
class Harness:
    """A running service, a keyed client, a public client and where messages land."""

    svc: Service
    client: httpx.AsyncClient
    public: httpx.AsyncClient
    progress: Progress
    ses: FakeSES | None

    async def post(self, *messages: dict[str, Any]) -> httpx.Response:
        """POST ``messages`` to ``/v1/messages``."""
        return await self.client.post("/v1/messages", json={"messages": list(messages)})

    async def send(self, topic: str, **message: Any) -> dict[str, Delivered]:
        """POST one message, wait until all of ``topic`` is final; what each recipient got."""
        message = {"subject": "Hi", "content": "<p>Hello</p>", **message, "topicId": topic}
        response = await self.post(message)
        assert response.status_code == 200, response.text
        await self.settled(topic)
        rows = self.query("SELECT id FROM email_requests WHERE topic_id = ?", topic)
        ids = {rid for (rid,) in rows}
        return {d.to: d for rid, d in self.delivered() if rid in ids}

    async def settled(self, topic: str) -> None:
        """Wait until no request of ``topic`` is created or processing."""

        async def final() -> bool:
            counts = (topic_stats_json(await self.svc.store.topic_stats(topic)))["request"]
            assert isinstance(counts, dict)
            return bool(counts["created"] == 0 and counts["processing"] == 0)

        await self.progress.until(final)

    def delivered(self) -> list[tuple[int, Delivered]]:
        """Every message delivered so far, with its request id (from ``X-Request-ID``)."""
        found: list[Delivered] = []
        if self.ses is not None:
            for r in self.ses.received:
                headers = {name.lower(): value for name, value in r.headers}
                found.append(Delivered(r.to[0], r.subject, r.html, r.text, headers))
        else:
            for path in sorted(self.svc.config.outbox_dir.glob("*.eml")):
                found.append(parse_eml(path.read_bytes()))
        return [(int(d.headers["x-request-id"]), d) for d in found]

    def local(self, url: str) -> str:
        """``url`` (built for ``SERVER_HOST``) pointed at the running service."""
        assert url.startswith(SERVER_HOST + "/"), url
        parts = urlsplit(url)
        return f"{self.svc.url}{parts.path}?{parts.query}"

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` from the service's database file."""
        with closing(sqlite3.connect(self.svc.config.db_path, timeout=10)) as conn:
            return conn.execute(sql, args).fetchall()

    async def statuses(self, topic: str) -> dict[str, int]:
        """The topic's ``result.statuses`` as the API reports them."""
        stats = (await self.client.get(f"/v1/topics/{topic}")).json()
        return dict(stats["result"]["statuses"])

    async def suppressed(self, address: str) -> dict[str, Any] | None:
        """The suppression of ``address`` as the API reports it, or None."""
        response = await self.client.get(f"/v1/suppressions/{address}")
        return None if response.status_code == 404 else dict(response.json())


def parse_eml(data: bytes) -> Delivered:
    """A delivered message from an RFC 5322 file."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    html, text = (msg.get_body((kind,)) for kind in ("html", "plain"))
    assert html is not None
    assert text is not None
    headers = {name.lower(): str(value) for name, value in msg.items()}
    html_text, plain = (str(p.get_content()).replace("\r\n", "\n") for p in (html, text))
    return Delivered(str(msg["To"]), str(msg["Subject"]), html_text, plain, headers, data)


@asynccontextmanager
async def tracking_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch | None = None, **env: Any
) -> AsyncIterator[Harness]:
    """A service at ``SERVER_HOST`` sending to a FakeSES (the outbox without ``monkeypatch``)."""
    env = {"SERVER_HOST": SERVER_HOST, "EMAIL_RATE": 200, **env}
    provider: AbstractContextManager[FakeSES | None] = (
        FakeSES() if monkeypatch is not None else nullcontext()
    )
    with provider as ses:
        if ses is not None and monkeypatch is not None:
            config = ses_config(tmp_path, monkeypatch, ses.url, **env)
        else:
            config = make_config(tmp_path, **env)
        async with (
            running_service(config) as svc,
            api_client(svc) as client,
            httpx.AsyncClient(base_url=svc.url, timeout=30, follow_redirects=False) as public,
        ):
            yield Harness(svc, client, public, Progress(svc), ses)
