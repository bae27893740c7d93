"""The ``mailpipe`` command line: run the service, send lists, follow and stop topics,
manage suppressions. Every failure is one line on stderr and a non-zero exit."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mailpipe.cli.client import DEFAULT_URL, Client, CliError, resolve_target
from mailpipe.cli.rows import ListError, read_rows
from mailpipe.cli.send import Message, Totals, send_list
from mailpipe.cli.watch import figures, line, watch
from mailpipe.config import Config, rate_source

DEFAULT_CHUNK: Final = Config().max_recipients_per_request
"""The server's default ``MAX_RECIPIENTS_PER_REQUEST``; a server set lower needs
``--chunk-size`` (its 413 says so)."""
INTERRUPTED: Final = 130

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> None:
    """Print ``message`` as one line on stderr and exit with ``code``."""
    err.print(f"[red]mailpipe: {escape(message)}", soft_wrap=True)
    sys.exit(code)


@contextmanager
def connected(ctx: click.Context) -> Iterator[Client]:
    """A client for the service the options name; a CliError ends the command."""
    try:
        client = Client(resolve_target(ctx.obj["url"], ctx.obj["key"]))
    except CliError as exc:
        fail(str(exc))
        raise  # unreachable: fail exits
    try:
        yield client
    except CliError as exc:
        fail(str(exc))
    finally:
        client.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", help=f"The service's URL (default MAILPIPE_URL, else {DEFAULT_URL}).")
@click.option("--key", help="The API key (default MAILPIPE_API_KEY, else ./data/api_key).")
@click.pass_context
def cli(ctx: click.Context, url: str | None, key: str | None) -> None:
    """mailpipe: bulk email on Amazon SES."""
    ctx.obj = {"url": url, "key": key}


@cli.command()
def serve() -> None:
    """Run the service (the same as ``python -m mailpipe``)."""
    from mailpipe.__main__ import main as service_main

    sys.exit(service_main())


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--topic", required=True, help="The topic id the recipients are sent under.")
@click.option("--subject", required=True, help="The subject (a template).")
@click.option("--html", "html_file", required=True, type=click.File(encoding="utf-8"),
              help="A file holding the HTML body (a template).")  # fmt: skip
@click.option("--text", "text_file", type=click.File(encoding="utf-8"),
              help="A file holding the plain-text body (a template).")  # fmt: skip
@click.option("--at", help="Send at this RFC 3339 time instead of now.")
@click.option("--email-column", default="email", show_default=True)
@click.option("--chunk-size", default=DEFAULT_CHUNK, show_default=True,
              envvar="MAILPIPE_CHUNK_SIZE", type=click.IntRange(1),
              help="Recipients per POST (the server's MAX_RECIPIENTS_PER_REQUEST).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Validate every row on the server; store nothing.")
@click.pass_context
def send(ctx: click.Context, path: Path, topic: str, subject: str, html_file: Any,
         text_file: Any, at: str | None, email_column: str, chunk_size: int,
         dry_run: bool) -> None:  # fmt: skip
    """Send PATH (.csv, .csv.gz or .jsonl): one recipient a row, the other columns their
    template data. Interrupted, the same command resumes: nothing is skipped or doubled."""
    message = Message(topic, subject, html_file.read(), text_file.read() if text_file else None, at)
    totals = Totals()
    with connected(ctx) as client:
        try:
            totals = send_list(client, path, message, email_column=email_column,
                               chunk_size=chunk_size, dry_run=dry_run, console=out)  # fmt: skip
        except ListError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            err.print(
                "mailpipe: interrupted; run the same command again to resume (stored chunks"
                " are recognised by their Idempotency-Key: nothing is skipped or sent twice)",
                soft_wrap=True,
            )
            sys.exit(INTERRUPTED)
    verb = "would be sent" if dry_run else "accepted"
    out.print(f"{totals.read:,} rows read, {totals.accepted:,} recipients {verb}"
              f" ({totals.replayed:,} from an earlier run), {totals.refused:,} refused",
              soft_wrap=True)  # fmt: skip
    if dry_run:
        out.print("dry run: nothing was stored")
    if totals.refused:
        sys.exit(1)


@cli.command()
@click.argument("topic")
@click.option("--watch", "follow", is_flag=True, help="Follow the topic until nothing is pending.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.05))
@click.pass_context
def status(ctx: click.Context, topic: str, follow: bool, interval: float) -> None:
    """Show TOPIC's counts (sent, failed, stopped, pending and its outcomes)."""
    with connected(ctx) as client:
        if not follow:
            shown = line(figures(client.get(f"/v1/topics/{topic}")), None)
            out.print(Text(f"{topic}: {shown}"))
            return
        try:
            watch(client, topic, out, interval)
        except KeyboardInterrupt:
            err.print("mailpipe: stopped watching (the send goes on)")
            sys.exit(INTERRUPTED)


@cli.command()
@click.argument("topic")
@click.pass_context
def stop(ctx: click.Context, topic: str) -> None:
    """Stop every request of TOPIC not yet handed to SES."""
    with connected(ctx) as client:
        answer, _ = client.call("DELETE", f"/v1/topics/{topic}")
        out.print(Text(f"{topic}: {answer['stopped']:,} requests stopped"))


