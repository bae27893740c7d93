"""Running the ``mailpipe`` command line as a real process against a real service."""

from __future__ import annotations

import csv
import gzip
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import API_KEY

CLI = [sys.executable, "-m", "mailpipe.cli"]


def cli_env(url: str, **extra: str) -> dict[str, str]:
    """The environment of a CLI process talking to ``url`` with the test key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPIPE_")}
    env.update({"MAILPIPE_URL": url, "MAILPIPE_API_KEY": API_KEY, "COLUMNS": "120"})
    env.update(extra)
    return env


def run_cli(url: str, *args: str, cwd: Path, timeout: float = 120, **extra: str) -> Any:
    """Run ``mailpipe ARGS`` to its end; the CompletedProcess (text output)."""
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=cli_env(url, **extra), capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def write_list(path: Path, rows: int, start: int = 0) -> Path:
    """A recipient list of ``rows`` distinct addresses with a ``name`` column (.csv or .csv.gz)."""
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "name", "plan"])
        for i in range(start, start + rows):
            writer.writerow([f"user{i}@example.com", f"User {i}", "pro" if i % 3 else "free"])
    return path


def write_message(folder: Path) -> list[str]:
    """The ``send`` options of a small templated message written under ``folder``."""
    html = folder / "body.html"
    html.write_text("<p>Hello {{name}}, your plan is {{plan}}.</p>")
    return ["--subject", "Hello {{name}}", "--html", str(html)]
