"""Timestamps as the store keeps them: UTC text of one fixed width.

Fixed width and one zone make text comparison equal time comparison, so SQL
can compare ``scheduled_at <= ?`` directly.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def to_db(moment: datetime) -> str:
    """``moment`` (aware) as stored text, e.g. ``2024-12-25 01:00:00.000000+00:00``."""
    return moment.astimezone(UTC).isoformat(" ", "microseconds")


def from_db(text: str) -> datetime:
    """Parse stored text back to an aware UTC datetime."""
    return datetime.fromisoformat(text).astimezone(UTC)


def to_json(moment: datetime) -> str:
    """``moment`` as the API shows times: RFC 3339 in UTC with a ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp with an explicit offset; ``ValueError`` otherwise."""
    if len(text) < 20 or text[10] not in "Tt ":
        raise ValueError("not an RFC 3339 timestamp")
    moment = datetime.fromisoformat(text.replace("z", "Z"))
    if moment.tzinfo is None:
        raise ValueError("RFC 3339 timestamps need an offset such as Z or +09:00")
    return moment.astimezone(UTC)
