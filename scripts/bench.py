"""Benchmark mailpipe end to end on this machine.

Starts the project's SES-compatible endpoint (``scripts/fake_ses.py``) and the
real service (``python -m mailpipe``) as subprocesses, measures, and prints a
markdown table; with ``--json`` the last line is one JSON object.

    python scripts/bench.py --quick --json

Phases (each against a fresh service and database):
  ingest   one POST of 100,000 recipients (scheduled ahead, so nothing sends)
  rate     EMAIL_RATE=100 for 30 s, arrivals counted at the endpoint
  latency  POST of one recipient to its arrival at the endpoint, idle service
  ceiling  EMAIL_RATE far above reach, 50 ms endpoint latency, plus a plain
           boto3 send_email loop with 16 threads against the same endpoint
  http     signed SNS notifications, open pixels and bare /health per second
  backlog  service RSS with 1,000,000 rows pending
  deep     one service: the ceiling of 20,000 due now; then --backlog N rows
           (3,000,000; 300,000 with --quick) scheduled for tomorrow; then the
           ceiling again, the one-recipient latency (median of 5), the big
           topic's GET /v1/topics/{id} (median of 5) and RSS

With ``--store postgres`` (a PostgreSQL server at ``--pg``, default the local
socket; each phase on a database of its own, dropped afterwards):
  pg ceiling  the ceiling of one instance on PostgreSQL against SQLite in the
              same run, and of two instances sharing one database
  pg rate     the busiest 1-second window of 3 instances at EMAIL_RATE=100 (30 s)
  pg ingest   one POST of 100,000 recipients on PostgreSQL
  deep        the deep phase on PostgreSQL (``pg_`` figures); ``--only deep``
              runs it alone, ``--only pg`` the others
"""

from __future__ import annotations

import argparse
import bisect
import concurrent.futures
import json
import os
import re
import secrets
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.config import Config as BotoConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # snskit: signs SNS messages with a test key

API_KEY = "bench-" + secrets.token_hex(8)
TRACKING_SECRET = secrets.token_hex(32)
TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:mailpipe-bench"
READY = re.compile(r"mailpipe ready on (http://\S+):")


# -- processes ---------------------------------------------------------------


