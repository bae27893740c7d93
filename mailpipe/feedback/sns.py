"""Amazon SNS HTTP(S) messages: parse, check and verify, without serving HTTP.

``parse_sns`` turns a request body into a message dict; ``SnsVerifier.verify``
proves that SNS signed it for one of our topics recently. Nothing here visits a
``SubscribeURL``; ``check_sns_url`` only says whether one may be visited.

    MailpipeError
     ├── SnsRejected      the message is malformed, forged, stale or not ours (answer 4xx)
     └── CertUnavailable  the signing certificate cannot be had now (answer 5xx: SNS retries)
          └── CertNotFound  SNS's host says there is no such certificate
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailpipe.errors import CertNotFound, CertUnavailable, SnsRejected
from mailpipe.lru import BoundedCache
from mailpipe.timeutil import parse_rfc3339, utcnow

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 1024 * 1024
"""Largest SNS request body accepted (an SNS message is at most 256 KiB, then JSON-escaped)."""
MAX_CERT_BYTES: Final = 64 * 1024
FETCH_TIMEOUT_S: Final = 5.0
FETCH_RETRY_AFTER_S: Final = 60.0
"""After SNS answered that a certificate does not exist, it is not asked again for this long."""
MAX_FAILED_NAMES: Final = 1024

NOTIFICATION: Final = "Notification"
SUBSCRIPTION_CONFIRMATION: Final = "SubscriptionConfirmation"
UNSUBSCRIBE_CONFIRMATION: Final = "UnsubscribeConfirmation"

SnsMessage = dict[str, str]
"""A parsed SNS message: its known fields, all strings (``Subject`` only when present)."""

_SIGNING_FIELDS: Final = ("Signature", "SignatureVersion", "SigningCertURL")
_NOTIFICATION_SIGNED: Final = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_SIGNED: Final = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)
_SIGNED: Final[dict[str, tuple[str, ...]]] = {
    NOTIFICATION: _NOTIFICATION_SIGNED,
    SUBSCRIPTION_CONFIRMATION: _CONFIRMATION_SIGNED,
    UNSUBSCRIBE_CONFIRMATION: _CONFIRMATION_SIGNED,
}
_OPTIONAL: Final = frozenset({"Subject", "UnsubscribeURL"})
_KNOWN: Final = frozenset(
    {*_NOTIFICATION_SIGNED, *_CONFIRMATION_SIGNED, *_SIGNING_FIELDS, "UnsubscribeURL"}
)
_HASHES: Final[dict[str, Callable[[], hashes.HashAlgorithm]]] = {
    "1": hashes.SHA1,
    "2": hashes.SHA256,
}

_PKCS1V15: Final = padding.PKCS1v15()

_REGION: Final = r"[a-z]{2}(?:-gov)?-[a-z]+-[0-9]{1,2}"
_SNS_NETLOC: Final = re.compile(rf"(sns\.{_REGION}\.amazonaws\.com(?:\.cn)?)(?::443)?")
_CERT_PATH: Final = re.compile(r"/(SimpleNotificationService-[A-Za-z0-9]{1,128}\.pem)")
_URL: Final = re.compile(r"https://([^/?#]*)([^?#]*)(\?[^#]*)?(#.*)?")


def parse_sns(body: bytes, *, max_bytes: int = MAX_BODY_BYTES) -> SnsMessage:
    """Decode an SNS request body (JSON whatever the Content-Type) into its known fields.

    Promises a dict holding every field its ``Type`` requires, each a string, and
    no other field than the known SNS ones. Raises ``SnsRejected`` otherwise.
    """
    if len(body) > max_bytes:
        raise SnsRejected(f"body over {max_bytes} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise SnsRejected("body is not JSON") from None
    if not isinstance(data, dict):
        raise SnsRejected("body is not a JSON object")
    msg: SnsMessage = {}
    for name in _KNOWN & data.keys():
        value = data[name]
        if value is None and name in _OPTIONAL:
            continue
        if not isinstance(value, str):
            raise SnsRejected(f"field {name} is not a string")
        msg[name] = value
    _check_fields(msg)
    return msg


def _check_fields(msg: Mapping[str, str]) -> tuple[str, ...]:
    """The signed field names of ``msg``'s type, after checking all its fields are there."""
    fields = _signed_fields(msg)
    missing = [f for f in _SIGNING_FIELDS if f not in msg]
    if missing:
        raise SnsRejected(f"{msg['Type']} lacks {', '.join(missing)}")
    return fields


def _signed_fields(msg: Mapping[str, str]) -> tuple[str, ...]:
    """The signed field names of ``msg``'s type, after checking they are there."""
    kind = msg.get("Type")
    if kind not in _SIGNED:
        raise SnsRejected("missing Type" if kind is None else f"unknown Type {kind[:40]!r}")
    fields = _SIGNED[kind]
    missing = [f for f in fields if f not in msg and f not in _OPTIONAL]
    if missing:
        raise SnsRejected(f"{kind} lacks {', '.join(missing)}")
    for name in fields:
        # Only Message may span lines; otherwise "Name\nValue\n" pairs could be
        # regrouped (a Subject folded into MessageId) under the same signature.
        if name != "Message" and "\n" in msg.get(name, ""):
            raise SnsRejected(f"newline in {name}")
    return fields


