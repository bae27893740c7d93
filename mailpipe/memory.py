"""Keep the resident set small on glibc: few malloc arenas, and give freed memory back.

A 100,000-recipient POST allocates tens of megabytes while it is parsed and
validated in a worker thread. glibc keeps one arena per thread and holds on to
freed pages, so without this the service's RSS ratchets up with every large
request. Both calls are no-ops where glibc is not available.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8


def _load_glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_glibc()


def limit_arenas(arenas: int = 2) -> None:
    """Let at most ``arenas`` malloc arenas serve all threads (call before threads start)."""
    if _libc is not None:
        _libc.mallopt(_M_ARENA_MAX, arenas)


def trim() -> None:
    """Return free heap pages to the operating system."""
    if _libc is not None:
        _libc.malloc_trim(0)
