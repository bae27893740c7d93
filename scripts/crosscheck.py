"""Cross-check the benchmark's ceiling and ingest figures with parts that are not ours.

The SES endpoint is aws-ses-v2-local (an npm package: Express, its own
SendEmail and SendBulkEmail, handlebars rendering), installed with npm into
``data/crosscheck/`` on first use and answering every send call 50 ms late
(``scripts/ses_latency.js``). The upload of the ingest check is curl's.

    python scripts/crosscheck.py            # 20,000 recipients, 100,000 ingested
    python scripts/crosscheck.py --json     # and one JSON object on the last line

1. ceiling: ``python -m mailpipe`` with EMAIL_RATE far above reach sends one
   POST of 20,000 recipients; timed from the POST until the service counts
   every one sent. The emulator's store must then hold each recipient exactly
   once, with its own ``X-Request-ID`` and the rendered body.
2. baseline: a plain boto3 ``send_email`` loop, 16 threads, same endpoint.
3. ingest: curl POSTs 100,000 recipients (scheduled an hour ahead) to a fresh
   service, three times; curl's ``time_total`` of each.

Needs node and npm (and curl) on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (
    API_KEY,
    CONTENT,
    boto3_baseline,
    cpu_seconds,
    emails,
    service,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "aws-ses-v2-local@2.10.2"
INSTALL_DIR = ROOT / "data" / "crosscheck"
ACCOUNT = {  # what the emulator answers to GetAccount (the service reads the quota)
    "DedicatedIpAutoWarmupEnabled": False,
    "Details": {"AdditionalContactEmailAddresses": [], "ContactLanguage": "EN",
                "MailType": "MARKETING", "ReviewDetails": {"CaseId": "", "Status": "GRANTED"},
                "UseCaseDescription": "", "WebsiteURL": "https://example.com"},
    "EnforcementStatus": "HEALTHY", "ProductionAccessEnabled": True, "SendingEnabled": True,
    "SendQuota": {"Max24HourSend": 1e9, "MaxSendRate": 1e6, "SentLast24Hours": 0},
    "SuppressionAttributes": {"SuppressedReasons": []},
}


class Emulator:
    """aws-ses-v2-local as a subprocess, every send call answered ``latency_ms`` late."""

    def __init__(self, latency_ms: int) -> None:
        cli = INSTALL_DIR / "node_modules" / "aws-ses-v2-local" / "dist" / "cli.js"
        if not cli.exists():
            print(f"installing {PACKAGE} into {INSTALL_DIR} ...", file=sys.stderr)
            INSTALL_DIR.mkdir(parents=True, exist_ok=True)
            subprocess.run(["npm", "install", "--prefix", str(INSTALL_DIR), "--no-audit",
                            "--no-fund", "--loglevel=error", PACKAGE], check=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "SES_LATENCY_MS": str(latency_ms),
               "AWS_SES_ACCOUNT": json.dumps(ACCOUNT)}
        self.proc = subprocess.Popen(
            ["node", "-r", str(ROOT / "scripts" / "ses_latency.js"), str(cli),
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL,
        )
        self.http = httpx.Client(base_url=self.url, timeout=120)
        try:
            wait_until(self._up, timeout=30)
        except BaseException:
            self.close()
            raise

    def _up(self) -> bool:
        try:
            return self.http.get("/health-check").status_code == 200
        except httpx.TransportError:
            return False

    def emails(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.http.get("/store").json()["emails"]
        return result

    def clear(self) -> None:
        self.http.post("/clear-store").raise_for_status()

    def cpu_s(self) -> float:
        return cpu_seconds(self.proc.pid)

    def close(self) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(30)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, for a child to bind."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ceiling(ses: Emulator, n: int) -> dict[str, Any]:
    """Send ``n`` recipients as fast as the service can; check what the emulator holds."""
    ses.clear()
    env = {"AWS_ENDPOINT_URL_SESV2": ses.url, "EMAIL_RATE": 100_000, "MAX_CONCURRENT": 64}
    with service(env) as svc:
        cpu0, ses_cpu0 = svc.cpu_s(), ses.cpu_s()
        started = time.perf_counter()
        svc.post("crosscheck", emails("cross", n))

        def settled() -> bool:  # from /metrics: cheap, where the topic's counts are not
            text = svc.http.get("/metrics").text
            sent, failed = (metric(text, f"mailpipe_{name}_total") for name in ("sent", "failed"))
            if failed:
                raise SystemExit(f"the service failed {failed:g} sends")
            return sent >= n

        wait_until(settled, timeout=300, interval=0.05)
        seconds = time.perf_counter() - started
        svc_cpu, ses_cpu = svc.cpu_s() - cpu0, ses.cpu_s() - ses_cpu0
        wait_until(lambda: svc.stats("crosscheck")["sent"] >= n, timeout=30)
        stats = svc.stats("crosscheck")
    held = ses.emails()
    recipients = [m["destination"]["to"][0] for m in held]
    request_ids = [next((h["value"] for h in m.get("headers") or []
                         if h["name"].lower() == "x-request-id"), None) for m in held]
    return {
        "crosscheck_sends_per_s": n / seconds,
        "crosscheck_seconds": seconds,
        "crosscheck_failed": stats["failed"],
        "crosscheck_service_cpu_s": svc_cpu,
        "crosscheck_endpoint_cpu_s": ses_cpu,
        "endpoint_emails": len(held),
        "endpoint_distinct_recipients": len(set(recipients)),
        "endpoint_with_request_id": sum(rid is not None for rid in request_ids),
        "endpoint_distinct_request_ids": len({rid for rid in request_ids if rid}),
        "endpoint_body_rendered": sum("<h1>Weekly news</h1>" in (m["body"].get("html") or "")
                                      for m in held),
    }


def metric(text: str, name: str) -> float:
    """The value of the unlabelled sample ``name`` in Prometheus text, 0 when absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def ingest(runs: int, n: int) -> dict[str, Any]:
    """curl's time for one POST of ``n`` recipients, median of ``runs`` fresh topics."""
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    rates = []
    with service({"EMAIL_TRANSPORT": "outbox"}) as svc, tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            body = Path(tmp) / f"body{run}.json"
            body.write_text(json.dumps({"messages": [{
                "topicId": f"ingest{run}", "emails": emails(f"in{run}-", n),
                "subject": "Crosscheck", "content": CONTENT, "scheduledAt": later}]}))
            out = subprocess.run(
                ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                 "-H", f"x-api-key: {API_KEY}", "-H", "content-type: application/json",
                 "--data-binary", f"@{body}", f"{svc.url}/v1/messages"],
                check=True, capture_output=True, text=True,
            ).stdout.split()
            if out[0] != "200" or svc.stats(f"ingest{run}")["total"] != n:
                raise SystemExit(f"ingest run {run}: HTTP {out[0]}, {svc.stats(f'ingest{run}')}")
            rates.append(n / float(out[1]))
    return {"crosscheck_ingest_recipients_per_s": statistics.median(rates),
            "crosscheck_ingest_runs": [round(r) for r in rates]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--baseline-seconds", type=float, default=10)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    for tool in ("node", "npm", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not on PATH; the cross-check needs node, npm and curl")
    started = time.monotonic()
    results: dict[str, Any] = {"endpoint": PACKAGE, "recipients": args.recipients}
    ses = Emulator(latency_ms=50)
    try:
        results.update(ceiling(ses, args.recipients))
        ses.clear()
        cpu0 = ses.cpu_s()
        results["baseline_boto3_sends_per_s"] = boto3_baseline(ses.url, args.baseline_seconds)
        results["baseline_endpoint_cpu_s"] = ses.cpu_s() - cpu0
    finally:
        ses.close()
    results["ceiling_vs_baseline"] = (
        results["crosscheck_sends_per_s"] / results["baseline_boto3_sends_per_s"]
    )
    results.update(ingest(runs=3, n=100_000))
    results["seconds"] = time.monotonic() - started
    print("| metric | value |\n| --- | --- |")
    for key, value in results.items():
        print(f"| {key} | {f'{value:,.2f}' if isinstance(value, float) else value} |")
    if args.json:
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v
                          for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
