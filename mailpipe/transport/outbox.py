"""The outbox transport: each email becomes one RFC 5322 ``.eml`` file.

Used when no AWS credentials are configured (a zero-configuration first run)
and for inspecting exactly what would be sent. Files are written to a
temporary name and renamed, so a reader never sees half a message.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

from mailpipe.content.html import html_to_text
from mailpipe.content.mime import build_message, to_bytes
from mailpipe.errors import PermanentSendError, ReleaseMissed, TransientSendError
from mailpipe.transport import AccountState, Email, Release, SendResult, hold_until


class OutboxTransport:
    """Writes ``<message id>.eml`` files into ``directory``."""

    name = "outbox"
    max_batch = 1

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def send(self, emails: Sequence[Email], release: Release | None = None) -> list[SendResult]:
        """Write one file per email."""
        try:
            hold_until(release)
        except ReleaseMissed as missed:
            return [SendResult(error=missed) for _ in emails]
        return [self._write(email) for email in emails]

    def _write(self, email: Email) -> SendResult:
        message_id = f"outbox-{email.request_id}-{uuid.uuid4().hex[:12]}"
        try:
            msg = build_message(
                sender=email.sender,
                to=email.to,
                subject=email.subject,
                html=email.html,
                text=email.text if email.text is not None else html_to_text(email.html),
                headers=email.headers,
            )
        except ValueError as exc:
            return SendResult(error=PermanentSendError("InvalidMessage", str(exc)))
        final = self.directory / f"{message_id}.eml"
        tmp = self.directory / f".{message_id}.tmp"
        try:
            tmp.write_bytes(to_bytes(msg))
            os.replace(tmp, final)
        except OSError as exc:
            return SendResult(error=TransientSendError("OutboxWriteError", str(exc)))
        return SendResult(message_id=message_id)

    def account_blocker(self) -> str | None:
        """The outbox can always write."""
        return None

    def account_state(self) -> AccountState:
        """No quota to report; this transport can always send."""
        return AccountState(sending_enabled=True)

    def close(self) -> None:
        """Nothing to release."""
