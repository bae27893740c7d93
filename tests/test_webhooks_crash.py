"""A ``kill -9`` between the commit of an event and its delivery: a real process, a
real receiver that holds the first attempt open while the process dies."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from procs import ServiceProcess, wait_until
from webhookkit import Receiver

ENV = {"EMAIL_TRANSPORT": "outbox", "WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_POLL_S": "0.05"}


def test_an_event_committed_before_a_kill_is_delivered_after_the_restart(tmp_path: Path) -> None:
    hold = threading.Event()
    with Receiver(hold=hold) as rx:
        first = ServiceProcess(tmp_path, ENV)
        try:
            created = first.client.post("/v1/webhooks", json={"url": rx.url, "events": ["sent"]})
            assert created.status_code == 201, created.text
            secret, wid = created.json()["secret"], created.json()["id"]
            assert first.post("t", ["a@example.com"]).status_code == 200
            # The event is committed and its first attempt is in the receiver's hands.
            wait_until(lambda: len(rx.received) == 1, timeout=20)
        finally:
            first.signal(signal.SIGKILL)
            assert first.wait(timeout=10) == -signal.SIGKILL
        hold.set()
        second = ServiceProcess(tmp_path, ENV)
        try:
            wait_until(lambda: len(rx.received) == 2, timeout=20)

            def delivered() -> bool:
                rows = second.client.get(f"/v1/webhooks/{wid}/deliveries").json()["deliveries"]
                return [r["status"] for r in rows] == ["delivered"]

            wait_until(delivered, timeout=20)
        finally:
            assert second.stop() == 0
    (event_id,) = set(rx.attempts())
    assert rx.attempts()[event_id] == 2  # at most twice: the cut-off attempt and the resend
    assert all(r.verifies(secret) for r in rx.received)
    assert rx.received[0].body == rx.received[1].body
    assert "Traceback" not in second.log()
