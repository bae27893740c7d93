"""The ``mailpipe`` command line against a real ``python -m mailpipe`` (outbox transport).

The server's ``MAX_RECIPIENTS_PER_REQUEST`` is set small so that a list of a few
thousand rows needs several POSTs and the test stays fast.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from clikit import CLI, cli_env, run_cli, write_list, write_message
from procs import ServiceProcess

LIMIT = 500
"""The server's MAX_RECIPIENTS_PER_REQUEST in these tests."""


@contextmanager
def started(tmp_path: Path, store_env: dict[str, str]) -> Iterator[ServiceProcess]:
    """``python -m mailpipe`` taking at most ``LIMIT`` recipients a POST."""
    env = {"EMAIL_TRANSPORT": "outbox", "EMAIL_RATE": 1000,
           "MAX_RECIPIENTS_PER_REQUEST": LIMIT, **store_env}  # fmt: skip
    svc = ServiceProcess(tmp_path, env)
    try:
        yield svc
    finally:
        assert svc.stop() == 0


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    """The service on SQLite (the resume test runs on both stores)."""
    with started(tmp_path, {}) as svc:
        yield svc


@pytest.fixture
def either_service(tmp_path: Path, store_env: dict[str, str]) -> Iterator[ServiceProcess]:
    """The service on SQLite, then on PostgreSQL."""
    with started(tmp_path, store_env) as svc:
        yield svc