class Fake:
    """The fake SES endpoint as a subprocess."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "fake_ses.py"), "--port", "0", *args],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.url = line.split()[-1]
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def configure(self, **settings: Any) -> None:
        self.http.post("/_fake/configure", json=settings).raise_for_status()

    def reset(self) -> None:
        self.http.post("/_fake/reset").raise_for_status()

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.http.get("/_fake/stats").json()
        return result

    def received(self, offset: int = 0) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.http.get(
            "/_fake/received", params={"offset": offset}
        ).json()
        return result

    def close(self) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Service:
    """``python -m mailpipe`` in its own data directory."""

    def __init__(self, workdir: Path, env: dict[str, Any]) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EMAIL_"))}
        full.update({
            "SERVER_PORT": "0", "SERVER_BIND": "127.0.0.1", "API_KEY": API_KEY,
            "DB_PATH": str(workdir / "app.db"), "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
            "EMAIL_SENDER": "bench@example.com", "EMAIL_TRANSPORT": "ses",
            "TRACKING_SECRET": TRACKING_SECRET, "LOG_LEVEL": "INFO",
            "MAX_RECIPIENTS_PER_REQUEST": "100000",
        })
        full.update({k: str(v) for k, v in env.items()})
        self.db = workdir / "app.db"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailpipe"], cwd=ROOT, env=full,
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )
        self.url = ""
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                match = READY.search(line)
                if match:
                    self.url = match.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60) or not self.url:
            raise RuntimeError("service did not start")
        self.http = httpx.Client(base_url=self.url, headers={"x-api-key": API_KEY}, timeout=120)

    def post(self, topic: str, emails: list[str], **extra: Any) -> httpx.Response:
        body = {"messages": [{"topicId": topic, "emails": emails, "subject": "Bench",
                              "content": CONTENT, **extra}]}
        response = self.http.post("/v1/messages", json=body)
        response.raise_for_status()
        return response

    def stats(self, topic: str) -> dict[str, int]:
        result: dict[str, int] = self.http.get(f"/v1/topics/{topic}").json()["request"]
        return result

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_s(self) -> float:
        return cpu_seconds(self.proc.pid)

    def close(self) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(60)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds the process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CONTENT = (
    "<html><body><h1>Weekly news</h1><p>Hello, this is the weekly newsletter with "
    'a <a href="https://example.com/article">link</a> and some text.</p></body></html>'
)


@contextmanager
def service(env: dict[str, Any]) -> Iterator[Service]:
    with tempfile.TemporaryDirectory(prefix="mailpipe-bench-") as tmp:
        svc = Service(Path(tmp), env)
        try:
            yield svc
        finally:
            svc.close()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(interval)


def emails(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}@example.com" for i in range(n)]


# -- phases -------------------------------------------------------------------


def timed_post(svc: Service, topic: str, addresses: list[str], ahead_s: float) -> float:
    """POST one message to ``addresses``, due in ``ahead_s`` seconds (so nothing
    sends); the seconds until it was answered. The body is encoded before the
    clock starts: the client's JSON work is not the service's."""
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + ahead_s))
    body = json.dumps({"messages": [{
        "topicId": topic, "emails": addresses, "subject": "Bench", "content": CONTENT,
        "scheduledAt": later}]}).encode()
    started = time.perf_counter()
    response = svc.http.post("/v1/messages", content=body,
                             headers={"content-type": "application/json"})
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    assert response.json()["count"] == len(addresses)
    return elapsed


def bench_ingest(fake: Fake, runs: int, env: dict[str, Any] | None = None) -> float:
    figures = []
    with service({"AWS_ENDPOINT_URL_SESV2": fake.url, "EMAIL_RATE": 100, **(env or {})}) as svc:
        for run in range(runs):
            elapsed = timed_post(svc, f"ingest{run}", emails(f"ingest{run}-", 100_000), 3600)
            figures.append(100_000 / elapsed)
    return statistics.median(figures)


def max_in_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    return max(bisect.bisect_left(times, t + window) - i for i, t in enumerate(times))


def bench_rate(fake: Fake, seconds: float) -> dict[str, float]:
    rate = 100
    n = int(rate * seconds)
    fake.reset()
    with service({"AWS_ENDPOINT_URL_SESV2": fake.url, "EMAIL_RATE": rate}) as svc:
        svc.post("rate", emails("rate", n))
        wait_until(lambda: fake.stats()["recipients"] >= n, timeout=seconds * 2 + 30)
        arrivals = sorted(m["arrival_monotonic"] for m in fake.received())
    span = arrivals[-1] - arrivals[0]
    # Sends that started in [first, last): a bulk call's entries share one
    # arrival time, so the last call's entries lie at the end of the span.
    before_last = bisect.bisect_left(arrivals, arrivals[-1])
    return {
        "rate_target": rate,
        "rate_mean": before_last / span,
        "rate_max_1s_window": max_in_window(arrivals),
    }


def latency_samples(fake: Fake, svc: Service, samples: int) -> list[float]:
    """Milliseconds from the POST of one due-now recipient to its arrival at the
    endpoint (no endpoint latency), ``samples`` times on the running ``svc``; sorted."""
    fake.reset()
    fake.configure(latency=0.0)
    latencies = []
    svc.post("warmup", ["warmup@example.com"])
    wait_until(lambda: fake.stats()["recipients"] >= 1, timeout=10)
    for i in range(samples):
        before = fake.stats()["recipients"]
        started = time.time()
        svc.post(f"lat{i}", [f"lat{i}@example.com"])
        def arrived(b: int = before) -> bool:
            return bool(fake.stats()["recipients"] > b)

        wait_until(arrived, 10, 0.002)
        arrival = fake.received(offset=before)[0]["arrival_wall"]
        latencies.append((arrival - started) * 1000)
        time.sleep(0.05)  # an idle service between samples
    return sorted(latencies)


def bench_latency(fake: Fake, samples: int) -> dict[str, float]:
    with service({"AWS_ENDPOINT_URL_SESV2": fake.url, "EMAIL_RATE": 100}) as svc:
        latencies = latency_samples(fake, svc, samples)
    return {
        "latency_p50_ms": statistics.median(latencies),
        "latency_p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


CEILING_ENV = {"EMAIL_RATE": 100_000, "MAX_CONCURRENT": 64}
"""The ceiling's settings: the rate far out of reach."""


