"""A full disk and a deleted data directory are outages, not crashes: writes are
refused with 503 naming the cause, /ready is 503, the process keeps running and
recovers by itself once space is back."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import trio
from conftest import API_KEY, api_client, make_config, running_service

from mailpipe.errors import StoreError
from mailpipe.store.sqlite import open_sqlite
from mailpipe.timeutil import utcnow

TMPFS_SIZE: Final = "8m"
"""Small enough to fill in a few seconds, large enough for the schema and a start."""
HEADROOM: Final = 1024 * 1024
"""Space the filler leaves, so that a few POSTs succeed before the disk is full."""
CONTENT: Final = "<p>" + "x" * 16_000 + "</p>"
"""Each POST stores this once: the disk fills in tens of POSTs, not thousands."""


@contextlib.contextmanager
def tmpfs(where: Path) -> Iterator[Path]:
    """A small tmpfs mounted at ``where``, unmounted on exit; skips unless root can mount."""
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(where)],
        capture_output=True, text=True, check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path, leave: int) -> None:
    """Grow ``path`` until the file system has about ``leave`` bytes free (0: none)."""
    with path.open("ab") as f:
        while True:
            free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
            if free <= leave:
                return
            try:
                f.write(b"\0" * min(free - leave, 1 << 20))
                f.flush()
                os.fsync(f.fileno())
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return


def message(topic: str, emails: list[str], content: str = "<p>Hi</p>") -> dict[str, Any]:
    """A send request body with one message."""
    return {"messages": [{"topicId": topic, "emails": emails, "subject": "Hi", "content": content}]}


async def stats(client: httpx.AsyncClient, topic: str) -> dict[str, int]:
    """The topic's request counts."""
    result: dict[str, int] = (await client.get(f"/v1/topics/{topic}")).json()["request"]
    return result


async def until_ready(client: httpx.AsyncClient) -> None:
    """Poll /ready until 200 (bounded by the caller's fail_after)."""
    while (await client.get("/ready")).status_code != 200:
        await trio.sleep(0.05)


async def until_sent(client: httpx.AsyncClient, topic: str, n: int) -> None:
    """Poll the topic until ``n`` requests are sent (bounded by the caller's fail_after)."""
    while (await stats(client, topic))["sent"] < n:
        await trio.sleep(0.05)


async def post_until_refused(
    client: httpx.AsyncClient, content: str = CONTENT
) -> tuple[int, httpx.Response]:
    """POST messages to topic ``fill`` until one is refused; (accepted, refusal)."""
    for accepted in range(1000):
        response = await client.post("/v1/messages", json=message(
            "fill", ["f@example.com"], content
        ))
        if response.status_code != 200:
            return accepted, response
    raise AssertionError("the disk never filled")


class TestFullDisk:
    async def test_refused_then_recovered_without_restart(self, tmp_path: Path) -> None:
        with tmpfs(tmp_path / "disk") as disk:
            db = disk / "app.db"
            config = make_config(tmp_path, DB_PATH=db, OUTBOX_DIR=tmp_path / "outbox",
                                 EMAIL_RATE=50)
            filler = disk / "filler"
            with trio.fail_after(90):
                async with running_service(config) as svc, api_client(svc) as client:
                    # Queued before the disk fills: at 50/s these are still being
                    # sent (claimed, recorded) while it is full.
                    early = [f"early{i}@example.com" for i in range(200)]
                    assert (await client.post("/v1/messages", json=message(
                        "early", early))).status_code == 200
                    fill(filler, HEADROOM)
                    accepted, refused = await post_until_refused(client)
                    fill(filler, 0)  # and whatever a checkpoint freed meanwhile
                    # Small writes fit in the WAL's slack for a while: use it up,
                    # so that claims and outcomes fail too.
                    small, refused = await post_until_refused(client, "<p>Hi</p>")
                    accepted += small

                    assert refused.status_code == 503, refused.text
                    assert "disk is full" in refused.json()["error"]
                    assert (await stats(client, "fill"))["total"] == accepted
                    ready = await client.get("/ready")
                    assert ready.status_code == 503
                    assert "disk is full" in ready.json()["error"]
                    assert (await client.get("/health")).status_code == 200

                    filler.unlink()
                    await until_ready(client)
                    await until_sent(client, "early", len(early))
                    late = await client.post("/v1/messages", json=message("late", ["l@x.org"]))
                    assert late.status_code == 200, late.text
                    await until_sent(client, "late", 1)
                    assert await stats(client, "early") == {
                        "total": 200, "created": 0, "processing": 0, "sent": 200,
                        "failed": 0, "stopped": 0,
                    }
            with sqlite3.connect(db) as conn:  # nothing half-stored: no content without rows
                (orphans,) = conn.execute(
                    "SELECT COUNT(*) FROM email_contents c WHERE NOT EXISTS"
                    " (SELECT 1 FROM email_requests r WHERE r.content_id = c.id)"
                ).fetchone()
                (contents,) = conn.execute("SELECT COUNT(*) FROM email_contents").fetchone()
            assert orphans == 0
            assert contents == accepted + 2


class TestDeletedDataDirectory:
    async def test_writes_refused_and_not_ready(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        config = make_config(tmp_path, OUTBOX_DIR=tmp_path / "outbox", EMAIL_RATE=100)
        with trio.fail_after(30):
            async with running_service(config) as svc, api_client(svc) as client:
                first = await client.post("/v1/messages", json=message("t", ["a@example.com"]))
                assert first.status_code == 200
                await until_sent(client, "t", 1)
                shutil.rmtree(data)

                refused = await client.post("/v1/messages", json=message("t", ["b@example.com"]))
                assert refused.status_code == 503
                assert "deleted while running" in refused.json()["error"]
                ready = await client.get("/ready")
                assert ready.status_code == 503
                assert "deleted while running" in ready.json()["error"]
                assert (await client.get("/health")).status_code == 200
                assert (await stats(client, "t"))["total"] == 1  # the refused one is not there


class TestFullDiskAtStart:
    def test_one_line_and_exit_1(self, tmp_path: Path) -> None:
        with tmpfs(tmp_path / "disk") as disk:
            fill(disk / "filler", 0)
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("AWS_", "EMAIL_", "API_KEY", "SERVER_", "DB_PATH"))}
            env.update({"SERVER_PORT": "0", "SERVER_BIND": "127.0.0.1", "API_KEY": API_KEY,
                        "DB_PATH": str(disk / "app.db"), "EMAIL_TRANSPORT": "outbox",
                        "OUTBOX_DIR": str(tmp_path / "outbox")})
            done = subprocess.run(
                [sys.executable, "-m", "mailpipe"], cwd=tmp_path, env=env,
                capture_output=True, text=True, timeout=60, check=False,
            )
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr
        (last,) = [line for line in done.stderr.splitlines() if "CRITICAL" in line]
        assert "disk is full" in last or "No space left" in last


class TestReplacedDatabaseFile:
    async def test_writes_refused_reads_go_on(self, tmp_path: Path) -> None:
        db = tmp_path / "app.db"
        async with open_sqlite(db) as store:
            await store.ping()
            other = tmp_path / "other.db"
            other.write_bytes(db.read_bytes())
            other.replace(db)  # the path names another file now
            with pytest.raises(StoreError, match="replaced while running"):
                await store.insert_messages([], utcnow())
            with pytest.raises(StoreError, match="replaced while running"):
                await store.ping()
            assert await store.next_scheduled_at() is None  # reads of the open file go on