def test_send_in_chunks_then_interrupted_run_resumes_exactly(
    either_service: ServiceProcess, tmp_path: Path
) -> None:
    service = either_service
    rows = 8 * LIMIT + 123  # 9 POSTs
    listing = write_list(tmp_path / "list.csv.gz", rows)
    args = ["send", str(listing), "--topic", "resume", "--chunk-size", str(LIMIT),
            *write_message(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(
        [*CLI, *args], cwd=tmp_path, env=cli_env(service.url), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:  # a real SIGINT once the first chunk is stored
        if line.startswith("chunk 1:"):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err
    first = service.stats("resume")["total"]
    assert LIMIT <= first < rows

    again = run_cli(service.url, *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "already stored (resumed)" in again.stdout
    assert f"{rows:,} rows read, {rows:,} recipients accepted" in again.stdout
    assert service.stats("resume")["total"] == rows

    third = run_cli(service.url, *args, cwd=tmp_path)  # a third run stores nothing more
    assert third.returncode == 0 and f"({rows:,} from an earlier run)" in third.stdout
    assert service.stats("resume")["total"] == rows


def test_template_data_refused_lines_and_watch_to_the_end(
    service: ServiceProcess, tmp_path: Path
) -> None:
    listing = tmp_path / "list.jsonl"
    lines = [
        json.dumps({"email": f"j{i}@example.com", "data": {"name": f"J{i}", "plan": "p"}})
        for i in range(1200)
    ]
    lines[10] = json.dumps({"email": "not-an-address", "name": "x"})
    lines[20] = "{broken"
    lines[30] = json.dumps({"email": "j5@example.com", "name": "dup", "plan": "p"})
    listing.write_text("\n".join(lines) + "\n")
    args = ["send", str(listing), "--topic", "data", "--chunk-size", str(LIMIT),
            *write_message(tmp_path)]  # fmt: skip
    done = run_cli(service.url, *args, cwd=tmp_path)
    assert done.returncode == 1  # some rows were refused
    assert "line 11: " in done.stdout and "line 21: not JSON" in done.stdout
    assert "line 31: 'j5@example.com' is a duplicate of line 6" in done.stdout
    assert "1,200 rows read, 1,197 recipients accepted (0 from an earlier run), 3 refused" in (
        done.stdout
    )
    watched = run_cli(service.url, "status", "data", "--watch", "--interval", "0.1", cwd=tmp_path)
    assert watched.returncode == 0, watched.stderr
    assert "data: done · sent 1,197 · failed 0 · stopped 0 · pending 0" in watched.stdout
    rendered = [p.read_text() for p in (tmp_path / "data" / "outbox").rglob("*") if p.is_file()]
    assert any("Hello J7, your plan is p." in text for text in rendered)


def test_dry_run_stores_nothing(service: ServiceProcess, tmp_path: Path) -> None:
    listing = write_list(tmp_path / "list.csv", 3 * LIMIT)
    args = ["send", str(listing), "--topic", "dry", "--chunk-size", str(LIMIT), "--dry-run",
            *write_message(tmp_path)]  # fmt: skip
    done = run_cli(service.url, *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "chunk 3: 500 recipients valid" in done.stdout
    assert "dry run: nothing was stored" in done.stdout
    assert service.stats("dry")["total"] == 0
    bad_template = tmp_path / "bad.html"
    bad_template.write_text("<p>{{ name </p>")
    refused = run_cli(service.url, "send", str(listing), "--topic", "dry", "--dry-run",
                      "--chunk-size", str(LIMIT), "--subject", "s", "--html", str(bad_template),
                      cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.startswith("mailpipe: POST /v1/messages: 400 ")
    assert service.stats("dry")["total"] == 0


def test_errors_are_one_line_with_the_servers_message(
    service: ServiceProcess, tmp_path: Path
) -> None:
    listing = write_list(tmp_path / "list.csv", LIMIT + 1)
    message = write_message(tmp_path)
    too_big = run_cli(service.url, "send", str(listing), "--topic", "big", *message, cwd=tmp_path)
    assert too_big.returncode == 1
    assert too_big.stderr.count("\n") == 1 and "413" in too_big.stderr
    assert "MAX_RECIPIENTS_PER_REQUEST (500)" in too_big.stderr and "--chunk-size" in too_big.stderr
    wrong_key = run_cli(service.url, "status", "big", cwd=tmp_path, MAILPIPE_API_KEY="x" * 20)
    assert wrong_key.returncode == 1
    assert wrong_key.stderr == "mailpipe: GET /v1/topics/big: 401 missing or invalid x-api-key\n"
    no_column = run_cli(service.url, "send", str(listing), "--topic", "big", "--email-column",
                        "mail", *message, cwd=tmp_path)  # fmt: skip
    assert no_column.returncode == 1 and "no 'mail' column" in no_column.stderr
    away = run_cli("http://127.0.0.1:9", "status", "x", cwd=tmp_path)
    assert away.returncode == 1 and away.stderr.startswith("mailpipe: cannot reach ")
    assert service.stats("big")["total"] == 0


def test_stop_and_suppressions(service: ServiceProcess, tmp_path: Path) -> None:
    listing = write_list(tmp_path / "list.csv", 3 * LIMIT)
    send = run_cli(service.url, "send", str(listing), "--topic", "halt", "--chunk-size",
                   str(LIMIT), "--at", "2099-01-01T00:00:00Z", *write_message(tmp_path),
                   cwd=tmp_path)  # fmt: skip
    assert send.returncode == 0, send.stderr
    stopped = run_cli(service.url, "stop", "halt", cwd=tmp_path)
    assert stopped.stdout == "halt: 1,500 requests stopped\n"
    assert service.stats("halt")["stopped"] == 3 * LIMIT

    added = run_cli(service.url, "suppressions", "add", "a@example.com", "B@Example.com",
                    cwd=tmp_path)  # fmt: skip
    assert added.stdout == "2 added, 0 already suppressed\n"
    imported = write_list(tmp_path / "supp.csv", 1500)
    done = run_cli(service.url, "suppressions", "import", str(imported), cwd=tmp_path)
    assert done.stdout == "1,500 addresses read, 1,500 newly suppressed\n"
    removed = run_cli(service.url, "suppressions", "remove", "a@example.com", cwd=tmp_path)
    assert removed.returncode == 0
    again = run_cli(service.url, "suppressions", "remove", "a@example.com", cwd=tmp_path)
    assert again.returncode == 1 and "404 address is not suppressed" in again.stderr
    exported = tmp_path / "out.csv"
    run_cli(service.url, "suppressions", "export", str(exported), cwd=tmp_path)
    lines = exported.read_text().splitlines()
    assert lines[0] == "email,reason,source,createdAt" and len(lines) == 1 + 1501
    assert any(line.startswith("b@example.com,manual,") for line in lines)
    listed = run_cli(service.url, "suppressions", "list", "--limit", "5", cwd=tmp_path)
    assert "user1499@example.com" in listed.stdout


def test_account_shows_the_rate_standing_and_pause(service: ServiceProcess, tmp_path: Path) -> None:
    shown = run_cli(service.url, "account", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = [" ".join(line.split()) for line in shown.stdout.splitlines()]
    rate = service.client.get("/v1/account").json()["rate"]
    assert f"rate {rate:,}/s (EMAIL_RATE)" in lines
    assert "paused no" in lines
    assert any(line.startswith("reputation 0 sends in 24 h") for line in lines)


def test_account_lines_name_the_quota_and_the_pause() -> None:
    from mailpipe.cli import account_lines

    answer = {
        "rate": 14, "emailRate": 20, "enforcementStatus": "PROBATION", "sendingEnabled": True,
        "error": None,
        "quota": {"max24HourSend": 50000.0, "maxSendRate": 14.0, "sentLast24Hours": 1234.0},
        "reputation": {"windowHours": 24.0, "sends": 1500, "bounces": 90, "complaints": 0,
                       "bounceRate": 0.06, "complaintRate": 0.0},
        "paused": {"reason": "account bounce rate 6.00%", "by": "auto",
                   "at": "2026-12-02T14:00:00Z"},
    }  # fmt: skip
    assert dict(account_lines(answer)) == {
        "rate": "14/s (EMAIL_RATE=20, capped by SES's MaxSendRate)",
        "SES quota": "1,234 of 50,000 sent in 24 h, max 14.0/s",
        "SES standing": "PROBATION, sending enabled",
        "reputation": "1,500 sends in 24 h, bounce rate 6.00%, complaint rate 0.000%",
        "paused": "YES (auto, 2026-12-02T14:00:00Z): account bounce rate 6.00%",
    }


def test_names_are_printed_as_written_not_as_markup(
    service: ServiceProcess, tmp_path: Path
) -> None:
    stopped = run_cli(service.url, "stop", "[bold]odd", cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout == "[bold]odd: 0 requests stopped\n"
