"""Request status codes (the Go service's numbers); how a request moves between them:

CREATED ──claim──► PROCESSING ──► SENT
   ▲  │                │  └─────► FAILED
   │  │                └─requeue─► CREATED (shutdown, crash, retry later)
   │  └──stop──► STOPPED ◄──stop── PROCESSING (not yet handed to SES)
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    """Status of one ``email_requests`` row."""

    CREATED = 0
    PROCESSING = 1
    SENT = 2
    FAILED = 3
    STOPPED = 4


STAT_NAMES: dict[Status, str] = {
    Status.CREATED: "created",
    Status.PROCESSING: "processing",
    Status.SENT: "sent",
    Status.FAILED: "failed",
    Status.STOPPED: "stopped",
}
