"""SNS message parsing and verification: every refusal, both signature versions, the cert cache."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from snskit import SnsSigner, encode, new_key, sns_time

from mailpipe.feedback.sns import (
    CertNotFound,
    CertStore,
    CertUnavailable,
    SnsRejected,
    SnsVerifier,
    check_cert_url,
    check_sns_url,
    http_fetch,
    parse_sns,
    string_to_sign,
)

TOPIC = "arn:aws:sns:us-east-1:123456789012:mailpipe-feedback"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
RECENT = NOW - timedelta(minutes=1)
KINDS = ("notification", "subscription_confirmation", "unsubscribe_confirmation")


def no_fetch(url: str) -> bytes:
    raise AssertionError(f"unexpected fetch of {url}")


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return new_key()


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("certs")


@pytest.fixture(scope="module")
def signer(cert_dir: Path, key: rsa.RSAPrivateKey) -> SnsSigner:
    return SnsSigner(cert_dir, key=key)


@pytest.fixture(scope="module")
def intruder(tmp_path_factory: pytest.TempPathFactory) -> SnsSigner:
    """Signs with another key; its certificate is not in our cache."""
    return SnsSigner(tmp_path_factory.mktemp("intruder"))


@pytest.fixture(scope="module")
def verifier(cert_dir: Path, signer: SnsSigner) -> SnsVerifier:
    return SnsVerifier(frozenset({TOPIC}), CertStore(cert_dir, None), now=lambda: NOW)


def make(signer: SnsSigner, kind: str, version: int = 1, **kw: Any) -> dict[str, Any]:
    """A signed message of ``kind`` for TOPIC, one minute old."""
    kw.setdefault("timestamp", RECENT)
    topic = kw.pop("topic", TOPIC)
    if kind == "notification":
        return signer.notification(
            topic, kw.pop("message", {"eventType": "Send"}), version=version, **kw
        )
    build: Callable[..., dict[str, Any]] = getattr(signer, kind)
    return build(topic, version=version, **kw)


def refused(verifier: SnsVerifier, msg: dict[str, Any], reason: str) -> None:
    with pytest.raises(SnsRejected, match=reason):
        verifier.verify(msg)


# --- accepted ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("version", [1, 2])
def test_valid_message_verifies(
    signer: SnsSigner, verifier: SnsVerifier, kind: str, version: int
) -> None:
    msg = parse_sns(encode(make(signer, kind, version)))
    verifier.verify(msg)
    assert msg["Type"] == kind.title().replace("_", "")


@pytest.mark.parametrize("version", [1, 2])
def test_notification_with_subject_verifies(
    signer: SnsSigner, verifier: SnsVerifier, version: int
) -> None:
    verifier.verify(parse_sns(encode(make(signer, "notification", version, subject="Hi there"))))


def test_string_to_sign_is_name_value_lines() -> None:
    msg = {
        "Type": "Notification", "MessageId": "m-1", "TopicArn": TOPIC, "Subject": "S",
        "Message": "line1\nline2", "Timestamp": "2024-05-01T11:59:00.000Z",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    }  # fmt: skip
    assert string_to_sign(msg) == (
        b"Message\nline1\nline2\nMessageId\nm-1\nSubject\nS\n"
        b"Timestamp\n2024-05-01T11:59:00.000Z\nTopicArn\n"
        + TOPIC.encode()
        + b"\nType\nNotification\n"
    )


# --- refused: signature -----------------------------------------------------------------


def test_tampered_message_refused(signer: SnsSigner, verifier: SnsVerifier) -> None:
    msg = make(signer, "notification")
    refused(verifier, {**msg, "Message": msg["Message"] + " "}, "signature does not match")


def test_signed_with_another_key_refused(
    signer: SnsSigner, intruder: SnsSigner, verifier: SnsVerifier
) -> None:
    forged = intruder.sign({**make(intruder, "notification"), "SigningCertURL": signer.cert_url()})
    refused(verifier, forged, "signature does not match")


def test_signature_version_3_refused(signer: SnsSigner, verifier: SnsVerifier) -> None:
    refused(verifier, make(signer, "notification", version=3), "SignatureVersion '3'")


def test_version_swapped_refused(signer: SnsSigner, verifier: SnsVerifier) -> None:
    msg = make(signer, "notification", version=1)
    refused(verifier, {**msg, "SignatureVersion": "2"}, "signature does not match")


def test_signature_not_base64_refused(signer: SnsSigner, verifier: SnsVerifier) -> None:
    refused(verifier, {**make(signer, "notification"), "Signature": "not base64!"}, "base64")


def test_subject_folded_into_message_id_refused(signer: SnsSigner, verifier: SnsVerifier) -> None:
    msg = make(signer, "notification", subject="Hello")
    subject = msg.pop("Subject")
    folded = {**msg, "MessageId": f"{msg['MessageId']}\nSubject\n{subject}"}
    fields = ("Message", "MessageId", "Timestamp", "TopicArn", "Type")
    naive = "".join(f"{name}\n{folded[name]}\n" for name in fields).encode()
    assert naive == string_to_sign({**msg, "Subject": subject})  # same bytes, same signature
    refused(verifier, folded, "newline in MessageId")


# --- refused: certificate URL -----------------------------------------------------------

BAD_CERT_URLS = {
    "http": ("http://sns.us-east-1.amazonaws.com/{name}", "not https"),
    "s3_host": ("https://sns.s3-ap-southeast-2.amazonaws.com/{name}", "not an SNS endpoint"),
    "look_alike": ("https://sns.us-east-1.amazonaws.com.evil.example/{name}", "not an SNS"),
    "query": ("https://sns.us-east-1.amazonaws.com/{name}?x=.pem", "query or fragment"),
    "fragment": ("https://sns.us-east-1.amazonaws.com/{name}#x.pem", "query or fragment"),
    "userinfo": ("https://evil@sns.us-east-1.amazonaws.com/{name}", "not an SNS endpoint"),
    "extra_segment": ("https://sns.us-east-1.amazonaws.com/x/{name}", "not an SNS certificate"),
    "port_8443": ("https://sns.us-east-1.amazonaws.com:8443/{name}", "not an SNS endpoint"),
    "not_pem": ("https://sns.us-east-1.amazonaws.com/{name}.txt", "not an SNS certificate"),
    "encoded": ("https://sns.us-east-1.amazonaws.com/%2e%2e/{name}", "not an SNS certificate"),
    "upper_scheme": ("HTTPS://sns.us-east-1.amazonaws.com/{name}", "not https"),
    "newline": ("https://sns.us-east-1.amazonaws.com/Simple\nNotification{name}", "characters"),
    "bare_amazonaws": ("https://sns.amazonaws.com/{name}", "not an SNS endpoint"),
}


@pytest.mark.parametrize(("template", "reason"), BAD_CERT_URLS.values(), ids=BAD_CERT_URLS.keys())
def test_bad_cert_url_refused(
    signer: SnsSigner, verifier: SnsVerifier, template: str, reason: str
) -> None:
    url = template.format(name=signer.file_name)
    with pytest.raises(SnsRejected, match=reason):
        check_cert_url(url)
    refused(verifier, signer.sign({**make(signer, "notification"), "SigningCertURL": url}), reason)


@pytest.mark.parametrize(
    "host",
    [
        "sns.us-east-1.amazonaws.com:443",
        "sns.cn-north-1.amazonaws.com.cn",
        "sns.us-gov-west-1.amazonaws.com",
    ],
)
def test_good_cert_url_gives_file_name(host: str) -> None:
    assert check_cert_url(f"https://{host}/SimpleNotificationService-ab12.pem") == (
        "SimpleNotificationService-ab12.pem"
    )


def test_check_sns_url() -> None:
    url = "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=a&Token=b"
    assert check_sns_url(url) == url
    for bad in (url.replace("https", "http"), url.replace(".com/", ".com.evil.example/")):
        with pytest.raises(SnsRejected):
            check_sns_url(bad)


# --- refused: topic and time ------------------------------------------------------------


def test_unlisted_topic_refused(signer: SnsSigner, verifier: SnsVerifier) -> None:
    other = "arn:aws:sns:us-east-1:999999999999:someone-else"
    refused(
        verifier, make(signer, "subscription_confirmation", topic=other), "not in SNS_TOPIC_ARNS"
    )


def test_empty_allow_list_refuses_all(signer: SnsSigner, cert_dir: Path) -> None:
    nobody = SnsVerifier(frozenset(), CertStore(cert_dir, None), now=lambda: NOW)
    refused(nobody, make(signer, "notification"), "SNS_TOPIC_ARNS is empty")


def test_two_hour_old_timestamp_refused(signer: SnsSigner, verifier: SnsVerifier) -> None:
    msg = make(signer, "notification", timestamp=NOW - timedelta(hours=2))
    refused(verifier, msg, "older than")


def test_future_timestamp_refused(signer: SnsSigner, verifier: SnsVerifier) -> None:
    refused(verifier, make(signer, "notification", timestamp=NOW + timedelta(minutes=10)), "future")


def test_unparsable_timestamp_refused(signer: SnsSigner, verifier: SnsVerifier) -> None:
    refused(verifier, make(signer, "notification", timestamp="yesterday"), "not RFC 3339")


def test_cheap_checks_come_before_cert_access(signer: SnsSigner, tmp_path: Path) -> None:
    empty = SnsVerifier(frozenset({TOPIC}), CertStore(tmp_path, no_fetch), now=lambda: NOW)
    other = "arn:aws:sns:us-east-1:999999999999:someone-else"
    refused(empty, make(signer, "notification", topic=other), "not in SNS_TOPIC_ARNS")
    refused(empty, make(signer, "notification", timestamp=NOW - timedelta(hours=2)), "older")
    refused(empty, make(signer, "notification", version=3), "SignatureVersion")


# --- parse_sns --------------------------------------------------------------------------

REQUIRED = {
    "notification": ["Type", "MessageId", "TopicArn", "Message", "Timestamp",
                     "SignatureVersion", "Signature", "SigningCertURL"],
    "subscription_confirmation": ["MessageId", "Token", "TopicArn", "Message", "SubscribeURL",
                                  "Timestamp", "SignatureVersion", "Signature", "SigningCertURL"],
}  # fmt: skip
MISSING = [(kind, field) for kind, fields in REQUIRED.items() for field in fields]


@pytest.mark.parametrize(("kind", "field"), MISSING)
def test_missing_field_refused(
    signer: SnsSigner, verifier: SnsVerifier, kind: str, field: str
) -> None:
    msg = make(signer, kind)
    del msg[field]
    with pytest.raises(SnsRejected, match="Type" if field == "Type" else field):
        parse_sns(encode(msg))
    with pytest.raises(SnsRejected):
        verifier.verify(msg)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"Type": "Notification", "MessageId": 5}', "MessageId is not a string"),
        (b'{"Type": "Dance"}', "unknown Type"),
        (b"[" * 100_000, "not JSON"),
        (b" " * 2_000_000, "body over"),
    ],
)
def test_malformed_body_refused(body: bytes, reason: str) -> None:
    with pytest.raises(SnsRejected, match=reason):
        parse_sns(body)


def test_parse_keeps_known_fields_only(signer: SnsSigner, verifier: SnsVerifier) -> None:
    msg = make(signer, "notification")
    parsed = parse_sns(encode({**msg, "Subject": None, "MessageAttributes": {"a": {"Type": "S"}}}))
    assert "Subject" not in parsed
    assert "MessageAttributes" not in parsed
    assert parsed["UnsubscribeURL"] == msg["UnsubscribeURL"]
    verifier.verify(parsed)


# --- certificate store ------------------------------------------------------------------


def test_cache_hit_never_fetches(signer: SnsSigner, cert_dir: Path) -> None:
    store = CertStore(cert_dir, no_fetch)
    assert store.get(signer.cert_url()).public_numbers() == signer.key.public_key().public_numbers()
    assert store.get(signer.cert_url("eu-west-1")) is store.get(signer.cert_url())


def test_bad_url_refused_before_cache_or_fetch(signer: SnsSigner, cert_dir: Path) -> None:
    assert (cert_dir / signer.file_name).exists()
    store = CertStore(cert_dir, no_fetch)
    with pytest.raises(SnsRejected, match="not an SNS endpoint"):
        store.get(f"https://sns.evil.example/{signer.file_name}")


def test_cache_miss_fetches_once_and_writes_file(signer: SnsSigner, tmp_path: Path) -> None:
    calls: list[str] = []

    def fetch(url: str) -> bytes:
        calls.append(url)
        return signer.pem

    store = CertStore(tmp_path / "cache", fetch)
    url = signer.cert_url("ap-southeast-2").replace(".com/", ".com:443/")
    store.get(url)
    store.get(url)
    assert calls == [signer.cert_url("ap-southeast-2")]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [signer.file_name]
    CertStore(tmp_path / "cache", no_fetch).get(url)  # a new process finds it on disk


def test_fetched_garbage_is_refused_and_not_cached(signer: SnsSigner, tmp_path: Path) -> None:
    store = CertStore(tmp_path, lambda url: b"<html>hello</html>")
    with pytest.raises(SnsRejected, match="not a PEM"):
        store.get(signer.cert_url())
    assert list(tmp_path.iterdir()) == []


def test_failed_fetch_is_not_repeated_for_a_while(signer: SnsSigner, tmp_path: Path) -> None:
    # Anyone can post a message naming a made-up certificate on an SNS host:
    # one fetch per name per minute that SNS answers 404, not one per message.
    calls: list[str] = []
    now = [1000.0]
    failing = True

    def fetch(url: str) -> bytes:
        calls.append(url)
        if failing:
            raise CertNotFound(f"GET {url} answered 404")
        return signer.pem

    store = CertStore(tmp_path, fetch, retry_after=60, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(CertUnavailable):
            store.get(signer.cert_url())
    assert len(calls) == 1
    with pytest.raises(CertUnavailable, match="not asked again within 60s"):
        store.get(signer.cert_url())
    assert len(calls) == 1
    # A forgery naming the certificate on another region's host is that
    # host's 404: the real host is still asked.
    failing = False
    store.get(signer.cert_url("eu-west-1"))
    assert len(calls) == 2
    failing = True
    store = CertStore(tmp_path / "fresh", fetch, retry_after=60, clock=lambda: now[0])
    with pytest.raises(CertUnavailable):
        store.get(signer.cert_url())
    now[0] += 61
    failing = False
    assert store.get(signer.cert_url()).public_numbers() == signer.key.public_key().public_numbers()
    assert len(calls) == 4


def test_transient_fetch_failures_are_retried_at_once(signer: SnsSigner, tmp_path: Path) -> None:
    calls: list[str] = []

    def fetch(url: str) -> bytes:
        calls.append(url)
        raise CertUnavailable(f"GET {url} failed: ConnectTimeout")

    store = CertStore(tmp_path, fetch)
    for _ in range(2):
        with pytest.raises(CertUnavailable):
            store.get(signer.cert_url())
    assert len(calls) == 2  # SNS retries within seconds; each retry may succeed


def test_no_fetch_and_not_cached_is_unavailable(signer: SnsSigner, tmp_path: Path) -> None:
    with pytest.raises(CertUnavailable):
        CertStore(tmp_path, None).get(signer.cert_url())


def test_memory_cache_is_bounded(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    signers = [SnsSigner(tmp_path, key=key) for _ in range(3)]
    store = CertStore(tmp_path, no_fetch, max_keys=2)
    for s in signers:
        store.get(s.cert_url())
    assert len(store._keys) == 2


# --- http_fetch against a real local server ---------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/ok")
            self.end_headers()
            return
        body = {"/ok": b"PEM", "/big": b"x" * 70_000}.get(self.path)
        self.send_response(200 if body else 404)
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_fetch(http_base: str) -> None:
    assert http_fetch(f"{http_base}/ok") == b"PEM"
    for path, reason in [("/missing", "404"), ("/redirect", "302"), ("/big", "over 65536")]:
        with pytest.raises(CertUnavailable, match=reason) as caught:
            http_fetch(f"{http_base}{path}")
        assert isinstance(caught.value, CertNotFound) == (path == "/missing")


def test_http_fetch_connection_error_is_unavailable() -> None:
    with pytest.raises(CertUnavailable, match="failed"):
        http_fetch("http://127.0.0.1:1/nothing")


# --- property: any change of a signed field breaks verification -------------------------

SIGNED = {
    "notification": ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"],
    "subscription_confirmation": ["Message", "MessageId", "SubscribeURL", "Timestamp",
                                  "Token", "TopicArn", "Type"],
    "unsubscribe_confirmation": ["Message", "MessageId", "SubscribeURL", "Timestamp",
                                 "Token", "TopicArn", "Type"],
}  # fmt: skip
SIGNING = ["Signature", "SignatureVersion", "SigningCertURL"]

near_times = st.datetimes(
    min_value=(NOW - timedelta(minutes=50)).replace(tzinfo=None),
    max_value=(NOW + timedelta(minutes=4)).replace(tzinfo=None),
).map(lambda t: sns_time(t.replace(tzinfo=UTC)))
values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["1", "2", TOPIC, "Notification", "SubscriptionConfirmation",
                     "UnsubscribeConfirmation"]),
    near_times,
    st.from_regex(
        r"https://sns\.(us|eu)-[a-z]{4}-[0-9]\.amazonaws\.com/SimpleNotificationService-[0-9a-f]{8}\.pem",
        fullmatch=True,
    ),
    st.binary(min_size=256, max_size=256).map(lambda b: base64.b64encode(b).decode()),
)  # fmt: skip


@pytest.fixture(scope="module")
def originals(signer: SnsSigner) -> dict[tuple[str, int], dict[str, Any]]:
    """One signed message per type and version (a notification with a Subject)."""
    extra: dict[str, dict[str, Any]] = {"notification": {"subject": "Monthly report"}}
    return {(k, v): make(signer, k, v, **extra.get(k, {})) for k in KINDS for v in (1, 2)}


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(KINDS), version=st.sampled_from([1, 2]), data=st.data())
def test_any_single_field_change_fails(
    originals: dict[tuple[str, int], dict[str, Any]],
    verifier: SnsVerifier,
    kind: str,
    version: int,
    data: st.DataObject,
) -> None:
    msg = originals[kind, version]
    verifier.verify(msg)
    field = data.draw(st.sampled_from(SIGNED[kind] + SIGNING), label="field")
    value = data.draw(values, label="value")
    assume(value != msg[field])
    with pytest.raises((SnsRejected, CertUnavailable)):
        verifier.verify({**msg, field: value})