def ceiling_on(fake: Fake, running: list[Service], n: int, topic: str) -> dict[str, float]:
    """Sends per second of the ``running`` services (started with :data:`CEILING_ENV`)
    sending ``n`` due-now recipients of ``topic`` posted to the first, with 50 ms
    endpoint latency; also their CPU, the endpoint's and the largest RSS."""
    fake.reset()
    fake.configure(latency=0.05)
    fake_cpu0 = fake.stats()["cpu_seconds"]
    cpu0 = sum(svc.cpu_s() for svc in running)
    running[0].post(topic, emails(topic, n))
    wait_until(lambda: fake.stats()["recipients"] >= n, timeout=300)
    cpu = sum(svc.cpu_s() for svc in running) - cpu0
    fake_cpu = fake.stats()["cpu_seconds"] - fake_cpu0
    arrivals = sorted(m["arrival_monotonic"] for m in fake.received())
    wait_until(lambda: running[0].stats(topic)["sent"] >= n, timeout=60)
    span = arrivals[-1] - arrivals[0]
    # Sends that started in [first, last): a bulk call's entries share one arrival time.
    return {"sends_per_s": bisect.bisect_left(arrivals, arrivals[-1]) / span,
            "service_cpu_s": cpu, "endpoint_cpu_s": fake_cpu, "span_s": span,
            "rss_mb": max(svc.rss_mb() for svc in running)}


def bench_ceiling(fake: Fake, n: int, baseline_s: float) -> dict[str, float]:
    with service({"AWS_ENDPOINT_URL_SESV2": fake.url, **CEILING_ENV}) as svc:
        measured = ceiling_on(fake, [svc], n, "ceiling")
    fake.reset()
    baseline = boto3_baseline(fake.url, baseline_s)
    return {
        "ceiling_sends_per_s": measured["sends_per_s"],
        "ceiling_service_cpu_s": measured["service_cpu_s"],
        "ceiling_endpoint_cpu_s": measured["endpoint_cpu_s"],
        "ceiling_span_s": measured["span_s"],
        "baseline_boto3_sends_per_s": baseline,
    }


def boto3_baseline(url: str, seconds: float, threads: int = 16) -> float:
    client = boto3.session.Session().client(
        "sesv2", region_name="us-east-1", endpoint_url=url, aws_access_key_id="x",
        aws_secret_access_key="y",
        config=BotoConfig(max_pool_connections=threads, retries={"total_max_attempts": 1}),
    )
    deadline = time.monotonic() + seconds
    counts = [0] * threads

    def loop(i: int) -> None:
        while time.monotonic() < deadline:
            client.send_email(
                FromEmailAddress="bench@example.com",
                Destination={"ToAddresses": [f"base{i}@example.com"]},
                Content={"Simple": {"Subject": {"Data": "Bench"},
                                    "Body": {"Html": {"Data": CONTENT}}}},
            )
            counts[i] += 1

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(loop, range(threads)))
    return sum(counts) / (time.monotonic() - started)


def http_load(
    url: str, requests: list[bytes], seconds: float, threads: int = 8
) -> tuple[int, float]:
    """Replay raw HTTP/1.1 requests over keep-alive connections for up to ``seconds``
    (or until none are left); (responses, seconds it took)."""
    host, port = url.removeprefix("http://").split(":")
    deadline = time.monotonic() + seconds
    done = [0] * threads
    failures = [0] * threads
    lock = threading.Lock()
    queue = iter(requests)

    def next_request() -> bytes | None:
        with lock:
            return next(queue, None)

    def worker(i: int) -> None:
        sock = socket.create_connection((host, int(port)))
        reader = sock.makefile("rb")
        try:
            while time.monotonic() < deadline:
                raw = next_request()
                if raw is None:
                    return
                sock.sendall(raw)
                status = int(reader.readline().split()[1])
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                reader.read(length)
                done[i] += 1
                if status >= 400:
                    failures[i] += 1
        finally:
            sock.close()

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    elapsed = time.monotonic() - started
    if sum(failures):
        raise RuntimeError(f"{sum(failures)} of {sum(done)} requests failed")
    return sum(done), elapsed


