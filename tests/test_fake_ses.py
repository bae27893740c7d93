"""Tests of scripts/fake_ses.py through a real boto3 sesv2 client."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import httpx
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fake_ses.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fake_ses", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_ses"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


fake_ses = sys.modules.get("fake_ses") or _load()
FakeSES: Any = fake_ses.FakeSES

# "max_attempts" counts *retries* in botocore; total_max_attempts=1 means one try.
NO_RETRY = botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"})
SENDER = "news@example.com"
SESSION = boto3.session.Session()  # clients are made from the main thread only


def make_client(url: str | None) -> Any:
    """A sesv2 client with dummy keys; ``url=None`` leaves the endpoint to the env."""
    return SESSION.client(
        "sesv2", region_name="us-east-1", endpoint_url=url, aws_access_key_id="AKIDTEST",
        aws_secret_access_key="secret", config=NO_RETRY)


@pytest.fixture
def ses() -> Iterator[Any]:
    with FakeSES() as server:
        yield server


@pytest.fixture
def client(ses: Any) -> Iterator[Any]:
    c = make_client(ses.url)
    yield c
    c.close()


def send(client: Any, to: str = "a@example.org", **extra: Any) -> Any:
    return client.send_email(
        FromEmailAddress=SENDER, Destination={"ToAddresses": [to]},
        Content={"Simple": {"Subject": {"Data": "Hi"}, "Body": {"Text": {"Data": "plain"}}}},
        **extra)


def bulk(client: Any, *addresses: str) -> Any:
    return client.send_bulk_email(
        FromEmailAddress=SENDER,
        DefaultContent={"Template": {"TemplateContent": {"Subject": "Hi {{name}}",
                                                         "Text": "t", "Html": "h"},
                                     "TemplateData": "{}"}},
        BulkEmailEntries=[{"Destination": {"ToAddresses": [a]}} for a in addresses])


def error_of(exc: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> tuple[str, int, str]:
    r = exc.value.response
    return r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Message"]


def test_send_email_records_simple_message(ses: Any, client: Any) -> None:
    before = time.time()
    out = client.send_email(
        FromEmailAddress=SENDER, ConfigurationSetName="cs1",
        Destination={"ToAddresses": ["a@example.org"], "CcAddresses": ["c@example.org"],
                     "BccAddresses": ["b@example.org"]},
        Content={"Simple": {"Subject": {"Data": "Subject"},
                            "Body": {"Text": {"Data": "text"}, "Html": {"Data": "<p>h</p>"}},
                            "Headers": [{"Name": "List-Unsubscribe", "Value": "<https://u>"},
                                        {"Name": "X-Req", "Value": "r1"}]}},
        EmailTags=[{"Name": "req_id", "Value": "abc-1"}, {"Name": "campaign", "Value": "c9"}])
    second = send(client)
    [msg, msg2] = ses.received
    assert out["MessageId"] == msg.message_id != second["MessageId"] == msg2.message_id
    assert (msg.api, msg.from_address, msg.to, msg.cc, msg.bcc) == (
        "SendEmail", SENDER, ["a@example.org"], ["c@example.org"], ["b@example.org"])
    assert (msg.subject, msg.text, msg.html, msg.raw) == ("Subject", "text", "<p>h</p>", None)
    assert msg.headers == [("List-Unsubscribe", "<https://u>"), ("X-Req", "r1")]
    assert msg.tags == {"req_id": "abc-1", "campaign": "c9"}
    assert msg.configuration_set == "cs1"
    assert before <= msg.arrival_wall <= time.time()
    assert msg.arrival_monotonic <= time.monotonic()
    assert ses.calls == 2


def test_send_email_raw_and_inline_template(ses: Any, client: Any) -> None:
    mime = EmailMessage()
    mime["From"], mime["To"], mime["Subject"] = SENDER, "r@example.org", "Raw subject"
    mime["X-Custom"] = "yes"
    mime.set_content("raw text")
    mime.add_alternative("<b>raw</b>", subtype="html")
    client.send_email(Content={"Raw": {"Data": mime.as_bytes()}})
    client.send_email(
        FromEmailAddress=SENDER, Destination={"ToAddresses": ["t@example.org"]},
        Content={"Template": {"TemplateContent": {"Subject": "Hello {{ who }}", "Text": "x"},
                              "TemplateData": json.dumps({"who": "Ann"})}})
    raw, templated = ses.received
    assert raw.raw == mime.as_bytes()
    assert (raw.from_address, raw.to, raw.subject) == (SENDER, ["r@example.org"], "Raw subject")
    assert raw.text.strip() == "raw text"
    assert raw.html.strip() == "<b>raw</b>"
    assert ("X-Custom", "yes") in raw.headers
    assert (templated.subject, templated.to) == ("Hello Ann", ["t@example.org"])


def test_send_bulk_renders_each_entry_and_rejects_per_entry() -> None:
    with FakeSES(reject_addresses={"Bad@Example.org"}) as ses:
        c = make_client(ses.url)
        out = c.send_bulk_email(
            FromEmailAddress=SENDER, ConfigurationSetName="cs",
            DefaultEmailTags=[{"Name": "campaign", "Value": "c1"}, {"Name": "k", "Value": "d"}],
            DefaultContent={"Template": {
                "TemplateContent": {"Subject": "Hi {{name}}", "Text": "{{greet}} {{name}}!",
                                    "Html": "<p>{{name}} & {{missing}}</p>"},
                "TemplateData": json.dumps({"name": "friend", "greet": "Hello"}),
                "Headers": [{"Name": "X-Default", "Value": "d"}, {"Name": "X-Over", "Value": "d"}],
            }},
            BulkEmailEntries=[
                {"Destination": {"ToAddresses": ["a@example.org"]},
                 "ReplacementEmailContent": {"ReplacementTemplate": {
                     "ReplacementTemplateData": json.dumps({"name": "<Ann>"})}},
                 "ReplacementHeaders": [{"Name": "x-over", "Value": "a"}],
                 "ReplacementTags": [{"Name": "req_id", "Value": "r-a"},
                                     {"Name": "k", "Value": "e"}]},
                {"Destination": {"ToAddresses": ["bad@example.org"]}},
                {"Destination": {"ToAddresses": ["b@example.org"]}},
            ])
        c.close()
        results = out["BulkEmailEntryResults"]
        a, b = ses.received
    assert [r["Status"] for r in results] == ["SUCCESS", "MESSAGE_REJECTED", "SUCCESS"]
    assert "not verified" in results[1]["Error"]
    assert "MessageId" not in results[1]
    assert [results[0]["MessageId"], results[2]["MessageId"]] == [a.message_id, b.message_id]
    assert (a.api, a.to, a.subject, a.text, a.html) == (
        "SendBulkEmail", ["a@example.org"], "Hi <Ann>", "Hello <Ann>!", "<p><Ann> & </p>")
    assert a.headers == [("X-Default", "d"), ("x-over", "a")]
    assert a.tags == {"campaign": "c1", "k": "e", "req_id": "r-a"}
    assert (b.subject, b.headers[1], b.tags) == ("Hi friend", ("X-Over", "d"),
                                                {"campaign": "c1", "k": "d"})
    assert a.configuration_set == b.configuration_set == "cs"


def test_bad_requests_answer_bad_request_exception(ses: Any, client: Any) -> None:
    with pytest.raises(client.exceptions.BadRequestException) as exc:
        client.send_bulk_email(FromEmailAddress=SENDER,
                               DefaultContent={"Template": {"TemplateName": "stored"}},
                               BulkEmailEntries=[{"Destination": {"ToAddresses": ["a@x.org"]}}])
    assert error_of(exc)[:2] == ("BadRequestException", 400)
    with pytest.raises(client.exceptions.BadRequestException):
        bulk(client, *[f"u{i}@example.org" for i in range(51)])
    assert ses.received == []
    assert ses.stats()["bad_requests"] == 2


def test_reject_address_answers_message_rejected() -> None:
    with FakeSES(reject_addresses=["no@example.org"]) as ses:
        c = make_client(ses.url)
        with pytest.raises(c.exceptions.MessageRejected) as exc:
            send(c, to="NO@example.org")
        send(c, to="yes@example.org")
        c.close()
        assert [m.to for m in ses.received] == [["yes@example.org"]]
    code, status, message = error_of(exc)
    assert (code, status) == ("MessageRejected", 400)
    assert message.startswith("Email address is not verified")


def test_paused_and_suspended_account(ses: Any, client: Any) -> None:
    ses.configure(paused=True)
    with pytest.raises(client.exceptions.SendingPausedException) as exc:
        send(client)
    assert error_of(exc)[:2] == ("SendingPausedException", 400)
    with pytest.raises(client.exceptions.SendingPausedException):
        bulk(client, "a@example.org")
    assert client.get_account()["SendingEnabled"] is False
    ses.configure(paused=False)
    send(client)
    assert client.get_account()["SendingEnabled"] is True
    ses.configure(suspended=True)
    with pytest.raises(client.exceptions.AccountSuspendedException) as exc:
        send(client)
    assert error_of(exc)[:2] == ("AccountSuspendedException", 400)
    account = client.get_account()
    assert (account["SendingEnabled"], account["EnforcementStatus"]) == (False, "SHUTDOWN")
    assert len(ses.received) == 1


def test_error_every_nth_call_is_internal_failure() -> None:
    with FakeSES(error_every=3) as ses:
        c = make_client(ses.url)
        outcomes = []
        for _ in range(6):
            try:
                send(c)
                outcomes.append("ok")
            except botocore.exceptions.ClientError as err:
                outcomes.append(err.response["Error"]["Code"])
                status = err.response["ResponseMetadata"]["HTTPStatusCode"]
        c.close()
        assert outcomes == ["ok", "ok", "InternalFailure"] * 2
        assert status == 500
        assert (ses.stats()["errors"], len(ses.received), ses.calls) == (2, 4, 6)


def test_error_rate_is_reproducible_from_seed() -> None:
    rng = random.Random(7)
    expected = [rng.random() < 0.5 for _ in range(12)]
    with FakeSES(error_rate=0.5, seed=7) as ses:
        c = make_client(ses.url)
        failed = []
        for _ in range(12):
            try:
                send(c)
                failed.append(False)
            except c.exceptions.ClientError:
                failed.append(True)
        c.close()
    assert failed == expected


def test_drop_closes_connection_without_answer() -> None:
    with FakeSES(drop_every=2) as ses:
        c = make_client(ses.url)
        send(c)
        with pytest.raises(botocore.exceptions.ConnectionClosedError):
            send(c, to="dropped@example.org")
        send(c)  # a fresh connection works
        assert [m.to[0] for m in ses.received] == ["a@example.org"] * 2
        ses.configure(drop_accepted=True)
        with pytest.raises(botocore.exceptions.ConnectionClosedError):
            send(c, to="lost-reply@example.org")
        c.close()
        assert ses.received[-1].to == ["lost-reply@example.org"]
        assert ses.stats()["dropped"] == 2


def test_throttle_counts_recipients_in_sliding_second() -> None:
    now = [100.0]
    with FakeSES(throttle_rate=3, clock=lambda: now[0]) as ses:
        c = make_client(ses.url)
        bulk(c, "a@example.org", "b@example.org")  # t=100.0: 2 in window
        now[0] = 100.5
        with pytest.raises(c.exceptions.TooManyRequestsException) as exc:
            bulk(c, "c@example.org", "d@example.org")  # 2 + 2 > 3: refused whole
        send(c, to="e@example.org")  # 3 in window
        now[0] = 100.999
        with pytest.raises(c.exceptions.TooManyRequestsException):
            send(c, to="f@example.org")
        now[0] = 101.0  # the two from t=100.0 leave the window
        bulk(c, "g@example.org", "h@example.org")
        now[0] = 101.5  # e leaves, g+h (t=101.0) remain
        send(c, to="i@example.org")
        with pytest.raises(c.exceptions.TooManyRequestsException):
            send(c, to="j@example.org")
        c.close()
        accepted = [m.to[0][0] for m in ses.received]
        assert ses.stats()["throttled"] == 3
    assert accepted == ["a", "b", "e", "g", "h", "i"]
    assert error_of(exc) == ("TooManyRequestsException", 429, "Maximum sending rate exceeded.")


def test_latency_does_not_serialise_requests() -> None:
    with FakeSES(latency=0.3) as ses:
        c = make_client(ses.url)  # thread-safe; pools 10 connections
        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(send, [c] * 8))
        elapsed = time.monotonic() - start
        c.close()
        assert len(ses.received) == 8
    assert 0.3 <= elapsed < 1.0


def test_get_account_reports_quota() -> None:
    with FakeSES(max_send_rate=14.0, max_24h=50000) as ses:
        c = make_client(ses.url)
        bulk(c, "a@example.org", "b@example.org")
        account = c.get_account()
        c.close()
    assert account["SendQuota"] == {"Max24HourSend": 50000.0, "MaxSendRate": 14.0,
                                    "SentLast24Hours": 2.0}
    assert (account["SendingEnabled"], account["EnforcementStatus"],
            account["ProductionAccessEnabled"]) == (True, "HEALTHY", True)


def test_endpoint_from_environment(ses: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SESV2", ses.url)
    c = make_client(None)
    send(c)
    c.close()
    assert len(ses.received) == 1


def test_configure_validates_and_reset_clears(ses: Any, client: Any) -> None:
    with pytest.raises(TypeError):
        ses.configure(no_such_fault=1)
    with pytest.raises(ValueError, match="error_rate"):
        ses.configure(error_rate=2)
    send(client)
    ses.reset()
    assert (ses.received, ses.calls) == ([], 0)


def test_http_control_endpoints(ses: Any, client: Any) -> None:
    with httpx.Client(base_url=ses.url) as http:
        settings = http.post("/_fake/configure", json={"paused": True,
                                                        "reject_addresses": ["x@example.org"]})
        assert settings.json()["paused"] is True
        assert settings.json()["reject_addresses"] == ["x@example.org"]
        with pytest.raises(client.exceptions.SendingPausedException):
            send(client)
        assert http.post("/_fake/configure", json={"bogus": 1}).status_code == 400
        http.post("/_fake/configure", json={"paused": False})
        send(client, EmailTags=[{"Name": "req_id", "Value": "r1"}])
        send(client, to="b@example.org")
        got = http.get("/_fake/received").json()
        assert [m["to"] for m in got] == [["a@example.org"], ["b@example.org"]]
        assert (got[0]["subject"], got[0]["text"], got[0]["tags"]) == ("Hi", "plain",
                                                                      {"req_id": "r1"})
        assert got[0]["message_id"] == ses.received[0].message_id
        assert got[0]["from"] == SENDER
        assert got[0]["arrival_wall"] > 0
        tail = http.get("/_fake/received", params={"offset": 1}).json()
        assert [m["to"] for m in tail] == [["b@example.org"]]
        stats = http.get("/_fake/stats").json()
        assert (stats["calls"], stats["received"], stats["refused"]) == (3, 2, 1)
        assert stats["cpu_seconds"] > 0
        assert stats["settings"]["paused"] is False
        assert http.get("/_fake/received", params={"offset": "x"}).status_code == 400
        assert http.post("/_fake/reset").status_code == 200
        assert http.get("/_fake/received").json() == []
        assert http.get("/_fake/nothing").status_code == 404


def test_command_line_serves_until_terminated() -> None:
    cmd = [sys.executable, str(SCRIPT), "--port", "0", "--latency-ms", "1",
           "--reject", "no@example.org", "--max-send-rate", "7"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        try:
            assert line.startswith("listening on http://127.0.0.1:")
            c = make_client(line.split()[-1])
            assert c.get_account()["SendQuota"]["MaxSendRate"] == 7.0
            with pytest.raises(c.exceptions.MessageRejected):
                send(c, to="no@example.org")
            c.close()
        finally:
            proc.terminate()
        assert proc.wait(timeout=5) == 0
