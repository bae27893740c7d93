"""Make SNS messages signed like Amazon SNS does, with a key of our own.

    signer = SnsSigner(cert_dir)            # writes SimpleNotificationService-<hex>.pem there
    msg = signer.notification(TOPIC, {"eventType": "Send", ...}, version=2)
    body = encode(msg)                      # what SNS would POST

Point a ``CertStore`` at ``cert_dir`` (no fetch needed), or serve ``signer.pem``
from a fake fetch. Generating a key costs ~50 ms: pass ``key=`` to reuse one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from mailpipe.feedback.sns import string_to_sign

Timestamp = datetime | str | None


def new_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """A fresh RSA private key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def sns_time(moment: datetime) -> str:
    """``moment`` as SNS writes it, e.g. ``2024-05-01T12:00:00.123Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def encode(msg: dict[str, Any]) -> bytes:
    """The request body SNS would POST for ``msg``."""
    return json.dumps(msg).encode()


class SnsSigner:
    """Signs SNS messages with its own key; its certificate is a file in ``cert_dir``."""

    def __init__(self, cert_dir: Path, *, key: rsa.RSAPrivateKey | None = None) -> None:
        self.key = key or new_key()
        self.pem = _self_signed_pem(self.key)
        digest = hashlib.sha256(self.pem).hexdigest()[:32]
        self.file_name = f"SimpleNotificationService-{digest}.pem"
        cert_dir.mkdir(parents=True, exist_ok=True)
        (cert_dir / self.file_name).write_bytes(self.pem)

    def cert_url(self, region: str = "us-east-1") -> str:
        """The ``SigningCertURL`` naming this signer's certificate."""
        return f"https://sns.{region}.amazonaws.com/{self.file_name}"

    def sign(self, msg: dict[str, Any]) -> dict[str, Any]:
        """``msg`` with ``Signature`` recomputed for its fields and ``SignatureVersion``."""
        hash_alg: hashes.HashAlgorithm = (
            hashes.SHA256() if msg["SignatureVersion"] == "2" else hashes.SHA1()
        )
        signature = self.key.sign(string_to_sign(msg), padding.PKCS1v15(), hash_alg)
        return {**msg, "Signature": base64.b64encode(signature).decode()}

    def notification(
        self,
        topic_arn: str,
        message: str | dict[str, Any],
        *,
        version: int = 1,
        subject: str | None = None,
        message_id: str | None = None,
        timestamp: Timestamp = None,
        region: str = "us-east-1",
    ) -> dict[str, Any]:
        """A signed ``Notification``; a dict ``message`` is JSON-encoded as SES does."""
        msg = self._base("Notification", topic_arn, message, version, message_id, timestamp, region)
        if subject is not None:
            msg["Subject"] = subject
        msg["UnsubscribeURL"] = (
            f"https://sns.{region}.amazonaws.com/?Action=Unsubscribe"
            f"&SubscriptionArn={topic_arn}:{uuid.uuid4()}"
        )
        return self.sign(msg)

    def subscription_confirmation(
        self,
        topic_arn: str,
        *,
        version: int = 1,
        token: str | None = None,
        message_id: str | None = None,
        timestamp: Timestamp = None,
        region: str = "us-east-1",
    ) -> dict[str, Any]:
        """A signed ``SubscriptionConfirmation`` for ``topic_arn``."""
        text = (
            f"You have chosen to subscribe to the topic {topic_arn}.\n"
            "To confirm the subscription, visit the SubscribeURL included in this message."
        )
        return self._confirmation(
            "SubscriptionConfirmation",
            topic_arn,
            text,
            version,
            token,
            message_id,
            timestamp,
            region,
        )

    def unsubscribe_confirmation(
        self,
        topic_arn: str,
        *,
        version: int = 1,
        token: str | None = None,
        message_id: str | None = None,
        timestamp: Timestamp = None,
        region: str = "us-east-1",
    ) -> dict[str, Any]:
        """A signed ``UnsubscribeConfirmation`` (its ``SubscribeURL`` would re-subscribe)."""
        text = (
            f"You have chosen to deactivate subscription {topic_arn}:{uuid.uuid4()}.\n"
            "To cancel this operation and restore the subscription, visit the SubscribeURL "
            "included in this message."
        )
        return self._confirmation(
            "UnsubscribeConfirmation",
            topic_arn,
            text,
            version,
            token,
            message_id,
            timestamp,
            region,
        )

    def _confirmation(
        self,
        kind: str,
        topic_arn: str,
        text: str,
        version: int,
        token: str | None,
        message_id: str | None,
        timestamp: Timestamp,
        region: str,
    ) -> dict[str, Any]:
        msg = self._base(kind, topic_arn, text, version, message_id, timestamp, region)
        msg["Token"] = token or uuid.uuid4().hex * 4
        msg["SubscribeURL"] = (
            f"https://sns.{region}.amazonaws.com/?Action=ConfirmSubscription"
            f"&TopicArn={topic_arn}&Token={msg['Token']}"
        )
        return self.sign(msg)

    def _base(
        self,
        kind: str,
        topic_arn: str,
        message: str | dict[str, Any],
        version: int,
        message_id: str | None,
        timestamp: Timestamp,
        region: str,
    ) -> dict[str, Any]:
        if timestamp is None:
            timestamp = datetime.now(UTC)
        return {
            "Type": kind,
            "MessageId": message_id or str(uuid.uuid4()),
            "TopicArn": topic_arn,
            "Message": message if isinstance(message, str) else json.dumps(message),
            "Timestamp": timestamp if isinstance(timestamp, str) else sns_time(timestamp),
            "SignatureVersion": str(version),
            "SigningCertURL": self.cert_url(region),
        }


def _self_signed_pem(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)