def raw_request(method: str, path: str, host: str, body: bytes = b"", **headers: str) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    head += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def bench_http(fake: Fake, seconds: float, rounds: int) -> dict[str, float | None]:
    fake.reset()
    fake.configure(latency=0.0)
    with tempfile.TemporaryDirectory() as certs:
        env = {"AWS_ENDPOINT_URL_SESV2": fake.url, "EMAIL_RATE": 1000,
               "SNS_TOPIC_ARNS": TOPIC_ARN, "SNS_CERT_CACHE_DIR": certs}
        with service(env) as svc:
            svc.post("http", emails("http", 200))
            wait_until(lambda: svc.stats("http")["sent"] >= 200, timeout=30)
            host = svc.url.removeprefix("http://")
            n = int(seconds * 3000)
            # Every request is built before the first window (each SNS message
            # is signed anew, so none is a duplicate), then the kinds take turns
            # in short windows for `rounds` rounds and each reports its median:
            # this shared 2-core machine's speed drifts by half within minutes,
            # and kinds measured side by side see the same drift.
            loads: dict[str, list[bytes] | None] = {
                "health": [raw_request("GET", "/health", host)] * n * rounds,
                "pixel": pixel_requests(svc, host, n * rounds),
                "sns": sns_requests(svc, host, Path(certs), int(seconds * 1000) * rounds),
            }
            rates: dict[str, list[float]] = {kind: [] for kind in loads}
            cpu: dict[str, list[float]] = {kind: [] for kind in loads}
            for r in range(rounds):
                for kind, requests in loads.items():
                    if requests is None:
                        continue
                    share = len(requests) // rounds
                    before = svc.cpu_s()
                    done, took = http_load(svc.url, requests[r * share:(r + 1) * share], seconds)
                    rates[kind].append(done / took)
                    cpu[kind].append((svc.cpu_s() - before) / done * 1000)
    result: dict[str, float | None] = {
        "health_per_s": statistics.median(rates["health"]),
        "pixel_per_s": statistics.median(rates["pixel"]) if rates["pixel"] else None,
        "sns_events_per_s": statistics.median(rates["sns"]) if rates["sns"] else None,
    }
    # Service CPU per request (median of the windows): what each kind costs,
    # much less at the mercy of the neighbours than requests per second.
    for kind, key in (("health", "health"), ("sns", "sns_event")):
        if cpu[kind]:
            result[f"{key}_cpu_ms"] = statistics.median(cpu[kind])
    return result


def request_ids(svc: Service) -> list[tuple[int, str, str]]:
    db = sqlite3.connect(svc.db)
    try:
        return db.execute(
            'SELECT id, message_id, "to" FROM email_requests WHERE status = 2'
        ).fetchall()
    finally:
        db.close()


def pixel_requests(svc: Service, host: str, n: int) -> list[bytes] | None:
    try:
        from mailpipe.content.tokens import Tokens
    except ImportError:
        return None
    tokens = Tokens(TRACKING_SECRET.encode())
    ids = request_ids(svc)
    return [raw_request("GET", tokens.open_url("", ids[i % len(ids)][0]), host,
                        User_Agent="bench") for i in range(n)]


def sns_requests(svc: Service, host: str, certs: Path, n: int) -> list[bytes] | None:
    try:
        from snskit import SnsSigner, encode  # type: ignore[import-not-found]
    except ImportError:
        return None
    signer = SnsSigner(certs)
    rows = request_ids(svc)
    bodies = []
    for i in range(n):
        _rid, message_id, to = rows[i % len(rows)]
        event = {"eventType": "Delivery", "mail": {"messageId": message_id, "destination": [to],
                 "timestamp": "2026-01-01T00:00:00.000Z", "source": "bench@example.com"},
                 "delivery": {"recipients": [to], "timestamp": "2026-01-01T00:00:01.000Z",
                              "smtpResponse": "250 ok"}}
        msg = signer.notification(TOPIC_ARN, event, version=2)
        bodies.append(raw_request("POST", "/v1/events/results", host, encode(msg),
                                  Content_Type="text/plain; charset=UTF-8"))
    return bodies


def bench_backlog(fake: Fake, rows: int) -> float:
    fake.reset()
    with service({"AWS_ENDPOINT_URL_SESV2": fake.url, "EMAIL_RATE": 100}) as svc:
        for start in range(0, rows, 100_000):
            svc.post("backlog", emails(f"b{start}-", min(100_000, rows - start)))
        time.sleep(3)  # let the scheduler and senders settle into the backlog
        pending = svc.stats("backlog")
        assert pending["created"] + pending["processing"] >= rows * 0.95, pending
        return svc.rss_mb()


