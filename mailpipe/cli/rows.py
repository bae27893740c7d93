"""Reading a recipient list: ``.csv``, ``.csv.gz`` or ``.jsonl``, streamed.

What it promises: :func:`read_rows` yields every data row of the file once, in
file order, with its line number, as an address and its template data (the
other columns), or as a refusal naming why; the same file always gives the same
rows, so :func:`chunks` cuts it the same way on every run and each chunk's
Idempotency-Key (:func:`chunk_key`) names the same recipients.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from mailpipe.addresses import AddressValidator
from mailpipe.errors import InvalidAddress

READ_BLOCK: Final = 1 << 20
KEY_PREFIX: Final = "mailpipe-cli"


class ListError(Exception):
    """The file cannot be read as a recipient list at all (nothing was sent)."""


@dataclass(frozen=True)
class Row:
    """One data row: ``email`` with ``data``, or ``refused`` with the reason."""

    line: int
    email: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    refused: str = ""


@dataclass(frozen=True)
class ListInfo:
    """What one pass over the file learned: its content digest and its line count."""

    digest: str
    lines: int
    header_lines: int
    """1 for a CSV file (its header), 0 for JSON lines."""


def kind_of(path: Path) -> str:
    """``csv`` or ``jsonl`` (``.csv.gz`` is ``csv``); :class:`ListError` otherwise."""
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return "jsonl"
    raise ListError(f"{path}: not a .csv, .csv.gz or .jsonl file")


def _open_text(path: Path) -> IO[str]:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def scan(path: Path) -> ListInfo:
    """The SHA-256 of the file's bytes and how many lines its text has."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as raw:
            while block := raw.read(READ_BLOCK):
                digest.update(block)
        lines = 0
        with _open_text(path) as text:
            while block_text := text.read(READ_BLOCK):
                lines += block_text.count("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ListError(f"{path}: {exc}") from None
    return ListInfo(digest.hexdigest(), lines, 1 if kind_of(path) == "csv" else 0)


def read_rows(path: Path, email_column: str) -> Iterator[Row]:
    """Every data row of ``path`` in order; a duplicate address (compared normalised)
    or an invalid one is a refused row; a missing email column is a :class:`ListError`."""
    validator = AddressValidator()
    seen: dict[str, int] = {}
    source = _csv_rows if kind_of(path) == "csv" else _jsonl_rows
    try:
        with _open_text(path) as text:
            for line, email, data, problem in source(text, email_column, path):
                if problem:
                    yield Row(line, refused=problem)
                    continue
                try:
                    normal = validator.normalize(email)
                except InvalidAddress as exc:
                    why = " ".join(str(exc).split())
                    yield Row(line, refused=why)
                    continue
                first = seen.setdefault(normal.lower(), line)
                if first != line:
                    yield Row(line, refused=f"{email[:80]!r} is a duplicate of line {first}")
                    continue
                yield Row(line, normal, data)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise ListError(f"{path}: {exc}") from None


Parsed = tuple[int, str, dict[str, Any], str]


def _csv_rows(text: IO[str], email_column: str, path: Path) -> Iterator[Parsed]:
    reader = csv.reader(text)
    header = next(reader, None)
    if header is None:
        raise ListError(f"{path}: empty file (a header line naming {email_column!r} is needed)")
    names = [name.strip() for name in header]
    if email_column not in names:
        raise ListError(f"{path}: no {email_column!r} column in the header {names[:10]}")
    at = names.index(email_column)
    others = [(i, name) for i, name in enumerate(names) if i != at and name]
    for values in reader:
        line = reader.line_num
        if not values or values == [""]:
            continue
        if len(values) != len(names):
            yield line, "", {}, f"{len(values)} fields where the header has {len(names)}"
            continue
        yield line, values[at].strip(), {name: values[i] for i, name in others}, ""


def _jsonl_rows(text: IO[str], email_column: str, path: Path) -> Iterator[Parsed]:
    for line, raw in enumerate(text, start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except ValueError as exc:
            yield line, "", {}, f"not JSON: {exc}"
            continue
        if not isinstance(value, dict) or not isinstance(value.get(email_column), str):
            yield line, "", {}, f"not an object with a string {email_column!r}"
            continue
        email = value.pop(email_column).strip()
        if set(value) == {"data"} and isinstance(value["data"], dict):
            value = value["data"]  # {"email": ..., "data": {...}} as the API takes it
        yield line, email, value, ""


def chunks(rows: Iterator[Row], size: int) -> Iterator[tuple[list[Row], list[Row]]]:
    """(accepted rows, refused rows) in groups of at most ``size`` accepted rows; the
    refused rows met since the previous group come with the group that follows them."""
    good: list[Row] = []
    bad: list[Row] = []
    for row in rows:
        (bad if row.refused else good).append(row)
        if len(good) == size:
            yield good, bad
            good, bad = [], []
    if good or bad:
        yield good, bad


def chunk_key(digest: str, topic: str, number: int) -> str:
    """The Idempotency-Key of chunk ``number`` (from 1) of the file with ``digest`` sent
    to ``topic``: the same on every run, different for any other file, topic or chunk."""
    mixed = hashlib.sha256(f"{digest}\n{topic}\n{number}".encode()).hexdigest()[:40]
    return f"{KEY_PREFIX}-{mixed}-{number}"
