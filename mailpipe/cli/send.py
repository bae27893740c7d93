"""``mailpipe send``: a recipient list in POSTs of at most ``--chunk-size``, resumable.

What it promises: every valid row of the file is stored exactly once however
often the command is interrupted and started again (within the server's 24 h
idempotency window): chunk ``n`` of a file always holds the same rows and
carries the same Idempotency-Key, so a chunk stored before is answered from the
server's record (``Idempotent-Replayed``) and stored nothing the second time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from mailpipe.cli.client import Client, CliError
from mailpipe.cli.rows import Row, chunk_key, chunks, read_rows, scan

MAX_REFUSALS_SHOWN = 20
"""Refused rows printed one by one; past that only their count."""


@dataclass(frozen=True)
class Message:
    """What every recipient of the list is sent."""

    topic: str
    subject: str
    html: str
    text: str | None
    at: str | None

    def body(self, rows: list[Row]) -> dict[str, Any]:
        """The ``POST /v1/messages`` body sending this message to ``rows``."""
        recipients = [{"email": r.email, "data": r.data} if r.data else {"email": r.email}
                      for r in rows]  # fmt: skip
        message: dict[str, Any] = {"topicId": self.topic, "recipients": recipients,
                                   "subject": self.subject, "content": self.html}  # fmt: skip
        if self.text is not None:
            message["text"] = self.text
        if self.at is not None:
            message["scheduledAt"] = self.at
        return {"messages": [message]}


@dataclass
class Totals:
    """What a run did so far."""

    read: int = 0
    accepted: int = 0
    replayed: int = 0
    refused: int = 0
    chunks: int = 0


class RateColumn(ProgressColumn):
    """Rows read per second."""

    def render(self, task: Task) -> Text:
        """The task's speed, in rows a second."""
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s", style="progress.data.speed")


def send_list(
    client: Client,
    path: Path,
    message: Message,
    *,
    email_column: str,
    chunk_size: int,
    dry_run: bool,
    console: Console,
    on_chunk: Callable[[int], None] = lambda n: None,
) -> Totals:
    """Send (or with ``dry_run`` validate) the list; raises CliError or KeyboardInterrupt
    with ``totals`` as far as they got (the caller prints how to resume)."""
    info = scan(path)
    totals = Totals()
    refusals_shown = 0
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
        TextColumn("[green]{task.fields[accepted]:,} accepted"),
        TextColumn("[red]{task.fields[refused]:,} refused"),
        RateColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    verb = "checking" if dry_run else "sending"
    with progress:
        task = progress.add_task(
            escape(f"{verb} {path.name}"),
            total=max(info.lines - info.header_lines, 1),
            accepted=0,
            refused=0,
        )
        for number, (good, bad) in enumerate(chunks(read_rows(path, email_column), chunk_size), 1):
            totals.read += len(good) + len(bad)
            totals.refused += len(bad)
            for row in bad:
                if refusals_shown < MAX_REFUSALS_SHOWN:
                    refused = escape(row.refused)
                    progress.console.print(f"[red]line {row.line}: {refused}", highlight=False)
                    refusals_shown += 1
            progress.update(task, completed=totals.read, refused=totals.refused)
            if good:
                count, replayed = _post(client, info.digest, message, good, number, dry_run)
                totals.chunks = number
                totals.accepted += count
                totals.replayed += count if replayed else 0
                progress.update(task, accepted=totals.accepted)
                how = "already stored (resumed)" if replayed else "valid" if dry_run else "stored"
                progress.console.print(
                    f"chunk {number}: {count:,} recipients {how}", highlight=False
                )
                on_chunk(number)
        progress.update(task, completed=totals.read, total=max(totals.read, 1))
    if totals.refused > refusals_shown:
        console.print(f"[red]… and {totals.refused - refusals_shown:,} more refused rows")
    return totals


def _post(
    client: Client, digest: str, message: Message, rows: list[Row], number: int, dry_run: bool
) -> tuple[int, bool]:
    """(recipients accepted, whether the server answered from an earlier run)."""
    params = {"dryRun": "true"} if dry_run else None
    headers = None if dry_run else {"Idempotency-Key": chunk_key(digest, message.topic, number)}
    try:
        answer, got = client.call(
            "POST", "/v1/messages", json=message.body(rows), params=params, headers=headers
        )
    except CliError as exc:
        if ": 413 " in str(exc):  # the server takes fewer a request: say how to comply
            raise CliError(f"{exc}; pass a smaller --chunk-size") from None
        raise
    return int(answer["count"]), got.get("Idempotent-Replayed") == "true"
