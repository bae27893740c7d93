"""Whether the SQLite database can take writes: a full disk, a deleted file.

A read (``SELECT 1``) still succeeds on a full disk and on a database file
that was deleted while open, so readiness cannot ask the database. Instead the
writer connection remembers its last storage failure (:class:`WriteHealth`),
and every write first checks that the path still names the file that was
opened (:class:`FileIdentity`): writes into an unlinked file would be answered
"stored" and lost at the next start.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from pathlib import Path
from typing import Final

from mailpipe.errors import StoreError

log = logging.getLogger(__name__)

STORAGE_FAULTS: Final = frozenset(
    {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PERM,
    }
)
"""Primary result codes that are a fault of the disk or the file, not of the
statement: they last until someone frees space or restores the directory."""
FREE_BYTES_RECOVERED: Final = 4 * 1024 * 1024
"""After "disk full", writes count as healthy again only with this much free
space. On a full disk small writes still fit in the WAL's slack (pages a failed
large commit had appended) and would clear the failure while every POST of a
few kilobytes fails; 4 MiB is room for a large request and its checkpoint."""


def storage_fault(exc: BaseException) -> bool:
    """True when ``exc`` is the disk or the file failing (full, I/O, read-only, gone)."""
    if isinstance(exc, OSError):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    # Extended codes (SQLITE_IOERR_WRITE, SQLITE_READONLY_DBMOVED...) share the low byte.
    return isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF in STORAGE_FAULTS


class WriteHealth:
    """The last storage failure of the writer, until a write succeeds again
    (after a full disk: and ``FREE_BYTES_RECOVERED`` are free in ``directory``)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self.failure: str | None = None
        self._full = False
        self.failures = 0
        """How many storage failures so far (a write that failed during a call
        must not count as that call's success)."""

    def failed(self, exc: BaseException) -> None:
        """Remember ``exc`` if it is a storage fault (see :func:`storage_fault`)."""
        if not storage_fault(exc):
            return
        if self.failure is None:
            log.error("database writes are failing: %s", exc)
        self.failure = str(exc)
        self.failures += 1
        self._full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or (
            isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        )

    def succeeded(self) -> None:
        """A write was committed: the storage takes writes again, unless the disk
        was full and still has less than ``FREE_BYTES_RECOVERED`` free."""
        if self.failure is None or (self._full and self._free() < FREE_BYTES_RECOVERED):
            return
        log.warning("database writes succeed again (after: %s)", self.failure)
        self.failure = None
        self._full = False

    def _free(self) -> int:
        """Bytes free to this process in ``directory`` (unknown: as if plenty)."""
        if self.directory is None:
            return FREE_BYTES_RECOVERED
        try:
            info = os.statvfs(self.directory)
        except OSError:
            return 0
        return info.f_bavail * info.f_frsize

    def check(self) -> None:
        """Raise :class:`StoreError` naming the last failure, if writes are failing."""
        if self.failure is not None:
            raise StoreError(f"database writes are failing: {self.failure}")


class FileIdentity:
    """The database file as opened (device and inode), to notice it being deleted
    or replaced while the service runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        info = os.stat(path)
        self._opened = (info.st_dev, info.st_ino)

    def check(self) -> None:
        """Raise :class:`StoreError` unless ``path`` still names the opened file.

        One ``stat`` call (about a microsecond): cheap enough before every write.
        """
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            raise StoreError(
                f"database file {self.path} was deleted while running: writes are refused"
                " (they would be lost); restore the data directory and restart"
            ) from None
        except OSError as exc:
            raise StoreError(f"database file {self.path} cannot be reached: {exc}") from exc
        if (info.st_dev, info.st_ino) != self._opened:
            raise StoreError(
                f"database file {self.path} was replaced while running: writes are refused;"
                " restart to open the new file"
            )
