"""Builds the configured transport and learns the rate it may send at."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from mailpipe.config import Config
from mailpipe.transport import Transport
from mailpipe.transport.outbox import OutboxTransport

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_transport(config: Config) -> AsyncIterator[tuple[Transport, float]]:
    """The transport for ``config`` and the send rate to use (``EMAIL_RATE``, capped by SES)."""
    transport: Transport
    rate = config.email_rate
    if config.email_transport == "outbox":
        transport = OutboxTransport(config.outbox_dir)
        log.info(
            "transport: outbox (%s): each message is written as an .eml file under %s",
            config.transport_reason,
            config.outbox_dir.resolve(),
        )
    else:
        from mailpipe.transport.ses import SesTransport, make_client

        client = await trio.to_thread.run_sync(
            make_client, config.aws_region, config.max_concurrent
        )
        transport = SesTransport(client, config_set=config.ses_config_set)
        await trio.to_thread.run_sync(transport.warm_up, config.email_sender or "warm-up@localhost")
        log.info(
            "transport: ses (%s), region %s, sender %s",
            config.transport_reason,
            config.aws_region,
            config.email_sender,
        )
        rate = await _capped_rate(transport, rate)
    try:
        yield transport, rate
    finally:
        transport.close()


async def _capped_rate(transport: Transport, rate: float) -> float:
    from mailpipe.transport.ses import SesTransport

    assert isinstance(transport, SesTransport)
    try:
        account = await trio.to_thread.run_sync(transport.get_account)
    except Exception as exc:  # the account may forbid GetAccount; sending may still work
        log.warning("could not read the SES sending quota (GetAccount): %s", exc)
        return rate
    quota = account.get("SendQuota", {})
    max_rate = float(quota.get("MaxSendRate", 0) or 0)
    if max_rate and rate > max_rate:
        log.warning(
            "EMAIL_RATE=%g is above the SES account's MaxSendRate %g; sending at %g/s",
            rate,
            max_rate,
            max_rate,
        )
        return max_rate
    if not account.get("SendingEnabled", True):
        log.warning("the SES account reports SendingEnabled=false")
    return rate