@cli.command()
@click.pass_context
def account(ctx: click.Context) -> None:
    """Show the account: rate, SES quota and standing, paused state (GET /v1/account)."""
    with connected(ctx) as client:
        answer = client.get("/v1/account")
    table = Table(show_header=False, box=None)
    for name, value in account_lines(answer):
        table.add_row(name, Text(value))
    out.print(table)


def account_lines(answer: dict[str, Any]) -> list[tuple[str, str]]:
    """``GET /v1/account``'s answer as (name, value) lines a person reads."""
    quota, paused, rep = answer.get("quota"), answer.get("paused"), answer["reputation"]
    rate = answer["rate"]
    lines = [("rate", f"{rate:,}/s ({rate_source(rate, answer.get('emailRate', rate))})")]
    if quota:
        lines.append(("SES quota", f"{quota['sentLast24Hours'] or 0:,.0f} of "
                      f"{quota['max24HourSend'] or 0:,.0f} sent in 24 h, "
                      f"max {quota['maxSendRate']}/s"))  # fmt: skip
    enabled = answer.get("sendingEnabled")
    lines.append(("SES standing", f"{answer.get('enforcementStatus') or 'unknown'}, sending "
                  + {True: "enabled", False: "DISABLED", None: "unknown"}[enabled]))
    if answer.get("error"):
        lines.append(("GetAccount", f"no answer: {answer['error']}"))
    rates = (f"bounce rate {100 * rep['bounceRate']:.2f}%,"
             f" complaint rate {100 * rep['complaintRate']:.3f}%")
    lines.append(("reputation", f"{rep['sends']:,} sends in {rep['windowHours']:g} h, {rates}"))
    lines.append(("paused", f"YES ({paused['by']}, {paused['at']}): {paused['reason']}"
                  if paused else "no"))  # fmt: skip
    return lines


@cli.group()
def suppressions() -> None:
    """List, add, remove, import and export suppressed addresses."""


def _pages(client: Client) -> Iterator[dict[str, Any]]:
    cursor: str | None = None
    while True:
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/suppressions", params)
        yield from page["suppressions"]
        cursor = page["nextCursor"]
        if not cursor:
            return


@suppressions.command("list")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.pass_context
def suppressions_list(ctx: click.Context, limit: int) -> None:
    """The newest suppressions."""
    with connected(ctx) as client:
        page = client.get("/v1/suppressions", {"limit": str(limit)})["suppressions"]
        table = Table("email", "reason", "source", "since")
        for s in page:
            table.add_row(*(Text(v) for v in (s["email"], s["reason"], s["source"] or "",
                                             s["createdAt"])))
        out.print(table)


@suppressions.command("add")
@click.argument("emails", nargs=-1, required=True)
@click.option("--reason", default="manual", show_default=True)
@click.pass_context
def suppressions_add(ctx: click.Context, emails: tuple[str, ...], reason: str) -> None:
    """Suppress EMAILS (later sends skip them)."""
    with connected(ctx) as client:
        answer, _ = client.call("POST", "/v1/suppressions",
                                json={"emails": list(emails), "reason": reason})  # fmt: skip
        added = int(answer["added"])
        out.print(f"{added:,} added, {len(emails) - added:,} already suppressed")


@suppressions.command("remove")
@click.argument("emails", nargs=-1, required=True)
@click.pass_context
def suppressions_remove(ctx: click.Context, emails: tuple[str, ...]) -> None:
    """Lift the suppression of EMAILS."""
    with connected(ctx) as client:
        for email in emails:
            client.call("DELETE", f"/v1/suppressions/{email}")
            out.print(Text(f"{email}: removed"))


IMPORT_BATCH: Final = 1000


@suppressions.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--reason", default="manual", show_default=True)
@click.option("--email-column", default="email", show_default=True)
@click.pass_context
def suppressions_import(ctx: click.Context, path: Path, reason: str, email_column: str) -> None:
    """Suppress every address of a .csv/.csv.gz/.jsonl file."""
    added = total = 0
    with connected(ctx) as client:
        try:
            batch: list[str] = []
            for row in read_rows(path, email_column):
                if row.refused:
                    err.print(f"line {row.line}: {row.refused}", soft_wrap=True)
                    continue
                batch.append(row.email)
                if len(batch) == IMPORT_BATCH:
                    added += _add(client, batch, reason)
                    total, batch = total + len(batch), []
            if batch:
                added += _add(client, batch, reason)
                total += len(batch)
        except ListError as exc:
            fail(str(exc))
    out.print(f"{total:,} addresses read, {added:,} newly suppressed")


def _add(client: Client, emails: list[str], reason: str) -> int:
    answer, _ = client.call("POST", "/v1/suppressions", json={"emails": emails, "reason": reason})
    return int(answer["added"])


@suppressions.command("export")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.pass_context
def suppressions_export(ctx: click.Context, path: Path | None) -> None:
    """Every suppression as CSV (to PATH, or stdout)."""
    with connected(ctx) as client:
        sink = path.open("w", newline="") if path else sys.stdout
        try:
            writer = csv.writer(sink)
            writer.writerow(["email", "reason", "source", "createdAt"])
            for s in _pages(client):
                writer.writerow([s["email"], s["reason"], s["source"] or "", s["createdAt"]])
        finally:
            if path:
                sink.close()


def main() -> None:
    """The console script's entry point."""
    cli()
