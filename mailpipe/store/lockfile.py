"""An exclusive lock on a file, holding the pid of the process that holds it."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class LockFile:
    """A held ``flock`` on a file; released by :meth:`release` or when the process dies."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def acquire(cls, path: Path) -> LockFile | None:
        """Take the lock and write this pid into the file; None when another
        process holds it (the file is then left as it was)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(fd)

    @staticmethod
    def holder(path: Path) -> int | None:
        """The pid written by the process holding the lock, if it can be read."""
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text().strip())
        return None

    def release(self) -> None:
        """Let the lock go (the file stays)."""
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
