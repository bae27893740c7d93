"""Secrets kept in small files readable only by their owner (API key, tracking key).

A missing file is created once with fresh random bytes, atomically: the secret
is written to a private temporary file and then linked to its final name, which
fails if another process got there first; in that case the other secret wins.
No reader ever sees a half-written file.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from mailpipe.errors import ConfigError

__all__ = ["load_or_create_secret_file"]

logger = logging.getLogger(__name__)

_MODE = 0o600


def load_or_create_secret_file(path: Path, nbytes: int = 32) -> str:
    """Return the secret stored in ``path``; create it first if it does not exist.

    A new secret is ``nbytes`` random bytes written as hex, in a file of mode
    0600 (parent directories are created). Surrounding whitespace is ignored
    when reading. Raises :class:`ConfigError` if the file is empty or unreadable.
    """
    if nbytes < 16:
        raise ValueError("a secret needs at least 16 random bytes")
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(nbytes)
    if _publish(path, secret):
        logger.info("created secret file %s", path)
        return secret
    return _read(path)  # another process created it first


def _read(path: Path) -> str:
    try:
        info = path.stat()
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc}") from exc
    if not text:
        raise ConfigError(f"secret file {path} is empty")
    if stat.S_IMODE(info.st_mode) & 0o077:
        logger.warning("secret file %s is readable by others; chmod 600 it", path)
    return text


def _publish(path: Path, secret: str) -> bool:
    """Write ``secret`` to ``path`` unless it exists; False if it already did."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _MODE)
    try:
        _write_synced(fd, secret)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # file system without hard links: exclusive create instead
            return _create_exclusive(path, secret)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _create_exclusive(path: Path, secret: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _MODE)
    except FileExistsError:
        return False
    _write_synced(fd, secret)
    return True


def _write_synced(fd: int, secret: str) -> None:
    """Write ``secret`` and a newline to ``fd``, on disk before this returns; closes ``fd``."""
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())


def replace_secret_file(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path`` (mode 0600), replacing what was there atomically."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _MODE)
    try:
        _write_synced(fd, secret)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
