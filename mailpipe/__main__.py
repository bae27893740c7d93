"""``python -m mailpipe``: load the configuration and run the service."""

from __future__ import annotations

import logging
import sys

import trio

from mailpipe.config import Config, load_config
from mailpipe.errors import ConfigError, LeaseLost, MailpipeError, StoreError
from mailpipe.memory import limit_arenas
from mailpipe.signals import ignore_stray_signals


def setup_logging(level: str) -> None:
    """One line per record on stderr, with time, level and module."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)


def init_sentry(config: Config) -> None:
    """Report errors to Sentry; only when ``SENTRY_DSN`` is set (it costs per call)."""
    if not config.sentry_dsn:
        return
    import sentry_sdk

    sentry_sdk.init(dsn=config.sentry_dsn, environment=config.env, traces_sample_rate=0.0)


def main() -> int:
    """Run the service; the process exit status."""
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"mailpipe: configuration error: {exc}", file=sys.stderr)
        return 2
    limit_arenas()
    setup_logging(config.log_level)
    init_sentry(config)
    # Threads waiting for the GIL (a call whose permit just came due) wait up
    # to the switch interval; 5 ms by default is visible as rate jitter at SES.
    sys.setswitchinterval(0.0005)
    from mailpipe.service import run_service

    ignore_stray_signals()  # while the service runs, watch_signals logs each one
    try:
        trio.run(run_service, config)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        known = _known_error(exc)
        if known is None:
            raise
        logging.getLogger("mailpipe").critical("%s", known)
        return 2 if isinstance(known, ConfigError) else 1
    return 0


def _known_error(exc: BaseException) -> MailpipeError | None:
    """The one expected error behind ``exc`` (possibly inside exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, ConfigError | StoreError | LeaseLost) else None


if __name__ == "__main__":
    sys.exit(main())
