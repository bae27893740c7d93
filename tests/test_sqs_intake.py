"""SES feedback through an SQS queue on moto's server (SQS over real HTTP): SNS-wrapped,
raw and EventBridge bodies, forged ones refused and left in the queue, redeliveries
counted once, and a delete only after the commit (the service killed between them)."""

from __future__ import annotations

import json
import logging
import signal
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio
from feedbackkit import TOPIC, feedback_service, ses_record, shared_key
from procs import ServiceProcess, wait_until
from snskit import SnsSigner
from sqskit import Queue, moto_queue


async def until(check: Callable[[], bool]) -> None:
    """Poll ``check`` (blocking, in a thread) until it is true (at most 15 s)."""
    with trio.fail_after(15):
        while not await trio.to_thread.run_sync(check):
            await trio.sleep(0.05)


def sqs_env(queue: Queue, raw: bool) -> dict[str, Any]:
    return {"SQS_QUEUE_URL": queue.url, "SQS_WAIT_S": 1, "SQS_RAW_MESSAGES": str(raw).lower()}


async def test_sns_wrapped_raw_and_eventbridge_messages_are_stored_then_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with moto_queue(monkeypatch) as queue, trio.fail_after(30):
        async with feedback_service(tmp_path, **sqs_env(queue, raw=True)) as h:
            sent = await h.send("q", ["a@example.com", "b@example.com", "c@example.com"])
            wrapped = h.signer.notification(
                TOPIC, ses_record("event", "Bounce", sent["a@example.com"]))
            queue.send(json.dumps(wrapped))
            queue.send(json.dumps(ses_record("identity", "Complaint", sent["b@example.com"])))
            detail = ses_record("event", "Delivery", sent["c@example.com"])
            queue.send(json.dumps({"version": "0", "id": "eb-1", "source": "aws.ses",
                                   "detail-type": "Email Delivered", "detail": detail}))
            await until(lambda: h.count("email_results") == 3 and queue.count() == 0)
            rows = h.query("SELECT request_id, status FROM email_results ORDER BY request_id")
            assert rows == [(sent["a@example.com"].id, "Bounce"),
                            (sent["b@example.com"].id, "Complaint"),
                            (sent["c@example.com"].id, "Delivery")]
            stats = (await h.client.get("/v1/topics/q")).json()
            assert stats["reputation"]["bounces"] == stats["reputation"]["complaints"] == 1


async def test_forged_and_unallowed_raw_messages_are_left_and_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with moto_queue(monkeypatch) as queue, trio.fail_after(30), \
            caplog.at_level(logging.WARNING, logger="mailpipe.pipeline.sqs_intake"):
        async with feedback_service(tmp_path, **sqs_env(queue, raw=False)) as h:
            sent = await h.send("f", ["a@example.com"])
            record = ses_record("event", "Bounce", sent["a@example.com"])
            forged = h.signer.notification(TOPIC, record)
            forged["Message"] = forged["Message"].replace("Permanent", "Transient")
            queue.send(json.dumps(forged))
            queue.send(json.dumps(record))  # raw, while SQS_RAW_MESSAGES=false

            def refused() -> list[str]:
                return [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]

            await until(lambda: len(refused()) == 2)
            # Each comes back after its visibility timeout (1 s) and is refused again,
            # silently: wait until both were received twice.
            await until(lambda: _received_twice(queue))
            assert len(refused()) == 2, refused()
            assert any("signature" in line.lower() for line in refused())
            assert any("SQS_RAW_MESSAGES" in line for line in refused())
            assert h.count("email_results") == 0
            assert await trio.to_thread.run_sync(queue.count) == 2


def _received_twice(queue: Queue) -> bool:
    # ApproximateReceiveCount is only visible by receiving: peek with a zero
    # visibility timeout, which hands the message straight back.
    answer = queue.client.receive_message(
        QueueUrl=queue.url, MaxNumberOfMessages=10, VisibilityTimeout=0,
        AttributeNames=["ApproximateReceiveCount"],
    )
    counts = [int(m["Attributes"]["ApproximateReceiveCount"]) for m in answer.get("Messages", [])]
    return len(counts) == 2 and min(counts) >= 3  # ours is one of them