def load_backlog(svc: Service, rows: int, topic: str = "backlog") -> float:
    """Store ``rows`` recipients of ``topic`` due tomorrow by POSTs of 100,000, the
    ingest phase's fastest path; the seconds the service took."""
    return sum(timed_post(svc, topic, emails(f"b{start}-", min(100_000, rows - start)), 86_400)
               for start in range(0, rows, 100_000))


def settle(svc: Service, timeout: float = 120.0) -> float:
    """Wait until the service is idle (under 5 % of a core for a second, e.g. once
    SQLite has checkpointed a large insert's write-ahead log); seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = svc.cpu_s()
        time.sleep(1.0)
        if svc.cpu_s() - before < 0.05:
            break
    return time.monotonic() - started


def bench_deep_backlog(fake: Fake, rows: int, n: int, env: dict[str, Any] | None = None,
                       prefix: str = "") -> dict[str, float]:
    """Claims, latency and topic stats must not grow with the rows that wait.

    One service, one database: the ceiling of ``n`` due-now recipients (as in the
    ceiling phase); then ``rows`` recipients scheduled for tomorrow; then the same
    ceiling again, the one-recipient latency (median of 5), ``GET /v1/topics/{id}``
    of the big topic (median of 5) and the RSS. Each ceiling is the median of
    three sends; the second set starts once the service is idle after the load."""
    with service({"AWS_ENDPOINT_URL_SESV2": fake.url, **CEILING_ENV, **(env or {})}) as svc:
        before = [ceiling_on(fake, [svc], n, f"due0-{i}") for i in range(3)]
        took = load_backlog(svc, rows)
        settled = settle(svc)
        after = [ceiling_on(fake, [svc], n, f"due1-{i}") for i in range(3)]
        latencies = latency_samples(fake, svc, samples=5)
        stats_ms = []
        for _ in range(5):
            started = time.perf_counter()
            pending = svc.stats("backlog")
            stats_ms.append((time.perf_counter() - started) * 1000)
        assert pending["created"] == rows, pending
        rss = svc.rss_mb()
    without = statistics.median(m["sends_per_s"] for m in before)
    with_backlog = statistics.median(m["sends_per_s"] for m in after)
    return {
        f"{prefix}backlog_rows": rows,
        f"{prefix}backlog_ingest_s": took,
        f"{prefix}backlog_ingest_recipients_per_s": rows / took,
        f"{prefix}backlog_settle_s": settled,
        f"{prefix}ceiling_without_backlog_sends_per_s": without,
        f"{prefix}ceiling_with_backlog_sends_per_s": with_backlog,
        f"{prefix}backlog_ceiling_ratio": with_backlog / without,
        f"{prefix}backlog_latency_p50_ms": statistics.median(latencies),
        f"{prefix}backlog_topic_stats_ms": statistics.median(stats_ms),
        f"{prefix}backlog_rss_mb": max(rss, *(m["rss_mb"] for m in after)),
    }


# -- several instances on PostgreSQL -----------------------------------------


@contextmanager
def pg_database(server: str) -> Iterator[str]:
    """A fresh database on ``server`` (a postgresql:// URL), dropped afterwards."""
    import psycopg

    name = "mailpipe_bench_" + secrets.token_hex(4)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    head, _, query = server.partition("?")
    url = head.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")
    try:
        yield url
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@contextmanager
def services(n: int, env: dict[str, Any]) -> Iterator[list[Service]]:
    """``n`` services with ``env``, each in a data directory of its own."""
    with tempfile.TemporaryDirectory(prefix="mailpipe-bench-") as tmp:
        started: list[Service] = []
        try:
            for i in range(n):
                workdir = Path(tmp) / str(i)
                workdir.mkdir()
                started.append(Service(workdir, env))
            yield started
        finally:
            for svc in started:
                svc.close()


def ceiling_of(fake: Fake, n: int, env: dict[str, Any], instances: int = 1) -> dict[str, float]:
    """Sends per second of ``instances`` fresh services sharing ``n`` recipients, rate
    unbounded."""
    with services(instances, {"AWS_ENDPOINT_URL_SESV2": fake.url, **CEILING_ENV,
                              **env}) as running:
        return ceiling_on(fake, running, n, "ceiling")


def sent_total(svc: Service) -> float:
    """The service's ``mailpipe_sent_total``."""
    match = re.search(r"^mailpipe_sent_total (\S+)$", svc.http.get("/metrics").text, re.M)
    return float(match.group(1)) if match else 0.0


def bench_postgres(fake: Fake, server: str, quick: bool, backlog: int,
                   phase: Callable[[str], bool]) -> dict[str, float]:
    results: dict[str, float] = {}
    if phase("deep"):
        with pg_database(server) as url:
            results.update(bench_deep_backlog(fake, backlog, 20_000, {"DATABASE_URL": url},
                                              prefix="pg_"))
    if not phase("pg"):
        return results
    n = 20_000 if quick else 50_000
    sqlite = ceiling_of(fake, n, {})
    with pg_database(server) as url:
        one = ceiling_of(fake, n, {"DATABASE_URL": url})
    with pg_database(server) as url:
        two = ceiling_of(fake, n, {"DATABASE_URL": url}, instances=2)
    results.update({
        "sqlite_ceiling_sends_per_s": sqlite["sends_per_s"],
        "pg_ceiling_sends_per_s": one["sends_per_s"],
        "pg_vs_sqlite_ceiling": one["sends_per_s"] / sqlite["sends_per_s"],
        "pg_2_instances_ceiling_sends_per_s": two["sends_per_s"],
        "pg_ceiling_service_cpu_s": one["service_cpu_s"],
        "pg_rss_mb": one["rss_mb"],
    })
    seconds = 30  # 3,000 recipients at 100/s, in --quick too: enough for each of 3 to claim
    fake.reset()
    fake.configure(latency=0.0)
    with pg_database(server) as url:
        env = {"AWS_ENDPOINT_URL_SESV2": fake.url, "EMAIL_RATE": 100, "DATABASE_URL": url}
        with services(3, env) as running:
            running[0].post("rate", emails("rate", 100 * seconds))
            wait_until(lambda: fake.stats()["recipients"] >= 100 * seconds, seconds * 2 + 30)
            arrivals = sorted(m["arrival_monotonic"] for m in fake.received())
            shares = [sent_total(svc) for svc in running]
    results["pg_3_instances_rate_target"] = 100
    results["pg_3_instances_max_1s_window"] = max_in_window(arrivals)
    results["pg_3_instances_min_share"] = min(shares)
    with pg_database(server) as url:
        results["pg_ingest_recipients_per_s"] = bench_ingest(fake, runs=3 if quick else 5,
                                                             env={"DATABASE_URL": url})
    return results


# -- main ---------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description="mailpipe benchmark")
    parser.add_argument("--quick", action="store_true", help="finish within 3 minutes")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--only", help="comma-separated phases: ingest,rate,latency,ceiling,"
                        "http,backlog,deep; with --store postgres: pg,deep (for profiling)")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite",
                        help="postgres: the several-instances phases instead")
    parser.add_argument("--backlog", type=int, default=None, metavar="N",
                        help="rows scheduled for later in the deep phase (default 3,000,000;"
                        " 300,000 with --quick)")
    parser.add_argument("--pg", default="postgresql://postgres@/postgres?host=/var/run/postgresql",
                        help="the PostgreSQL server for --store postgres")
    args = parser.parse_args()
    wanted = set(args.only.split(",")) if args.only else None

    def phase(name: str) -> bool:
        return wanted is None or name in wanted

    quick = args.quick
    backlog = args.backlog if args.backlog is not None else 300_000 if quick else 3_000_000
    started = time.monotonic()
    results: dict[str, Any] = {}
    fake = Fake("--max-send-rate", "1000000000")
    try:
        if args.store == "postgres":
            results.update(bench_postgres(fake, args.pg, quick, backlog, phase))
            wanted = set()  # the PostgreSQL phases only
        if phase('ingest'):
            results["ingest_recipients_per_s"] = bench_ingest(fake, runs=3 if quick else 5)
            progress(results, started)
        if phase('rate'):
            results.update(bench_rate(fake, seconds=30))
            progress(results, started)
        if phase('latency'):
            results.update(bench_latency(fake, samples=40 if quick else 200))
            progress(results, started)
        if phase('ceiling'):
            results.update(bench_ceiling(fake, n=20_000 if quick else 50_000,
                                         baseline_s=5 if quick else 15))
            progress(results, started)
        if phase('http'):
            results.update(bench_http(fake, seconds=1.5 if quick else 3, rounds=7 if quick else 11))
            progress(results, started)
        if phase('backlog'):
            results["rss_mb_backlog"] = bench_backlog(fake, 1_000_000)
            progress(results, started)
        if phase('deep'):
            results.update(bench_deep_backlog(fake, backlog, 20_000))
            progress(results, started)
        results["endpoint_cpu_s_total"] = fake.stats()["cpu_seconds"]
    finally:
        fake.close()
    results["bench_seconds"] = time.monotonic() - started
    print_table(results)
    if args.json:
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v
                          for k, v in results.items()}))
    return 0


