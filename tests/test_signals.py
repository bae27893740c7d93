"""Signals on the real ``python -m mailpipe``: only SIGKILL skips the graceful path."""

from __future__ import annotations

import signal
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from procs import ServiceProcess, wait_until

# Whose default action would end the process; each is logged and ignored.
IGNORED = [
    signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGVTALRM,
    signal.SIGPROF, signal.SIGIO, signal.SIGPWR, signal.SIGXFSZ, signal.SIGSTKFLT,
    signal.SIGRTMIN, signal.SIGRTMAX,
]
SHUTDOWN = [signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGXCPU]
OUTBOX = {"EMAIL_TRANSPORT": "outbox", "EMAIL_RATE": 20}


def statuses(db: Path) -> dict[int, int]:
    with closing(sqlite3.connect(db)) as conn:
        return dict(conn.execute("SELECT status, COUNT(*) FROM email_requests GROUP BY status"))


def test_stray_signals_are_logged_and_the_service_goes_on(tmp_path: Path) -> None:
    svc = ServiceProcess(tmp_path, OUTBOX)
    try:
        assert svc.post("before", ["a@example.com"]).status_code == 200
        for signum in IGNORED:
            handled = len(svc.lines)
            svc.signal(signum)
            wait_until(lambda n=handled: len(svc.lines) > n, timeout=10)
            line = svc.lines[handled][1]
            if signum == signal.SIGHUP:
                assert "SIGHUP: nothing to reopen (logging to stderr)" in line
            else:
                assert "ignored" in line, line
            assert svc.proc.poll() is None
            assert svc.client.get("/health").status_code == 200
        assert svc.post("after", ["b@example.com"]).status_code == 200
        wait_until(lambda: svc.stats("after")["sent"] == 1, timeout=10)
    finally:
        assert svc.stop() == 0
    assert "Traceback" not in svc.log()


@pytest.mark.parametrize("signum", SHUTDOWN, ids=lambda s: signal.Signals(s).name)
def test_shutdown_signals_stop_gracefully_mid_send(tmp_path: Path, signum: int) -> None:
    svc = ServiceProcess(tmp_path, OUTBOX)
    emails = [f"r{i}@example.com" for i in range(200)]
    try:
        assert svc.post("mid", emails).status_code == 200
        wait_until(lambda: svc.stats("mid")["sent"] >= 5, timeout=10)
        svc.signal(signum)
        assert svc.wait(30) == 0
    finally:
        if svc.proc.poll() is None:
            svc.proc.kill()
    counts = statuses(tmp_path / "data" / "app.db")
    assert counts.get(1, 0) == 0, counts  # nothing left processing
    assert sum(counts.values()) == len(emails)
    assert 0 < counts.get(2, 0) < len(emails)  # it stopped in the middle
    assert f"received {signal.Signals(signum).name}" in svc.log()