def string_to_sign(msg: Mapping[str, str]) -> bytes:
    """The bytes SNS signed: ``Name\\nValue\\n`` for each signed field of the type, in order."""
    return _joined(msg, _signed_fields(msg))


def _joined(msg: Mapping[str, str], fields: tuple[str, ...]) -> bytes:
    return "".join(f"{name}\n{msg[name]}\n" for name in fields if name in msg).encode()


def _split_https(url: str) -> tuple[str, str, str | None, str | None]:
    """(netloc, path, query, fragment) of a printable-ASCII https URL; else ``SnsRejected``."""
    if len(url) > 2048 or not url.isascii() or not url.isprintable() or " " in url:
        raise SnsRejected("URL has unexpected characters")
    match = _URL.fullmatch(url)
    if match is None:
        raise SnsRejected("URL is not https")
    netloc, path, query, fragment = match.groups()
    return netloc, path, query, fragment


def _sns_host(netloc: str) -> str:
    """The SNS host of ``netloc`` (no userinfo, port 443 only); else ``SnsRejected``."""
    match = _SNS_NETLOC.fullmatch(netloc)
    if match is None:
        raise SnsRejected(f"host {netloc[:80]!r} is not an SNS endpoint")
    return match.group(1)


def check_cert_url(url: str) -> str:
    """The certificate's file name if ``url`` is a genuine SNS ``SigningCertURL``.

    Requires https, a host ``sns.<region>.amazonaws.com[.cn]`` (optionally ``:443``),
    no userinfo, query or fragment, and the path ``/SimpleNotificationService-<id>.pem``.
    """
    return _cert_location(url)[1]


def _cert_location(url: str) -> tuple[str, str]:
    """(SNS host, file name) of a ``SigningCertURL``; ``SnsRejected`` unless genuine."""
    netloc, path, query, fragment = _split_https(url)
    host = _sns_host(netloc)
    if query is not None or fragment is not None:
        raise SnsRejected("cert URL has a query or fragment")
    match = _CERT_PATH.fullmatch(path)
    if match is None:
        raise SnsRejected(f"cert URL path {path[:80]!r} is not an SNS certificate")
    return host, match.group(1)


def check_sns_url(url: str) -> str:
    """``url`` unchanged if it is https on a genuine SNS host (e.g. a ``SubscribeURL``)."""
    netloc, _path, _query, _fragment = _split_https(url)
    _sns_host(netloc)
    return url


def http_fetch(url: str) -> bytes:
    """GET ``url`` (no redirects, 5 s timeout, at most 64 KiB); ``CertUnavailable`` on failure."""
    try:
        with httpx.stream("GET", url, timeout=FETCH_TIMEOUT_S, follow_redirects=False) as resp:
            if resp.status_code in (403, 404, 410):
                raise CertNotFound(f"GET {url} answered {resp.status_code}")
            if resp.status_code != 200:
                raise CertUnavailable(f"GET {url} answered {resp.status_code}")
            body = bytearray()
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > MAX_CERT_BYTES:
                    raise CertUnavailable(f"GET {url} is over {MAX_CERT_BYTES} bytes")
            return bytes(body)
    except httpx.HTTPError as exc:
        raise CertUnavailable(f"GET {url} failed: {exc!r}") from exc


