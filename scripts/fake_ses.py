"""A small, fast, fault-injecting fake of the Amazon SES v2 sending API.

Speaks enough REST-JSON for boto3's ``sesv2`` client (``endpoint_url``):
``SendEmail`` (Simple, Raw, inline Template), ``SendBulkEmail`` (inline
template) and ``GetAccount``. Errors come back as AWS sends them, so botocore
raises ``ClientError`` with the right ``Error.Code``. Faults (latency,
throttling over a sliding 1-second window, 500s, dropped connections,
rejected addresses, paused/suspended account) are set at construction and
changed at runtime with :meth:`FakeSES.configure` or ``POST /_fake/configure``.

In-process::

    with FakeSES(latency=0.05, throttle_rate=14) as ses:
        client = boto3.client("sesv2", endpoint_url=ses.url, ...)
        ses.received  # snapshot of accepted messages

As a process: ``python scripts/fake_ses.py --port 0 --latency-ms 50``
prints ``listening on http://127.0.0.1:PORT`` once ready. Control endpoints:
``GET /_fake/received[?offset=N]`` (JSON list), ``GET /_fake/stats``,
``POST /_fake/configure`` (JSON of settings), ``POST /_fake/reset``.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import dataclasses
import itertools
import json
import random
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from email import message_from_bytes, policy
from email.utils import getaddresses, parseaddr
from typing import Any
from urllib.parse import parse_qs

__all__ = ["ApiError", "FakeSES", "Received", "Settings", "main"]

Json = dict[str, Any]
Headers = list[tuple[str, str]]
MAX_BULK_ENTRIES = 50
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error"}


@dataclasses.dataclass(frozen=True)
class Received:
    """One message the fake accepted: one per SendEmail, one per bulk entry."""

    arrival_monotonic: float
    arrival_wall: float
    api: str  # "SendEmail" | "SendBulkEmail"
    message_id: str
    from_address: str
    to: list[str]
    subject: str
    html: str
    text: str
    headers: Headers
    tags: dict[str, str]
    configuration_set: str | None
    raw: bytes | None = None
    cc: list[str] = dataclasses.field(default_factory=list)
    bcc: list[str] = dataclasses.field(default_factory=list)

    @property
    def recipients(self) -> list[str]:
        """Every destination address (To, Cc and Bcc)."""
        return self.to + self.cc + self.bcc

    def to_json(self) -> Json:
        """A JSON-ready dict; ``from`` for the sender, ``raw`` base64 or null."""
        out = dataclasses.asdict(self)
        out["from"] = out.pop("from_address")
        out["headers"] = [list(h) for h in self.headers]
        out["raw"] = None if self.raw is None else base64.b64encode(self.raw).decode()
        return out


@dataclasses.dataclass(frozen=True)
class Settings:
    """Fault and quota settings; every field may be changed at runtime."""

    latency: float = 0.0  # seconds slept before answering each send call
    throttle_rate: float | None = None  # recipients accepted per sliding second
    error_rate: float = 0.0  # fraction of send calls answered 500 InternalFailure
    error_every: int = 0  # every Nth send call answered 500 (0 = off)
    drop_rate: float = 0.0  # fraction of send calls whose connection is closed unanswered
    drop_every: int = 0  # every Nth send call dropped (0 = off)
    drop_accepted: bool = False  # a dropped call still records its messages
    reject_addresses: frozenset[str] = frozenset()  # recipients answered MessageRejected
    paused: bool = False  # sends answered SendingPausedException
    suspended: bool = False  # sends answered AccountSuspendedException
    max_send_rate: float = 1000.0  # reported by GetAccount
    max_24h: float = 1e6  # reported by GetAccount
    enforcement_status: str | None = None  # GetAccount's EnforcementStatus (None: derived)

    def __post_init__(self) -> None:
        addresses = frozenset(a.lower() for a in self.reject_addresses)
        object.__setattr__(self, "reject_addresses", addresses)
        for name in ("error_rate", "drop_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.latency < 0 or self.error_every < 0 or self.drop_every < 0:
            raise ValueError("latency, error_every and drop_every must be >= 0")
        if self.throttle_rate is not None and self.throttle_rate <= 0:
            raise ValueError("throttle_rate must be > 0 or None")

    def to_json(self) -> Json:
        """A JSON-ready dict of the settings."""
        out = dataclasses.asdict(self)
        out["reject_addresses"] = sorted(self.reject_addresses)
        return out


class ApiError(Exception):
    """An error answer in AWS REST-JSON form: HTTP status, error code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequestException", message)


