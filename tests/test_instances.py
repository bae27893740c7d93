"""Several real ``python -m mailpipe`` processes on one database.

PostgreSQL: instances share one queue, one exact rate, stops and
suppressions; a killed instance's rows move on to the others; a database
restart loses nothing. SQLite: one instance per file, and a start whose port
is taken touches nothing.
"""

from __future__ import annotations

import bisect
import collections
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from bench import Fake
from conftest import API_KEY
from pgkit import execute
from procs import ServiceProcess, wait_until

from mailpipe.content.tokens import Tokens

TRACKING_SECRET = "instances-tracking-secret-0123456789"
REGISTERED = re.compile(r"instance (\S+) registered")


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(bisect.bisect_left(times, t + window) - i for i, t in enumerate(times))


def start(tmp_path: Path, name: str, env: dict[str, Any]) -> ServiceProcess:
    workdir = tmp_path / name
    workdir.mkdir()
    return ServiceProcess(workdir, {"TRACKING_SECRET": TRACKING_SECRET, **env})


def instance_id(svc: ServiceProcess) -> str:
    for _, line in svc.lines:
        match = REGISTERED.search(line)
        if match:
            return match.group(1)
    raise AssertionError("no registration logged:\n" + svc.log())


def sent_total(svc: ServiceProcess) -> float:
    text = svc.client.get("/metrics").text
    return float(re.search(r"^mailpipe_sent_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


def status_counts(url: str) -> dict[int, int]:
    return dict(execute(url, "SELECT status, count(*) FROM email_requests GROUP BY status"))  # type: ignore[arg-type]


def stop_all(*services: ServiceProcess) -> None:
    for svc in services:
        if svc.proc.poll() is None:
            svc.signal()
    for svc in services:
        svc.wait(60)


def test_three_instances_share_one_exact_rate(tmp_path: Path, pg_url: str) -> None:
    emails = [f"r{i}@example.com" for i in range(3000)]
    ses = Fake()
    env = {"DATABASE_URL": pg_url, "EMAIL_TRANSPORT": "ses", "EMAIL_RATE": 100,
           "AWS_ENDPOINT_URL_SESV2": ses.url}
    services = [start(tmp_path, f"i{n}", env) for n in range(3)]
    try:
        assert services[0].post("shared", emails).status_code == 200
        wait_until(lambda: ses.stats()["recipients"] >= 3000, timeout=60, interval=0.5)
        wait_until(lambda: services[1].stats("shared")["sent"] == 3000, timeout=15)
        per_instance = [sent_total(svc) for svc in services]
        received = ses.received()
    finally:
        stop_all(*services)
        ses.close()
    assert sorted(m["to"][0] for m in received) == sorted(emails)  # each exactly once
    assert all(n > 0 for n in per_instance), per_instance
    assert sum(per_instance) == 3000
    # The same allowance for this shared machine's hand-off jitter as the
    # single-instance rate test (test_process.py); exactness without jitter is
    # proven in test_limiter.py and test_shared_rate.py.
    arrivals = [m["arrival_monotonic"] for m in received]
    assert max_in_window(arrivals, window=0.97) <= 100
    assert status_counts(pg_url) == {2: 3000}


def test_kill_9_of_one_instance_its_rows_move_on(tmp_path: Path, pg_url: str) -> None:
    emails = [f"k{i}@example.com" for i in range(4000)]
    max_concurrent = 20
    ses = Fake("--latency-ms", "50")
    env = {"DATABASE_URL": pg_url, "EMAIL_TRANSPORT": "ses", "EMAIL_RATE": 200,
           "MAX_CONCURRENT": max_concurrent, "AWS_ENDPOINT_URL_SESV2": ses.url}
    services = [start(tmp_path, f"k{n}", env) for n in range(3)]
    victim, survivors = services[0], services[1:]
    try:
        victim_id = instance_id(victim)
        assert victim.post("kill", emails).status_code == 200
        wait_until(lambda: ses.stats()["recipients"] >= 1000, timeout=60, interval=0.2)
        wait_until(lambda: execute(pg_url, "SELECT count(*) FROM email_requests"
                                " WHERE owner = %s", (victim_id,))[0][0] > 0, timeout=30)
        victim.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert victim.wait(10) == -signal.SIGKILL
        wait_until(lambda: time.monotonic() - killed_at >= 15, timeout=20, interval=0.5)
        held = execute(pg_url, "SELECT count(*) FROM email_requests WHERE owner = %s"
                       " AND status = 1", (victim_id,))
        assert held[0][0] == 0, survivors[0].log()[-3000:]  # taken back within 15 s
        wait_until(lambda: survivors[0].stats("kill")["sent"] == 4000, timeout=60, interval=0.5)
        received = ses.received()
    finally:
        stop_all(*services)
        ses.close()
    per_address = collections.Counter(m["to"][0] for m in received)
    assert sorted(per_address) == sorted(emails)  # every recipient delivered
    duplicates = sum(n - 1 for n in per_address.values())
    # Only calls the victim had in flight can be sent twice: at most
    # MAX_CONCURRENT calls of at most one 50-recipient batch each.
    assert duplicates <= max_concurrent * 50
    assert status_counts(pg_url) == {2: 4000}


def test_sigterm_of_one_instance_gives_its_rows_back_at_once(
    tmp_path: Path, pg_url: str
) -> None:
    emails = [f"t{i}@example.com" for i in range(600)]
    ses = Fake("--latency-ms", "50")
    env = {"DATABASE_URL": pg_url, "EMAIL_TRANSPORT": "ses", "EMAIL_RATE": 50,
           "AWS_ENDPOINT_URL_SESV2": ses.url}
    first, second = start(tmp_path, "a", env), start(tmp_path, "b", env)
    try:
        first_id = instance_id(first)
        assert first.post("term", emails).status_code == 200
        wait_until(lambda: execute(pg_url, "SELECT count(*) FROM email_requests"
                                " WHERE owner = %s", (first_id,))[0][0] > 0, timeout=30)
        first.signal()
        assert first.wait(30) == 0
        # Returned on the way out, not after a lease: nothing waits for 10 s.
        held = execute(pg_url, "SELECT count(*) FROM email_requests WHERE owner = %s"
                       " AND status = 1", (first_id,))
        assert held[0][0] == 0
        registered = execute(pg_url, "SELECT count(*) FROM instances WHERE id = %s", (first_id,))
        assert registered[0][0] == 0
        wait_until(lambda: second.stats("term")["sent"] == 600, timeout=60, interval=0.5)
        received = ses.received()
    finally:
        stop_all(first, second)
        ses.close()
    assert sorted(m["to"][0] for m in received) == sorted(emails)  # exactly once each


def test_stop_and_suppression_reach_rows_claimed_by_another_instance(
    tmp_path: Path, pg_url: str
) -> None:
    emails = [f"s{i}@example.com" for i in range(300)]
    ses = Fake()
    env = {"DATABASE_URL": pg_url, "EMAIL_TRANSPORT": "ses", "EMAIL_RATE": 10,
           "AWS_ENDPOINT_URL_SESV2": ses.url}
    a, b = start(tmp_path, "a", env), start(tmp_path, "b", env)
    try:
        b_id = instance_id(b)
        # Posted to B, which claims at once; the stop and the unsubscribe go through A.
        assert b.post("cross", emails).status_code == 200
        wait_until(lambda: execute(pg_url, "SELECT count(*) FROM email_requests WHERE owner = %s"
                                " AND status = 1", (b_id,))[0][0] >= 20, timeout=30)
        # An address B holds, unsubscribed through A.
        rid, victim = execute(pg_url, 'SELECT id, "to" FROM email_requests WHERE owner = %s'
                           " AND status = 1 ORDER BY id DESC LIMIT 1", (b_id,))[0]
        link = Tokens(TRACKING_SECRET.encode()).unsubscribe_url(a.url, rid, victim)
        query = {k: v[0] for k, v in parse_qs(urlsplit(link).query).items()}
        answer = a.client.post("/v1/unsubscribe", params=query,
                               data={"List-Unsubscribe": "One-Click"})
        assert answer.status_code == 200
        # Then the whole topic stopped through A, while B holds some of its rows.
        assert a.client.delete("/v1/topics/cross").status_code == 200
        stopped_at = time.monotonic()
        try:
            wait_until(lambda: a.stats("cross")["processing"] == 0, timeout=10, interval=0.1)
        except AssertionError:
            rows = execute(pg_url, "SELECT owner, status, error, count(*) FROM email_requests"
                           " GROUP BY 1, 2, 3 ORDER BY 1, 2")
            raise AssertionError(f"{a.stats('cross')}, rows {rows}\n{b.log()[-3000:]}") from None
        settled_after = time.monotonic() - stopped_at
        counts = a.stats("cross")
        time.sleep(1.5)  # nothing more may arrive: two permits' worth of time
        received = ses.received()
    finally:
        stop_all(a, b)
        ses.close()
    assert settled_after < 3.0
    arrived = [m["to"][0] for m in received]
    assert victim not in arrived
    assert counts["sent"] + counts["stopped"] == 300
    assert len(arrived) == counts["sent"]
    error = execute(pg_url, "SELECT error FROM email_requests WHERE id = %s", (rid,))[0][0]
    assert error in ("suppressed: unsubscribe", "stopped")


def test_a_paused_account_pauses_every_instance(tmp_path: Path, pg_url: str) -> None:
    ses = Fake()
    env = {"DATABASE_URL": pg_url, "EMAIL_TRANSPORT": "ses", "EMAIL_RATE": 50,
           "AWS_ENDPOINT_URL_SESV2": ses.url, "PAUSE_PROBE_S": 1}
    a, b = start(tmp_path, "a", env), start(tmp_path, "b", env)
    try:
        ses.configure(paused=True)
        assert a.post("pause", ["p1@example.com"]).status_code == 200
        # Whichever instance called SES, both stop sending and say why.
        for svc in (a, b):
            wait_until(lambda s=svc: s.client.get("/ready").status_code == 503, timeout=15)
            assert "paused" in svc.client.get("/ready").json()["status"]
        ses.configure(paused=False)
        for svc in (a, b):
            wait_until(lambda s=svc: s.client.get("/ready").status_code == 200, timeout=15)
        wait_until(lambda: a.stats("pause")["sent"] == 1, timeout=15)
        received = ses.received()
    finally:
        stop_all(a, b)
        ses.close()
    assert [m["to"][0] for m in received] == ["p1@example.com"]


@pytest.mark.restarts_postgres
def test_postgres_restart_mid_send_loses_nothing_and_answers_503(
    tmp_path: Path, pg_url: str
) -> None:
    if not Path("/usr/bin/pg_ctlcluster").exists():
        pytest.skip("pg_ctlcluster is not installed: cannot restart the server")
    emails = [f"p{i}@example.com" for i in range(2000)]
    ses = Fake("--latency-ms", "20")
    env = {"DATABASE_URL": pg_url, "EMAIL_TRANSPORT": "ses", "EMAIL_RATE": 200,
           "AWS_ENDPOINT_URL_SESV2": ses.url}
    svc = start(tmp_path, "p", env)
    answers: collections.Counter[int] = collections.Counter()
    done = threading.Event()

    def probe() -> None:  # the API keeps being asked while the database is away
        with httpx.Client(base_url=svc.url, headers={"x-api-key": API_KEY}, timeout=10) as c:
            while not done.is_set():
                for call in (lambda: c.get("/v1/topics/restart"),
                             lambda: c.post("/v1/messages", json={"messages": []}),
                             lambda: c.get("/ready")):
                    try:
                        answers[call().status_code] += 1
                    except httpx.HTTPError:
                        answers[-1] += 1
                time.sleep(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    try:
        assert svc.post("restart", emails).status_code == 200
        wait_until(lambda: ses.stats()["recipients"] >= 400, timeout=60, interval=0.1)
        prober.start()
        # The restart, held open until the API has answered while the server was away.
        subprocess.run(["pg_ctlcluster", "15", "main", "stop"], check=True, timeout=60)
        try:
            wait_until(lambda: answers[503] >= 3, timeout=30, interval=0.1)
        finally:
            subprocess.run(["pg_ctlcluster", "15", "main", "start"], check=True, timeout=60)
        wait_until(lambda: ses.stats()["recipients"] >= 2000, timeout=90, interval=0.5)
        wait_until(lambda: status_counts(pg_url) == {2: 2000}, timeout=30, interval=0.5)
        received = ses.received()
    finally:
        done.set()
        prober.join(15)
        stop_all(svc)
        ses.close()
    assert sorted(m["to"][0] for m in received) == sorted(emails)  # all, none twice
    assert answers[500] == 0, answers
    assert answers[503] > 0, answers  # it noticed the database was away
    assert "Traceback" not in svc.log()


def run_to_exit(workdir: Path, env: dict[str, Any]) -> tuple[int, str]:
    """Run ``python -m mailpipe`` expecting it to exit by itself; status and stderr."""
    full = {"SERVER_BIND": "127.0.0.1", "API_KEY": API_KEY, "EMAIL_TRANSPORT": "outbox",
            "EMAIL_SENDER": "sender@example.com", "PATH": "/usr/bin:/bin",
            "DB_PATH": str(workdir / "data" / "app.db"), **{k: str(v) for k, v in env.items()}}
    done = subprocess.run([sys.executable, "-m", "mailpipe"], cwd=workdir, env=full,
                          capture_output=True, text=True, timeout=60)
    return done.returncode, done.stderr


def sqlite_counts(db: Path) -> dict[int, int]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT status, COUNT(*) FROM email_requests GROUP BY status"))
    finally:
        conn.close()


def test_second_instance_on_one_sqlite_file_refuses_and_changes_nothing(tmp_path: Path) -> None:
    emails = [f"q{i}@example.com" for i in range(300)]
    with _fake() as ses:
        env = {"EMAIL_TRANSPORT": "ses", "EMAIL_RATE": 50, "AWS_ENDPOINT_URL_SESV2": ses.url}
        first = ServiceProcess(tmp_path, env)
        try:
            assert first.post("one", emails).status_code == 200
            wait_until(lambda: first.stats("one")["processing"] > 0, timeout=30)
            status, err = run_to_exit(tmp_path, {**env, "AWS_ACCESS_KEY_ID": "testing",
                                                 "AWS_SECRET_ACCESS_KEY": "testing",
                                                 "SERVER_PORT": 0})
            assert status == 1
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1, err
            assert f"pid {first.proc.pid}" in lines[0]
            wait_until(lambda: first.stats("one")["sent"] == 300, timeout=30)
        finally:
            assert first.stop() == 0
        received = ses.received()
    assert sorted(m["to"][0] for m in received) == sorted(emails)  # nobody twice


def test_start_with_its_port_taken_exits_before_claiming(tmp_path: Path) -> None:
    (tmp_path / "first").mkdir()
    first = ServiceProcess(tmp_path / "first", {})
    try:
        port = int(first.url.rsplit(":", 1)[1])
        scheduled = tmp_path / "other"
        scheduled.mkdir()
        # A database with a due row, then a start on the taken port.
        seeded = ServiceProcess(scheduled, {})
        assert seeded.post("due", ["d@example.com"], scheduledAt="2099-01-01T00:00:00Z"
                           ).status_code == 200
        assert seeded.stop() == 0
        db = scheduled / "data" / "app.db"
        conn = sqlite3.connect(db)
        conn.execute("UPDATE email_requests SET scheduled_at = '2000-01-01 00:00:00.000000+00:00'")
        conn.commit()
        conn.close()
        status, err = run_to_exit(scheduled, {"SERVER_PORT": port})
        assert status == 2, err
        assert "SERVER_PORT" in err
        assert sqlite_counts(db) == {0: 1}  # still created: nothing was claimed
        assert not (scheduled / "data" / "outbox").exists() or not any(
            (scheduled / "data" / "outbox").iterdir())
    finally:
        assert first.stop() == 0


class _fake:
    """The fake SES endpoint in its own process, as a context manager."""

    def __enter__(self) -> Fake:
        self.fake = Fake()
        return self.fake

    def __exit__(self, *exc: object) -> None:
        self.fake.close()

