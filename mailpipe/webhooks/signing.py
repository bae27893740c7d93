"""Webhook secrets and Standard Webhooks signatures (through ``standardwebhooks``).

A secret is ``whsec_`` and 32 random bytes in base64. The signature header
holds ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` for every secret
that signs now (two during the overlap after a rotation), space-separated.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from standardwebhooks.webhooks import Webhook

SECRET_PREFIX: Final = "whsec_"
SECRET_BYTES: Final = 32


def new_secret() -> str:
    """A fresh signing secret (``whsec_…``)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def new_endpoint_id() -> str:
    """A fresh endpoint id (``wh_`` and 96 random bits in hex)."""
    return "wh_" + secrets.token_hex(12)


def signature_header(
    secrets_: Sequence[str], event_id: str, timestamp: datetime, body: str
) -> str:
    """The ``webhook-signature`` value: one ``v1,…`` per secret, space-separated."""
    return " ".join(Webhook(s).sign(event_id, timestamp, body) for s in secrets_)


def signed_headers(
    secrets_: Sequence[str], event_id: str, timestamp: datetime, body: str
) -> dict[str, str]:
    """The headers of one attempt: id, timestamp (whole seconds) and signature."""
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature_header(secrets_, event_id, timestamp, body),
        "user-agent": "mailpipe-webhooks/1",
    }