@dataclasses.dataclass(frozen=True)
class _Reply:
    status: int = 200
    body: Json | list[Json] = dataclasses.field(default_factory=dict)
    error_code: str | None = None
    delay: float = 0.0
    drop: bool = False


def _error_reply(err: ApiError, delay: float = 0.0) -> _Reply:
    return _Reply(err.status, {"message": err.message}, err.code, delay)


def render(template: str, data: dict[str, Any]) -> str:
    """Replace each ``{{name}}`` with ``data[name]`` (unescaped; missing = "")."""
    return _PLACEHOLDER.sub(lambda m: str(data.get(m.group(1), "")), template)


def _data(text: str | None) -> dict[str, Any]:
    value = json.loads(text) if text else {}
    if not isinstance(value, dict):
        raise _bad_request("template data must be a JSON object")
    return value


def _headers(items: Sequence[Json] | None) -> Headers:
    return [(h["Name"], h["Value"]) for h in items or ()]


def _tags(items: Sequence[Json] | None) -> dict[str, str]:
    return {t["Name"]: t["Value"] for t in items or ()}


def _merge_headers(base: Headers, override: Headers) -> Headers:
    names = {name.lower() for name, _ in override}
    return [h for h in base if h[0].lower() not in names] + override


def _rejection(msg: Received, reject: frozenset[str]) -> str | None:
    """The MessageRejected text if any recipient is on the reject list."""
    if not reject:
        return None
    bad = [a for a in msg.recipients if parseaddr(a)[1].lower() in reject]
    if not bad:
        return None
    return ("Email address is not verified. The following identities failed the check"
            f" in region US-EAST-1: {', '.join(bad)}")


def _raw_message(raw: bytes, meta: Json) -> Json:
    """Message fields taken from a complete MIME message."""
    msg = message_from_bytes(raw, policy=policy.default)
    parts = {kind: msg.get_body((kind,)) for kind in ("html", "plain")}
    body = {k: "" if p is None else str(p.get_content()) for k, p in parts.items()}
    if not meta["to"] and not meta["cc"] and not meta["bcc"]:
        for field in ("to", "cc", "bcc"):
            meta[field] = [a for _, a in getaddresses(msg.get_all(field, []))]
    return meta | {
        "from_address": meta["from_address"] or parseaddr(str(msg.get("From", "")))[1],
        "subject": str(msg.get("Subject", "")), "html": body["html"], "text": body["plain"],
        "headers": [(k, str(v)) for k, v in msg.items()], "raw": raw,
    }


def _destination(dest: Json | None) -> Json:
    dest = dest or {}
    return {"to": list(dest.get("ToAddresses", ())), "cc": list(dest.get("CcAddresses", ())),
            "bcc": list(dest.get("BccAddresses", ()))}


def _template_fields(tmpl: Json, data: dict[str, Any]) -> Json:
    content = tmpl.get("TemplateContent")
    if content is None:
        raise _bad_request("fake_ses supports only inline TemplateContent, not TemplateName")
    return {"subject": render(content.get("Subject", ""), data),
            "html": render(content.get("Html", ""), data),
            "text": render(content.get("Text", ""), data)}


def parse_send_email(req: Json, base: Json) -> Received:
    """Build the message a SendEmail request describes; ``base`` has api/id/times."""
    meta = base | _destination(req.get("Destination")) | {
        "from_address": req.get("FromEmailAddress", ""), "tags": _tags(req.get("EmailTags")),
        "configuration_set": req.get("ConfigurationSetName")}
    content = req["Content"]
    if "Simple" in content:
        simple = content["Simple"]
        body = simple.get("Body", {})
        meta |= {"subject": simple["Subject"]["Data"], "headers": _headers(simple.get("Headers")),
                 "html": body.get("Html", {}).get("Data", ""),
                 "text": body.get("Text", {}).get("Data", "")}
    elif "Raw" in content:
        meta = _raw_message(base64.b64decode(content["Raw"]["Data"]), meta)
    elif "Template" in content:
        tmpl = content["Template"]
        meta |= _template_fields(tmpl, _data(tmpl.get("TemplateData")))
        meta["headers"] = _headers(tmpl.get("Headers"))
    else:
        raise _bad_request("Content needs Simple, Raw or Template")
    return Received(**meta)


