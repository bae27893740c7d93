"""The pause probe: while sending is paused, ask the provider whether it may send again."""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from mailpipe.pipeline.pause import ACCOUNT, PauseGate
from mailpipe.transport import Transport

log = logging.getLogger(__name__)


async def run_pause_probe(
    gate: PauseGate,
    transport: Transport,
    interval: float,
    on_resume: Callable[[], None] = lambda: None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every ``interval`` seconds while ``gate`` is paused, probe the account; resume when able."""
    task_status.started()
    while True:
        await gate.wait_paused()
        await trio.sleep(interval)
        if not gate.paused_for(ACCOUNT):
            continue  # held for another cause (the database), not the account
        blocker = await trio.to_thread.run_sync(transport.account_blocker)
        if blocker is None:
            gate.resume()
            on_resume()
        else:
            log.warning("still paused: %s (next check in %gs)", blocker, interval)
