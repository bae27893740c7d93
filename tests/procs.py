"""A real ``python -m mailpipe`` subprocess for signal and crash tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from conftest import API_KEY
from fake_ses import FakeSES

READY = re.compile(r"mailpipe ready on (http://\S+):")


class ServiceProcess:
    """Starts the service with ``env`` in ``workdir`` and collects its log lines."""

    def __init__(self, workdir: Path, env: dict[str, Any]) -> None:
        full = {k: v for k, v in os.environ.items()
                if not k.startswith(("AWS_", "EMAIL_", "API_KEY", "SERVER_", "DB_PATH"))}
        full.update({
            "SERVER_PORT": "0", "SERVER_BIND": "127.0.0.1", "API_KEY": API_KEY,
            "DB_PATH": str(workdir / "data" / "app.db"),
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1", "EMAIL_SENDER": "sender@example.com",
        })
        full.update({k: str(v) for k, v in env.items()})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailpipe"], cwd=workdir, env=full,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self.url = ""
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(30):
            self.proc.kill()
            raise RuntimeError("service did not start:\n" + self.log())
        self.client = httpx.Client(base_url=self.url, headers={"x-api-key": API_KEY}, timeout=30)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))
            match = READY.search(line)
            if match:
                self.url = match.group(1)
                self._ready.set()
        self._ready.set()

    def log(self) -> str:
        """Everything the service logged so far."""
        return "\n".join(line for _, line in self.lines)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Send ``signum`` to the service."""
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; its status."""
        try:
            status = self.proc.wait(timeout)
        finally:
            self.client.close()
        self._reader.join(5)  # the pipe ends with the process
        if not self._reader.is_alive() and self.proc.stderr is not None:
            self.proc.stderr.close()
        return status

    def stop(self) -> int:
        """SIGTERM and wait (used in cleanup)."""
        if self.proc.poll() is None:
            self.signal()
        return self.wait(60)

    def post(self, topic: str, emails: list[str], **extra: Any) -> httpx.Response:
        """POST one message to ``emails``."""
        body = {"messages": [{"topicId": topic, "emails": emails, "subject": "Hello",
                              "content": "<p>Hello</p>", **extra}]}
        return self.client.post("/v1/messages", json=body)

    def stats_full(self, topic: str) -> dict[str, Any]:
        """The topic's answer to ``GET /v1/topics/{id}`` (request and result counts)."""
        result: dict[str, Any] = self.client.get(f"/v1/topics/{topic}").json()
        return result

    def stats(self, topic: str) -> dict[str, Any]:
        """The topic's request counts."""
        result: dict[str, Any] = self.client.get(f"/v1/topics/{topic}").json()["request"]
        return result


def wait_until(predicate: Any, timeout: float, interval: float = 0.02) -> None:
    """Poll ``predicate`` until true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


def killed_mid_send(
    workdir: Path, env: dict[str, Any], ses: FakeSES, topic: str, emails: list[str],
    after: int = 500,
) -> None:
    """Start ``python -m mailpipe``, post ``emails`` to ``topic`` and ``kill -9`` it
    once ``ses`` has received ``after`` of them."""
    svc = ServiceProcess(workdir, env)
    assert svc.post(topic, emails).status_code == 200
    wait_until(lambda: len(ses.received) >= after, timeout=30)
    svc.signal(signal.SIGKILL)
    assert svc.wait(timeout=10) == -signal.SIGKILL


@contextmanager
def checked_outbox_service(workdir: Path) -> Iterator[ServiceProcess]:
    """``python -m mailpipe`` (outbox transport, room for schema-driven requests);
    it must stop cleanly with no traceback in its log."""
    env = {"EMAIL_TRANSPORT": "outbox", "EMAIL_RATE": 500, "MAX_RECIPIENTS_PER_REQUEST": 1000}
    svc = ServiceProcess(workdir, env)
    try:
        yield svc
    finally:
        assert svc.stop() == 0
    assert "Traceback" not in svc.log(), svc.log()
