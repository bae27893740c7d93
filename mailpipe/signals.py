"""What each signal does to the service: which end it gracefully, which are ignored.

Only SIGKILL (or a real crash: SIGSEGV, SIGBUS, ...) ends the process without
the graceful path. SIGINT, SIGTERM, SIGQUIT and SIGXCPU shut down gracefully
(exit 0, no row left processing). SIGHUP, which logrotate sends, has nothing to
reopen (logging goes to stderr). Every other signal whose default would end the
process (SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGPWR, SIGXFSZ,
SIGSTKFLT, the real-time signals) is logged and ignored.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Final

import trio

log = logging.getLogger(__name__)

SHUTDOWN_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGXCPU})
"""Signals that begin the graceful shutdown (exit 0)."""
CRASH_SIGNALS: Final = frozenset({
    signal.SIGKILL, signal.SIGSTOP, signal.SIGSEGV, signal.SIGBUS, signal.SIGILL,
    signal.SIGFPE, signal.SIGABRT, signal.SIGTRAP, signal.SIGSYS,
})  # fmt: skip
"""Left as they are: uncatchable, or a fault where a handler would only loop."""
HARMLESS_SIGNALS: Final = frozenset({
    signal.SIGCHLD, signal.SIGCONT, signal.SIGURG, signal.SIGWINCH, signal.SIGPIPE,
    signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU,
})  # fmt: skip
"""Left as they are: by default they do not end the process (SIGPIPE: Python ignores it)."""


async def watch_signals(
    request_shutdown: Callable[[], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Only SIGKILL (and a real crash) ends the process without the graceful path.

    SIGINT, SIGTERM, SIGQUIT and SIGXCPU shut down gracefully; SIGHUP (what
    logrotate sends) has nothing to reopen, logging goes to stderr; every other
    signal that would end the process (SIGUSR1, SIGUSR2, SIGALRM, real-time
    signals, ...) is logged and ignored.
    """
    with trio.open_signal_receiver(*caught_signals()) as signals:
        task_status.started()
        async for signum in signals:
            name = _signal_name(signum)
            if signum in SHUTDOWN_SIGNALS:
                log.info("received %s", name)
                request_shutdown()
            elif signum == signal.SIGHUP:
                log.info("SIGHUP: nothing to reopen (logging to stderr)")
            else:
                log.warning("received %s: ignored (SIGTERM shuts down gracefully)", name)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # a real-time signal
        return f"signal {signum}"


def caught_signals() -> frozenset[int]:
    """Every signal :func:`watch_signals` handles."""
    return frozenset(signal.valid_signals()) - CRASH_SIGNALS - HARMLESS_SIGNALS


def ignore_stray_signals() -> None:
    """Ignore the signals that would end the process and do not mean "shut down",
    outside :func:`watch_signals` too (start-up, the last writes of a shutdown)."""
    for signum in caught_signals() - SHUTDOWN_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