class CertStore:
    """SNS signing keys by certificate URL: memory, then ``cache_dir``, then ``fetch``.

    ``fetch(url) -> bytes`` is called (blocking) only for a checked SNS URL whose
    file is not cached yet; ``None`` means never fetch. Safe to share between threads.
    """

    def __init__(
        self,
        cache_dir: Path,
        fetch: Callable[[str], bytes] | None = http_fetch,
        *,
        max_keys: int = 32,
        retry_after: float = FETCH_RETRY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache_dir = cache_dir
        self._fetch = fetch
        self._retry_after = retry_after
        self._clock = clock
        self._failed: BoundedCache[str, float] = BoundedCache(MAX_FAILED_NAMES)
        """When SNS last said each ``host/name`` does not exist: anyone may
        post a message naming a made-up certificate, and each must not cost a fetch."""
        self._keys: BoundedCache[str, rsa.RSAPublicKey] = BoundedCache(max_keys)
        self._by_url: BoundedCache[str, rsa.RSAPublicKey] = BoundedCache(max_keys)
        """Keys by the exact URL that passed the checks (read without the lock:
        a dict lookup is atomic, and entries are only ever whole)."""
        self._lock = threading.Lock()

    def cached(self, url: str) -> bool:
        """Whether the key for ``url`` is in memory (``get`` then does no I/O)."""
        if url in self._by_url:
            return True
        try:
            _, name = _cert_location(url)
        except SnsRejected:
            return False
        with self._lock:
            return name in self._keys

    def get(self, url: str) -> rsa.RSAPublicKey:
        """The RSA public key of the certificate at ``url``, after checking ``url``.

        Raises ``SnsRejected`` for a bad URL or certificate, ``CertUnavailable``
        when the certificate is neither cached nor fetchable now.
        """
        # SNS signs with one certificate per region for months: the exact URL
        # seen before needs neither the checks nor the name lookup again.
        key = self._by_url.get(url)
        if key is not None:
            return key
        host, name = _cert_location(url)
        with self._lock:
            key = self._keys.get(name)
        if key is None:
            key = self._load(host, name)
        with self._lock:
            if name not in self._keys:
                self._keys.put(name, key)
            self._by_url.put(url, key)
        return key

    def _load(self, host: str, name: str) -> rsa.RSAPublicKey:
        path = self.cache_dir / name
        try:
            with path.open("rb") as f:
                return _public_key(f.read(MAX_CERT_BYTES + 1), name)
        except FileNotFoundError:
            pass
        if self._fetch is None:
            raise CertUnavailable(f"{name} is not in {self.cache_dir} and fetching is off")
        # By host and name: a forged message naming a real certificate on
        # another region's host (404 there) must not block the real one.
        where = f"{host}/{name}"
        with self._lock:
            failed = self._failed.get(where)
        if failed is not None and self._clock() - failed < self._retry_after:
            raise CertUnavailable(
                f"SNS said {name} does not exist {self._clock() - failed:.0f}s ago;"
                f" not asked again within {self._retry_after:g}s"
            )
        try:
            pem = self._fetch(f"https://{host}/{name}")
        except CertNotFound:  # not a transient failure: SNS's retries must not wait
            with self._lock:
                self._failed.put(where, self._clock())
            raise
        key = _public_key(pem, name)
        self._write(path, pem)
        log.info("cached SNS signing certificate %s", name)
        return key

    def _write(self, path: Path, pem: bytes) -> None:
        """Write ``pem`` to ``path`` atomically (temp file in the same directory, then rename)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def _public_key(pem: bytes, name: str) -> rsa.RSAPublicKey:
    if len(pem) > MAX_CERT_BYTES:
        raise SnsRejected(f"certificate {name} is too large")
    try:
        key = x509.load_pem_x509_certificate(pem).public_key()
    except ValueError:
        raise SnsRejected(f"certificate {name} is not a PEM X.509 certificate") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise SnsRejected(f"certificate {name} has no RSA key")
    return key


class SnsVerifier:
    """Accepts only fresh SNS messages, signed by SNS, from an allowed topic.

    ``verify`` is CPU work (an RSA check, about 0.1 ms with a cached key) and may
    do blocking I/O on a certificate cache miss: call it from a worker thread
    (``trio.to_thread.run_sync``) when that matters.
    """

    def __init__(
        self,
        allowed_topics: frozenset[str],
        certs: CertStore,
        *,
        max_age: timedelta = timedelta(hours=1),
        max_ahead: timedelta = timedelta(minutes=5),
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.allowed_topics = allowed_topics
        self.certs = certs
        self.max_age = max_age
        self.max_ahead = max_ahead
        self._now = now

    def verify(self, msg: Mapping[str, str]) -> None:
        """Return if ``msg`` is genuine; otherwise raise ``SnsRejected`` saying why.

        ``CertUnavailable`` means the question cannot be answered now.
        Only the signed fields are proven: never trust ``UnsubscribeURL``.
        """
        fields = _check_fields(msg)
        hash_for = _HASHES.get(msg["SignatureVersion"])
        if hash_for is None:
            raise SnsRejected(f"SignatureVersion {msg['SignatureVersion'][:8]!r} unsupported")
        self._check_topic(msg["TopicArn"])
        self._check_time(msg["Timestamp"])
        try:
            signature = base64.b64decode(msg["Signature"], validate=True)
        except (binascii.Error, ValueError):
            raise SnsRejected("Signature is not base64") from None
        key = self.certs.get(msg["SigningCertURL"])  # checks the URL first
        try:
            key.verify(signature, _joined(msg, fields), _PKCS1V15, hash_for())
        except InvalidSignature:
            raise SnsRejected("signature does not match") from None

    def _check_topic(self, topic: str) -> None:
        if not self.allowed_topics:
            raise SnsRejected("no topic allowed: SNS_TOPIC_ARNS is empty")
        if topic not in self.allowed_topics:
            raise SnsRejected(f"TopicArn {topic[:200]!r} is not in SNS_TOPIC_ARNS")

    def _check_time(self, timestamp: str) -> None:
        try:
            sent = parse_rfc3339(timestamp)
        except (ValueError, OverflowError):
            raise SnsRejected(f"Timestamp {timestamp[:40]!r} is not RFC 3339") from None
        now = self._now()
        if sent < now - self.max_age:
            raise SnsRejected(f"Timestamp {timestamp} is older than {self.max_age}")
        if sent > now + self.max_ahead:
            raise SnsRejected(f"Timestamp {timestamp} is in the future")