def parse_bulk_email(req: Json, base: Json, new_id: Callable[[], str]) -> list[Received]:
    """Render every entry of a SendBulkEmail request into one message each."""
    tmpl = req["DefaultContent"]["Template"]
    entries = req["BulkEmailEntries"]
    if not 0 < len(entries) <= MAX_BULK_ENTRIES:
        raise _bad_request(f"BulkEmailEntries must hold 1 to {MAX_BULK_ENTRIES} entries")
    default_data = _data(tmpl.get("TemplateData"))
    default_headers = _headers(tmpl.get("Headers"))
    default_tags = _tags(req.get("DefaultEmailTags"))
    common = base | {"from_address": req.get("FromEmailAddress", ""),
                     "configuration_set": req.get("ConfigurationSetName")}
    out = []
    for entry in entries:
        replacement = entry.get("ReplacementEmailContent", {}).get("ReplacementTemplate", {})
        data = default_data | _data(replacement.get("ReplacementTemplateData"))
        out.append(Received(**common, **_destination(entry["Destination"]),
                            **_template_fields(tmpl, data), message_id=new_id(),
                            headers=_merge_headers(default_headers,
                                                   _headers(entry.get("ReplacementHeaders"))),
                            tags=default_tags | _tags(entry.get("ReplacementTags"))))
    return out