TARGETS: dict[str, tuple[str, Callable[[dict[str, Any]], bool]]] = {
    "ingest_recipients_per_s": (">= 100,000", lambda r: r["ingest_recipients_per_s"] >= 100_000),
    "rate_max_1s_window": ("<= rate_target",
                           lambda r: r["rate_max_1s_window"] <= r["rate_target"]),
    "rate_mean": ("within 1 % of rate_target",
                  lambda r: abs(r["rate_mean"] - r["rate_target"]) <= r["rate_target"] / 100),
    "ceiling_sends_per_s": (">= 2,000 and >= 5x baseline",
                            lambda r: r["ceiling_sends_per_s"] >= max(
                                2000, 5 * r["baseline_boto3_sends_per_s"])),
    "latency_p50_ms": ("<= 50", lambda r: r["latency_p50_ms"] <= 50),
    "rss_mb_backlog": ("<= 200", lambda r: r["rss_mb_backlog"] <= 200),
    "pg_vs_sqlite_ceiling": (">= 0.8", lambda r: r["pg_vs_sqlite_ceiling"] >= 0.8),
    **{f"{p}backlog_ceiling_ratio": (">= 0.9", lambda r, p=p: r[f"{p}backlog_ceiling_ratio"] >= 0.9)
       for p in ("", "pg_")},
    **{f"{p}backlog_latency_p50_ms": ("<= 100",
                                      lambda r, p=p: r[f"{p}backlog_latency_p50_ms"] <= 100)
       for p in ("", "pg_")},
    **{f"{p}backlog_topic_stats_ms": ("<= 100",
                                      lambda r, p=p: r[f"{p}backlog_topic_stats_ms"] <= 100)
       for p in ("", "pg_")},
    **{f"{p}backlog_rss_mb": ("<= 200", lambda r, p=p: r[f"{p}backlog_rss_mb"] <= 200)
       for p in ("", "pg_")},
    "pg_3_instances_max_1s_window": ("<= rate_target", lambda r: r[
        "pg_3_instances_max_1s_window"] <= r["pg_3_instances_rate_target"]),
    "pg_3_instances_min_share": ("> 0", lambda r: r["pg_3_instances_min_share"] > 0),
    "pg_ingest_recipients_per_s": (">= 100,000",
                                   lambda r: r["pg_ingest_recipients_per_s"] >= 100_000),
    "sns_events_per_s": (">= 80 % of health_per_s",
                         lambda r: r["sns_events_per_s"] is not None
                         and r["sns_events_per_s"] >= 0.8 * r["health_per_s"]),
}


def progress(results: dict[str, Any], started: float) -> None:
    """What is measured so far, on stderr."""
    print(f"[{time.monotonic() - started:5.1f}s] {json.dumps(results, default=str)}",
          file=sys.stderr, flush=True)


def print_table(results: dict[str, Any]) -> None:
    print("| metric | value | target | met |")
    print("| --- | --- | --- | --- |")
    for key, value in results.items():
        shown = f"{value:,.2f}" if isinstance(value, float) else str(value)
        target, check = TARGETS.get(key, ("", None))
        try:
            met = "" if check is None else ("yes" if check(results) else "**no**")
        except KeyError:
            met = "?"
        print(f"| {key} | {shown} | {target} | {met} |")


if __name__ == "__main__":
    sys.exit(main())
