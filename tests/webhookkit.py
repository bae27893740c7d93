"""A real HTTP receiver for webhooks (a threaded server on port 0), and endpoint helpers.

    with Receiver(fail_first=2) as rx:        # 500 to each event's first two attempts, then 200
        ...register rx.url...
        rx.delivered_ids()                    # webhook-ids answered 2xx, with how often

Every request is kept (headers, body, the status answered) for the test to check.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook


@dataclass(frozen=True)
class Received:
    """One request the receiver got, and what it answered."""

    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def id(self) -> str:
        """Its ``webhook-id``."""
        return self.headers["webhook-id"]

    def verifies(self, secret: str) -> bool:
        """True when ``secret`` verifies its signature (``standardwebhooks``)."""
        try:
            Webhook(secret).verify(self.body, self.headers)
        except Exception:
            return False
        return True


Answer = Callable[[str, int], int]
"""(webhook-id, how many times this id came before) → the status to answer."""


class Receiver:
    """A local webhook receiver; ``answer`` decides each status (default: 200)."""

    def __init__(
        self,
        *,
        fail_first: int = 0,
        answer: Answer | None = None,
        body: bytes = b"ok",
        delay_s: float = 0.0,
        hold: threading.Event | None = None,
    ) -> None:
        self.received: list[Received] = []
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._answer = answer or (lambda _id, n: 500 if n < fail_first else 200)
        self._body = body
        self._delay = delay_s
        self.hold = hold
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                data = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver.record(headers, data)  # kept on arrival, answered or not
                if receiver.hold is not None:
                    receiver.hold.wait(60)
                self.send_response(status)
                self.send_header("content-length", str(len(receiver._body)))
                self.end_headers()
                if receiver._delay:
                    for byte in receiver._body:  # a trickle: one byte per delay
                        time.sleep(receiver._delay)
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                else:
                    self.wfile.write(receiver._body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def record(self, headers: dict[str, str], body: bytes) -> int:
        """Keep one request; the status to answer it with."""
        with self._lock:
            wid = headers.get("webhook-id", "")
            status = self._answer(wid, self._seen[wid])
            self._seen[wid] += 1
            self.received.append(Received(headers, body, status))
            return status

    def delivered_ids(self) -> Counter[str]:
        """Each webhook-id answered 2xx, and how many times."""
        with self._lock:
            return Counter(r.id for r in self.received if 200 <= r.status < 300)

    def attempts(self) -> Counter[str]:
        """Each webhook-id received, and how many times."""
        with self._lock:
            return Counter(r.id for r in self.received)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.hold is not None:
            self.hold.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


async def register(
    client: httpx.AsyncClient, url: str, events: list[str], **extra: Any
) -> dict[str, Any]:
    """POST /v1/webhooks; the created endpoint (with its secret)."""
    response = await client.post("/v1/webhooks", json={"url": url, "events": events, **extra})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created