class FakeSES:
    """An SES v2 endpoint on ``host:port`` (0 = any free port) with injectable faults.

    ``settings`` are the fields of :class:`Settings`; ``clock`` (default
    ``time.monotonic``) drives the throttle window and ``arrival_monotonic``;
    ``seed`` makes ``error_rate``/``drop_rate`` reproducible. Thread-safe.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, seed: int = 0,
                 clock: Callable[[], float] = time.monotonic, **settings: Any) -> None:
        self._settings = Settings(**settings)
        self._host, self._port, self._seed, self._clock = host, port, seed, clock
        self._lock = threading.Lock()
        self._prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self._rng = random.Random(seed)
        self._received: list[Received] = []
        self._counts: collections.Counter[str] = collections.Counter()
        self._window: collections.deque[tuple[float, int]] = collections.deque()
        self._window_sum = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> FakeSES:
        """Bind and serve from a daemon thread; returns self."""
        httpd = _HTTPServer((self._host, self._port))
        httpd.fake = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, args=(0.05,),
                                        name="fake-ses", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut open connections and release the socket."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> FakeSES:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        if self._httpd is None:
            raise RuntimeError("FakeSES is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port`` for ``endpoint_url``."""
        return f"http://{self._host}:{self.port}"

    # -- state -------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        """The current settings (an immutable snapshot)."""
        return self._settings

    def configure(self, **changes: Any) -> Settings:
        """Change some settings atomically; unknown names raise TypeError."""
        with self._lock:
            self._settings = dataclasses.replace(self._settings, **changes)
            return self._settings

    @property
    def received(self) -> list[Received]:
        """A snapshot of every accepted message, in arrival order."""
        with self._lock:
            return list(self._received)

    @property
    def calls(self) -> int:
        """How many send calls (SendEmail + SendBulkEmail) arrived, faults included."""
        return self._counts["calls"]

    def stats(self) -> Json:
        """Counters (calls, received, throttled, errors, dropped, ...), CPU seconds, settings."""
        with self._lock:
            out: Json = {k: self._counts[k] for k in (
                "calls", "account_calls", "throttled", "errors", "dropped", "rejected",
                "refused", "bad_requests", "recipients")}
            out["received"] = len(self._received)
        out["cpu_seconds"] = time.process_time()
        out["settings"] = self._settings.to_json()
        return out

    def reset(self) -> None:
        """Forget messages, counters and the throttle window; re-seed; keep settings."""
        with self._lock:
            self._received.clear()
            self._counts.clear()
            self._window.clear()
            self._window_sum = 0
            self._rng.seed(self._seed)

    # -- request handling (no I/O) -----------------------------------------
    def dispatch(self, method: str, path: str, body: bytes) -> _Reply:
        """Answer one HTTP request; the I/O layer sleeps ``delay`` and drops if told."""
        path, _, query = path.partition("?")
        try:
            if method == "POST" and path == "/v2/email/outbound-emails":
                return self._send("SendEmail", body)
            if method == "POST" and path == "/v2/email/outbound-bulk-emails":
                return self._send("SendBulkEmail", body)
            if method == "GET" and path == "/v2/email/account":
                return _Reply(body=self._account())
            return self._control(method, path, query, body)
        except ApiError as err:
            return _error_reply(err)

    def _account(self) -> Json:
        s = self._settings
        with self._lock:
            self._counts["account_calls"] += 1
            sent = self._counts["recipients"]
        return {"SendQuota": {"Max24HourSend": s.max_24h, "MaxSendRate": s.max_send_rate,
                              "SentLast24Hours": float(sent)},
                "SendingEnabled": not (s.paused or s.suspended),
                "EnforcementStatus": s.enforcement_status
                or ("SHUTDOWN" if s.suspended else "HEALTHY"),
                "ProductionAccessEnabled": True, "DedicatedIpAutoWarmupEnabled": False}

    def _control(self, method: str, path: str, query: str, body: bytes) -> _Reply:
        if method == "GET" and path == "/_fake/received":
            try:
                offset = int(parse_qs(query).get("offset", ["0"])[0])
            except ValueError as exc:
                raise _bad_request("offset must be an integer") from exc
            return _Reply(body=[r.to_json() for r in self.received[offset:]])
        if method == "GET" and path == "/_fake/stats":
            return _Reply(body=self.stats())
        if method == "POST" and path == "/_fake/reset":
            self.reset()
            return _Reply()
        if method == "POST" and path == "/_fake/configure":
            try:
                return _Reply(body=self.configure(**json.loads(body or b"{}")).to_json())
            except (TypeError, ValueError) as exc:
                raise _bad_request(str(exc)) from exc
        raise ApiError(404, "NotFoundException", f"no route for {method} {path}")

    def _new_id(self) -> str:
        return f"{self._prefix}-{next(self._ids):010d}-000000"

    def _send(self, api: str, body: bytes) -> _Reply:
        s = self._settings
        base = {"api": api, "arrival_monotonic": self._clock(), "arrival_wall": time.time()}
        try:
            req = json.loads(body)
            if api == "SendEmail":
                msgs = [parse_send_email(req, base | {"message_id": self._new_id()})]
            else:
                msgs = parse_bulk_email(req, base, self._new_id)
        except ApiError as err:
            self._count("calls", "bad_requests")
            return _error_reply(err, s.latency)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._count("calls", "bad_requests")
            return _error_reply(_bad_request(f"malformed request: {exc!r}"), s.latency)
        rejections = [_rejection(m, s.reject_addresses) for m in msgs]
        with self._lock:
            return self._decide(s, api, msgs, rejections)

    def _count(self, *names: str) -> None:
        with self._lock:
            self._counts.update(names)

    def _decide(self, s: Settings, api: str, msgs: list[Received],
                rejections: list[str | None]) -> _Reply:
        """Pick the outcome of one parsed send call; caller holds the lock."""
        self._counts["calls"] += 1
        n = self._counts["calls"]
        accepted = [m for m, why in zip(msgs, rejections, strict=True) if why is None]
        if (s.drop_every and n % s.drop_every == 0) or (s.drop_rate and
                                                       self._rng.random() < s.drop_rate):
            self._counts["dropped"] += 1
            if s.drop_accepted:
                self._accept(accepted)
            return _Reply(delay=s.latency, drop=True)
        err = self._fault(s, n, accepted)
        if err is None and api == "SendEmail" and rejections[0] is not None:
            self._counts["rejected"] += 1
            err = ApiError(400, "MessageRejected", rejections[0])
        if err is not None:
            return _error_reply(err, s.latency)
        self._accept(accepted)
        self._counts["rejected"] += len(msgs) - len(accepted)
        if api == "SendEmail":
            return _Reply(body={"MessageId": msgs[0].message_id}, delay=s.latency)
        results = [{"Status": "SUCCESS", "MessageId": m.message_id} if why is None
                   else {"Status": "MESSAGE_REJECTED", "Error": why}
                   for m, why in zip(msgs, rejections, strict=True)]
        return _Reply(body={"BulkEmailEntryResults": results}, delay=s.latency)

    def _fault(self, s: Settings, n: int, accepted: list[Received]) -> ApiError | None:
        if s.suspended:
            self._counts["refused"] += 1
            return ApiError(400, "AccountSuspendedException", "Account is suspended.")
        if s.paused:
            self._counts["refused"] += 1
            return ApiError(400, "SendingPausedException", "Sending is paused for this account.")
        if (s.error_every and n % s.error_every == 0) or (s.error_rate and
                                                         self._rng.random() < s.error_rate):
            self._counts["errors"] += 1
            return ApiError(500, "InternalFailure", "An internal error occurred (injected).")
        if s.throttle_rate is not None and not self._window_admits(
                s.throttle_rate, sum(len(m.recipients) for m in accepted)):
            self._counts["throttled"] += 1
            return ApiError(429, "TooManyRequestsException", "Maximum sending rate exceeded.")
        return None

    def _window_admits(self, rate: float, k: int) -> bool:
        """Admit ``k`` recipients unless the last second would then exceed ``rate``."""
        now = self._clock()
        while self._window and self._window[0][0] <= now - 1.0:
            self._window_sum -= self._window.popleft()[1]
        if self._window_sum + k > rate:
            return False
        self._window.append((now, k))
        self._window_sum += k
        return True

    def _accept(self, msgs: list[Received]) -> None:
        self._received.extend(msgs)
        self._counts["recipients"] += sum(len(m.recipients) for m in msgs)


