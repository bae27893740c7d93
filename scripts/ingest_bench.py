"""Ingest benchmark: recipients per second of one large ``POST /v1/messages``.

Starts a real ``python -m mailpipe`` (outbox transport, its own temporary data
directory), then POSTs ``--recipients`` distinct addresses ``--runs`` times,
each send scheduled an hour ahead so that no sending competes with the
measurement. A run is timed from the first byte sent to the 200 received, so
it covers the upload, JSON parsing, validation of every address and the one
committing transaction. Prints each run and the median::

    python scripts/ingest_bench.py                 # 100,000 recipients, 7 runs
    python scripts/ingest_bench.py --recipients 20000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

READY = re.compile(r"mailpipe ready on (http://\S+):")
KEY = "bench-key-0123456789abcdef"
DOMAINS = [f"mail{i}.example.com" for i in range(19)] + ["Example.ORG"]


def start_service(workdir: Path, max_recipients: int) -> tuple[subprocess.Popen[str], str]:
    """A running service in ``workdir`` and its base URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EMAIL_", "SERVER_"))}
    env.update(
        {
            "SERVER_PORT": "0",
            "SERVER_BIND": "127.0.0.1",
            "API_KEY": KEY,
            "DB_PATH": str(workdir / "data" / "app.db"),
            "EMAIL_TRANSPORT": "outbox",
            "EMAIL_SENDER": "bench@example.com",
            "MAX_RECIPIENTS_PER_REQUEST": str(max_recipients),
            "LOG_LEVEL": "INFO",  # the ready line is logged at INFO
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailpipe"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            match = READY.search(line)
            if match and not found:
                found.append(match.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(30) or not found:
        proc.kill()
        raise SystemExit("the service did not start")
    return proc, found[0]


def body(run: int, recipients: int) -> bytes:
    """One message to ``recipients`` distinct addresses, scheduled an hour ahead."""
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    emails = [f"user.{run}.{i}@{DOMAINS[i % len(DOMAINS)]}" for i in range(recipients)]
    message = {
        "topicId": f"bench-{run}",
        "emails": emails,
        "subject": "Benchmark",
        "content": "<p>Hello from the ingest benchmark</p>",
        "scheduledAt": later,
    }
    return json.dumps({"messages": [message]}).encode()


def measure(client: httpx.Client, run: int, recipients: int) -> tuple[float, str]:
    """Seconds one POST took (client side) and the server's ``elapsed``."""
    payload = body(run, recipients)
    started = time.perf_counter()
    response = client.post(
        "/v1/messages", content=payload, headers={"content-type": "application/json"}
    )
    seconds = time.perf_counter() - started
    if response.status_code != 200 or response.json().get("count") != recipients:
        raise SystemExit(f"run {run}: unexpected answer {response.status_code} {response.text}")
    return seconds, str(response.json().get("elapsed"))


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print recipients per second."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mailpipe-bench-") as tmp:
        proc, url = start_service(Path(tmp), max(args.recipients, 100_000))
        try:
            with httpx.Client(base_url=url, headers={"x-api-key": KEY}, timeout=120) as client:
                measure(client, 0, min(1000, args.recipients))  # warm-up
                rates = []
                for run in range(1, args.runs + 1):
                    seconds, elapsed = measure(client, run, args.recipients)
                    rates.append(args.recipients / seconds)
                    print(
                        f"run {run}: {args.recipients} recipients in {seconds * 1e3:.0f} ms"
                        f" (server elapsed {elapsed}): {rates[-1]:,.0f} recipients/s"
                    )
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"median: {statistics.median(rates):,.0f} recipients/s over {args.runs} runs")


if __name__ == "__main__":
    main()
