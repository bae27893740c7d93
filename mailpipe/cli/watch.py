"""``mailpipe status``: a topic's counts, once or followed to the end."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from mailpipe.cli.client import Client

RESULTS: Final = (("delivered", "Delivery"), ("bounced", "Bounce"), ("complained", "Complaint"),
                  ("opened", "Open"), ("clicked", "Click"))  # fmt: skip
"""The outcome counts shown, and the SES event type each one counts."""


def figures(stats: dict[str, Any]) -> dict[str, int]:
    """The figures a topic's ``GET /v1/topics/{id}`` answer shows, by name."""
    request = stats["request"]
    results = stats["result"]["statuses"]
    out = {name: int(request.get(name, 0)) for name in ("sent", "failed", "stopped")}
    out["pending"] = int(request.get("created", 0)) + int(request.get("processing", 0))
    out["total"] = int(request.get("total", 0))
    out.update({name: int(results.get(kind, 0)) for name, kind in RESULTS})
    return out


def line(f: dict[str, int], rate: float | None) -> str:
    """One line of every figure (and the send rate, when known)."""
    parts = [f"{name} {f[name]:,}" for name in ("sent", "failed", "stopped", "pending")]
    parts += [f"{name} {f[name]:,}" for name, _ in RESULTS]
    if rate is not None:
        parts.append(f"{rate:,.1f}/s")
    return " · ".join(parts)


def watch(
    client: Client,
    topic: str,
    console: Console,
    interval: float,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, int]:
    """Follow ``topic`` until nothing is pending; its last figures."""
    path = f"/v1/topics/{topic}"
    progress = Progress(
        TextColumn(f"[bold]{escape(topic)}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} done"),
        TimeRemainingColumn(),
    )
    detail = Text()
    last = figures(client.get(path))
    last_at = time.monotonic()
    rate: float | None = None
    with Live(Group(progress, detail), console=console, refresh_per_second=4):
        task = progress.add_task("", total=max(last["total"], 1))
        while True:
            done = last["total"] - last["pending"]
            progress.update(task, completed=done, total=max(last["total"], 1))
            detail.plain = line(last, rate)
            if last["pending"] == 0 and last["total"] > 0:
                break
            sleep(interval)
            now_f = figures(client.get(path))
            now = time.monotonic()
            rate = (now_f["sent"] - last["sent"]) / max(now - last_at, 1e-6)
            last, last_at = now_f, now
    console.print(f"{topic}: done · {line(last, None)}", highlight=False)
    return last
