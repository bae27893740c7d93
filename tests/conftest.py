"""Shared fixtures: a real service on port 0 with a real SQLite file; PostgreSQL
test databases (see :mod:`pgkit`)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from mailpipe.config import Config, load_config
from mailpipe.service import Service, run_service

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pgkit  # noqa: E402  (found through the path above)
from fake_ses import FakeSES  # noqa: E402

API_KEY = "test-key-0123456789"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSES]:
    """A fake SES endpoint that boto3 clients made in the test send to."""
    with FakeSES() as ses:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SESV2", ses.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        yield ses


def make_config(tmp_path: Path, **env: Any) -> Config:
    """A config for a service under ``tmp_path``: port 0, loopback, outbox unless told."""
    base = {
        "SERVER_PORT": "0",
        "SERVER_BIND": "127.0.0.1",
        "DB_PATH": str(tmp_path / "data" / "app.db"),
        "API_KEY": API_KEY,
        "EMAIL_TRANSPORT": "outbox",
        "EMAIL_SENDER": "sender@example.com",
    }
    base.update({k: str(v) for k, v in env.items()})
    return load_config(base, env_file=tmp_path / "no.env")


@asynccontextmanager
async def running_service(config: Config) -> AsyncIterator[Service]:
    """Run the service in this trio run; shut it down gracefully on exit."""
    async with trio.open_nursery() as nursery:
        svc: Service = await nursery.start(
            lambda task_status: run_service(config, handle_signals=False, task_status=task_status)
        )
        try:
            yield svc
        finally:
            svc.request_shutdown()


@asynccontextmanager
async def api_client(svc: Service, key: str | None = API_KEY) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for ``svc``, sending ``x-api-key`` when ``key`` is given."""
    headers = {"x-api-key": key} if key else {}
    async with httpx.AsyncClient(base_url=svc.url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """A default test config (outbox transport)."""
    return make_config(tmp_path)


def ses_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: str, **env: Any
) -> Config:
    """A config sending through the SES transport to ``endpoint`` (a FakeSES URL)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SESV2", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return make_config(tmp_path, EMAIL_TRANSPORT="ses", **env)


@pytest.fixture(scope="module")
def pg_database(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL database for this test module: (name, URL); dropped after."""
    with pgkit.server_turn():
        pgkit.reachable_or_skip()
        name, url = pgkit.create_database(request.module.__name__)
    try:
        yield name, url
    finally:
        with pgkit.server_turn():
            pgkit.drop_database(name)


@pytest.fixture(autouse=True)
def postgres_turn(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test holds the PostgreSQL server shared; one marked ``restarts_postgres``
    holds it alone, so tests on other workers never see it restart."""
    alone = request.node.get_closest_marker("restarts_postgres") is not None
    with pgkit.server_turn(exclusive=alone):
        yield


@pytest.fixture
def pg_url(pg_database: tuple[str, str]) -> str:
    """The URL of this module's database, emptied for this test."""
    pgkit.reset_database(pg_database[1])
    return pg_database[1]


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a store test opens its store: a SQLite file, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return tmp_path / "app.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Settings putting a service's store on SQLite (none) or on PostgreSQL."""
    if request.param == "sqlite":
        return {}
    url: str = request.getfixturevalue("pg_url")
    return {"DATABASE_URL": url}