class _HTTPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    fake: FakeSES

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()

    def close_connections(self) -> None:
        """Shut down every open client connection so keep-alive threads end."""
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # peers hanging up are normal
            super().handle_error(request, client_address)


class _Handler(socketserver.StreamRequestHandler):
    """A minimal HTTP/1.1 keep-alive loop: request line, headers, Content-Length body."""

    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.sockets_lock:
            self.server.open_sockets.add(self.connection)

    def finish(self) -> None:
        with self.server.sockets_lock:
            self.server.open_sockets.discard(self.connection)
        super().finish()

    def handle(self) -> None:
        while self._one_request():
            pass

    def _one_request(self) -> bool:
        """Serve one request; False when the connection should close."""
        parts = self.rfile.readline(65537).split()
        if len(parts) != 3:
            return False  # EOF or garbage: hang up
        method, target, version = (p.decode("latin-1") for p in parts)
        keep_alive, length, chunked = version == "HTTP/1.1", 0, False
        while (line := self.rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                keep_alive = value == b"keep-alive" or (keep_alive and value != b"close")
            elif name == b"transfer-encoding":
                chunked = True
        if chunked:
            reply = _error_reply(_bad_request("chunked bodies are not supported"))
            keep_alive = False
        else:
            reply = self.server.fake.dispatch(method, target, self.rfile.read(length))
        if reply.delay:
            time.sleep(reply.delay)
        if reply.drop:
            return False
        self._write(reply, keep_alive)
        return keep_alive

    def _write(self, reply: _Reply, keep_alive: bool) -> None:
        payload = json.dumps(reply.body).encode()
        head = (f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Error')}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n"
                f"x-amzn-RequestId: {uuid.uuid4()}\r\n")
        if reply.error_code:
            head += f"x-amzn-ErrorType: {reply.error_code}\r\n"
        if not keep_alive:
            head += "Connection: close\r\n"
        self.connection.sendall(head.encode("latin-1") + b"\r\n" + payload)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake until interrupted; prints ``listening on URL`` when ready."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--throttle-rate", type=float, default=None)
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--error-every", type=int, default=0)
    p.add_argument("--drop-rate", type=float, default=0.0)
    p.add_argument("--drop-every", type=int, default=0)
    p.add_argument("--drop-accepted", action="store_true")
    p.add_argument("--reject", action="append", default=[], metavar="ADDRESS",
                   help="answer MessageRejected for this recipient (repeatable)")
    p.add_argument("--paused", action="store_true")
    p.add_argument("--suspended", action="store_true")
    p.add_argument("--max-send-rate", type=float, default=1000.0)
    p.add_argument("--max-24h", type=float, default=1e6)
    a = p.parse_args(argv)
    fake = FakeSES(
        host=a.host, port=a.port, seed=a.seed, latency=a.latency_ms / 1000.0,
        throttle_rate=a.throttle_rate, error_rate=a.error_rate, error_every=a.error_every,
        drop_rate=a.drop_rate, drop_every=a.drop_every, drop_accepted=a.drop_accepted,
        reject_addresses=frozenset(a.reject), paused=a.paused, suspended=a.suspended,
        max_send_rate=a.max_send_rate, max_24h=a.max_24h)
    signal.signal(signal.SIGTERM, _interrupt)
    # Arrival times are measurements: a handler thread must not wait the
    # default 5 ms for the GIL before it stamps a request.
    sys.setswitchinterval(0.0005)
    with fake:
        print(f"listening on {fake.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