async def test_a_redelivered_message_is_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with moto_queue(monkeypatch) as queue, trio.fail_after(30):
        async with feedback_service(tmp_path, **sqs_env(queue, raw=False)) as h:
            sent = await h.send("r", ["a@example.com"])
            msg = h.signer.notification(TOPIC, ses_record("event", "Bounce", sent["a@example.com"]))
            queue.send(json.dumps(msg))
            queue.send(json.dumps(msg))  # SNS delivers at least once
            await until(lambda: queue.count() == 0)
            assert h.count("email_results") == 1
            assert (await h.client.get("/v1/topics/r")).json()["result"]["statuses"] == {
                "Bounce": 1}


@contextmanager
def delete_holding_proxy(target: str) -> Iterator[tuple[str, threading.Event]]:
    """An HTTP proxy to ``target`` that never answers a DeleteMessageBatch (nor
    forwards it); the event is set when one arrived."""
    deleting = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            action = self.headers.get("x-amz-target", "") + body.decode(errors="replace")
            if "DeleteMessage" in action:
                deleting.set()
                threading.Event().wait(60)  # held until the service is killed
                return
            request = urllib.request.Request(target + self.path, data=body, method="POST",
                                             headers=dict(self.headers.items()))
            with urllib.request.urlopen(request, timeout=30) as answer:
                payload = answer.read()
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", deleting
    finally:
        server.shutdown()
        server.server_close()


def test_a_message_is_deleted_only_after_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between the commit and the delete: the message comes back, is
    deduplicated, and only then deleted."""
    signer = SnsSigner(tmp_path / "certs", key=shared_key())
    with moto_queue(monkeypatch) as queue, delete_holding_proxy(queue.endpoint) as (proxy, held):
        env = {**sqs_env(queue, raw=False), "EMAIL_TRANSPORT": "outbox",
               "SNS_TOPIC_ARNS": TOPIC, "SNS_CERT_CACHE_DIR": str(tmp_path / "certs"),
               "AWS_ENDPOINT_URL_SQS": proxy}
        svc = ServiceProcess(tmp_path, env)
        try:
            assert svc.post("k", ["a@example.com"]).status_code == 200
            wait_until(lambda: svc.stats("k")["sent"] == 1, timeout=15)
            db = tmp_path / "data" / "app.db"
            (message_id,) = _one(db, "SELECT message_id FROM email_requests")
            record = ses_record("event", "Bounce", _sent(db, message_id))
            queue.send(json.dumps(signer.notification(TOPIC, record)))
            assert held.wait(15)  # committed, and now deleting
            assert _one(db, "SELECT count(*) FROM email_results") == (1,)
            svc.signal(signal.SIGKILL)
            assert svc.wait(10) == -signal.SIGKILL
        finally:
            if svc.proc.poll() is None:
                svc.proc.kill()
                svc.wait(10)
        assert queue.count() == 1  # not deleted
        env["AWS_ENDPOINT_URL_SQS"] = queue.endpoint
        again = ServiceProcess(tmp_path, env)
        try:
            wait_until(lambda: queue.count() == 0, timeout=20)
            assert _one(db, "SELECT count(*) FROM email_results") == (1,)  # counted once
            assert "was already stored" in again.log()
        finally:
            assert again.stop() == 0


def _one(db: Path, sql: str) -> tuple[Any, ...]:
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(db, timeout=10)) as conn:
        row: tuple[Any, ...] = conn.execute(sql).fetchone()
        return row


def _sent(db: Path, message_id: str) -> Any:
    from feedbackkit import Sent

    (rid, to) = _one(db, f"SELECT id, \"to\" FROM email_requests WHERE message_id = '{message_id}'")
    return Sent(rid, to, message_id, 2, None)
