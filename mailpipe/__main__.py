"""``python -m mailpipe``: load the configuration and run the service."""

from __future__ import annotations

import logging
import sys

import trio

from mailpipe.config import Config, load_config
from mailpipe.errors import ConfigError, StoreError


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
    setup_logging(config.log_level)
    init_sentry(config)
    # Threads waiting for the GIL (a call whose permit just came due) wait up
    # to the switch interval; 5 ms by default is visible as rate jitter at SES.
    sys.setswitchinterval(0.0005)
    from mailpipe.service import run_service

    try:
        trio.run(run_service, config)
    except (ConfigError, StoreError) as exc:
        logging.getLogger("mailpipe").error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
