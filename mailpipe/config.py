"""Settings, read once from the environment (and an optional ``.env`` file).

Every setting keeps the name the Go service used where it had one. A bad value
raises :class:`ConfigError` whose message names the variable; ``__main__`` turns
that into one log line and exit status 2.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream
from email_validator import EmailNotValidError, validate_email

from mailpipe.errors import ConfigError

T = TypeVar("T")

TRANSPORTS = ("ses", "outbox")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MIN_API_KEY_CHARS: Final = 16
"""``API_KEY`` shorter than this is refused: it guards every send."""
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def default_host(port: int) -> str:
    """``SERVER_HOST`` when unset: this machine at ``port``."""
    return f"http://localhost:{port}"


def default_max_concurrent(rate: float) -> int:
    """``MAX_CONCURRENT`` when unset: twice the rate (calls of about a second)."""
    return max(1, math.ceil(2 * rate))


def rate_source(rate: float, email_rate: float) -> str:
    """Where the send rate ``rate`` comes from, for a person: ``EMAIL_RATE``, or
    ``EMAIL_RATE`` capped at start by the SES account's MaxSendRate."""
    if rate == email_rate:
        return "EMAIL_RATE"
    return f"EMAIL_RATE={email_rate:,}, capped by SES's MaxSendRate"


_PORT = 3000
_RATE = 14.0
_DB_PATH = Path("data/app.db")


@dataclass(frozen=True)
class Config:
    """Validated settings; durations in seconds, sizes in bytes.

    The defaults here are the only ones: :func:`load_config` falls back to
    them (and derives the dependent ones with the same functions).
    """

    server_port: int = _PORT
    server_bind: str = "0.0.0.0"
    server_host: str = default_host(_PORT)
    api_key: str | None = None
    db_path: Path = _DB_PATH
    database_url: str | None = None
    """``postgresql://…``: share one PostgreSQL database with other instances."""
    lease_s: float = 10.0
    email_rate: float = _RATE
    max_concurrent: int = default_max_concurrent(_RATE)
    email_sender: str | None = None
    aws_region: str = "us-east-1"
    ses_config_set: str | None = None
    sentry_dsn: str | None = None
    env: str = "development"
    email_transport: str = "outbox"
    transport_reason: str = "default"
    outbox_dir: Path = _DB_PATH.parent / "outbox"
    graceful_timeout: float = 30.0
    max_recipients_per_request: int = 100_000
    max_body_bytes: int = 32 * 1024 * 1024
    max_attempts: int = 5
    pause_probe_s: float = 60.0
    dashboard_refresh_s: float = 5.0
    """How often a dashboard page reloads itself while its topic has pending requests."""
    sns_topic_arns: frozenset[str] = frozenset()
    sns_cert_cache_dir: Path = _DB_PATH.parent / "sns-certs"
    tracking_secret: str | None = None
    log_level: str = "INFO"
    webhook_retry_hours: float = 24.0
    """How long an event is retried, and an endpoint may fail before it is disabled."""
    webhook_backoff_s: float = 10.0
    """The first retry's delay; each next one doubles, with jitter."""
    webhook_backoff_max_s: float = 3600.0
    webhook_timeout_s: float = 10.0
    """One attempt, connect to last byte read."""
    webhook_max_concurrent: int = 8
    webhook_per_endpoint: int = 4
    """Attempts in flight to one endpoint at once."""
    webhook_max_response_bytes: int = 64 * 1024
    """Bytes of a receiver's answer read at most."""
    webhook_poll_s: float = 1.0
    """How often the outbox is looked at for due deliveries."""
    webhook_allow_private: bool = False
    """Allow webhook URLs on loopback, private and link-local addresses (tests, labs)."""
    webhook_max_endpoints: int = 100
    reputation_window_h: float = 24.0
    """Hours of the rolling window the reputation figures cover."""
    reputation_min_sends: int = 200
    """Sends a topic needs in the window before its rates can pause it."""
    account_min_sends: int = 1000
    """Sends the account needs in the window before its rates can pause all sending."""
    pause_bounce_rate: float = 0.04
    pause_complaint_rate: float = 0.0008
    reputation_check_s: float = 10.0
    """Seconds between checks of the account's figures (topics are checked on feedback)."""
    account_check_s: float = 300.0
    """Seconds between ``GetAccount`` calls that watch the SES EnforcementStatus."""
    sqs_queue_url: str | None = None
    sqs_raw_messages: bool = False
    sqs_wait_s: int = 5
    """``WaitTimeSeconds`` of each SQS long poll (bounds how long shutdown waits for it)."""
    feedback_sender_id: str | None = None
    """The last part of the ``Feedback-ID`` header; the sending domain when unset."""

    @property
    def store_address(self) -> str | Path:
        """Where the store is: ``DATABASE_URL`` when set, else the SQLite file."""
        return self.database_url or self.db_path

    @property
    def data_dir(self) -> Path:
        """The directory that holds the database and generated secrets."""
        return self.db_path.parent


def load_config(environ: Mapping[str, str] | None = None, env_file: Path | None = None) -> Config:
    """Build a :class:`Config` from ``environ`` (default ``os.environ``) over ``.env``.

    Variables already in the environment win over the file, as with docker and
    systemd. Raises :class:`ConfigError` naming the first bad variable.
    """
    env: dict[str, str] = {}
    file = env_file if env_file is not None else Path(".env")
    if file.is_file():
        env.update(_read_env_file(file))
    env.update(os.environ if environ is None else environ)
    return _from_env(env)


def _read_env_file(file: Path) -> dict[str, str]:
    """The variables of a ``.env`` file; ``ConfigError`` unless it is dotenv text."""
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{file} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file} is not UTF-8 text (bad byte at offset {exc.start})") from None
    control = _CONTROL.search(text)
    if control is not None:
        line = text.count("\n", 0, control.start()) + 1
        raise ConfigError(f"{file} is not a text file (control character on line {line})")
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise ConfigError(f"{file} line {binding.original.line} is not NAME=value")
    values = dotenv_values(stream=io.StringIO(text))
    return {k: v for k, v in values.items() if v is not None}


def _from_env(env: Mapping[str, str]) -> Config:
    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    def parse(name: str, conv: Callable[[str], T], default: T) -> T:
        raw = get(name)
        if raw is None:
            return default
        try:
            return conv(raw)
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"{name}={raw!r} is invalid: {exc}") from None

    d = Config()
    port = parse("SERVER_PORT", _int_range(0, 65535), d.server_port)
    rate = parse("EMAIL_RATE", _positive_float, d.email_rate)
    db_path = Path(get("DB_PATH") or d.db_path)
    data_dir = db_path.parent
    sender = parse("EMAIL_SENDER", _email, d.email_sender)
    transport, reason = _choose_transport(get("EMAIL_TRANSPORT"), sender, env)
    return Config(
        server_port=port,
        server_bind=get("SERVER_BIND") or d.server_bind,
        server_host=parse("SERVER_HOST", _base_url, default_host(port)),
        api_key=_api_key(get("API_KEY")),
        db_path=db_path,
        database_url=parse("DATABASE_URL", _postgres_url, d.database_url),
        lease_s=parse("LEASE_S", _float_range(2.0, 3600.0), d.lease_s),
        email_rate=rate,
        max_concurrent=parse("MAX_CONCURRENT", _int_range(1, 10_000), default_max_concurrent(rate)),
        email_sender=sender,
        aws_region=get("AWS_REGION") or get("AWS_DEFAULT_REGION") or d.aws_region,
        ses_config_set=get("SES_CONFIG_SET"),
        sentry_dsn=get("SENTRY_DSN"),
        env=get("ENV") or d.env,
        email_transport=transport,
        transport_reason=reason,
        outbox_dir=Path(get("OUTBOX_DIR") or data_dir / "outbox"),
        graceful_timeout=parse("GRACEFUL_TIMEOUT", _positive_float, d.graceful_timeout),
        max_recipients_per_request=parse(
            "MAX_RECIPIENTS_PER_REQUEST", _int_range(1, 10_000_000), d.max_recipients_per_request
        ),
        max_body_bytes=parse("MAX_BODY_BYTES", _int_range(1024, 1 << 31), d.max_body_bytes),
        max_attempts=parse("MAX_ATTEMPTS", _int_range(1, 100), d.max_attempts),
        pause_probe_s=parse("PAUSE_PROBE_S", _positive_float, d.pause_probe_s),
        dashboard_refresh_s=parse(
            "DASHBOARD_REFRESH_S", _float_range(1.0, 3600.0), d.dashboard_refresh_s
        ),
        sns_topic_arns=frozenset(
            arn.strip() for arn in (get("SNS_TOPIC_ARNS") or "").split(",") if arn.strip()
        ),
        sns_cert_cache_dir=Path(get("SNS_CERT_CACHE_DIR") or data_dir / "sns-certs"),
        tracking_secret=get("TRACKING_SECRET"),
        log_level=parse("LOG_LEVEL", _choice(LOG_LEVELS), d.log_level),
        webhook_retry_hours=parse(
            "WEBHOOK_RETRY_HOURS", _float_range(0.0001, 720.0), d.webhook_retry_hours
        ),
        webhook_backoff_s=parse("WEBHOOK_BACKOFF_S", _float_range(0.001, 86400.0),
                                d.webhook_backoff_s),
        webhook_backoff_max_s=parse("WEBHOOK_BACKOFF_MAX_S", _float_range(0.001, 86400.0),
                                    d.webhook_backoff_max_s),
        webhook_timeout_s=parse("WEBHOOK_TIMEOUT_S", _float_range(0.1, 300.0),
                                d.webhook_timeout_s),
        webhook_max_concurrent=parse("WEBHOOK_MAX_CONCURRENT", _int_range(1, 1000),
                                     d.webhook_max_concurrent),
        webhook_per_endpoint=parse("WEBHOOK_PER_ENDPOINT", _int_range(1, 1000),
                                   d.webhook_per_endpoint),
        webhook_max_response_bytes=parse("WEBHOOK_MAX_RESPONSE_BYTES", _int_range(0, 1 << 24),
                                         d.webhook_max_response_bytes),
        webhook_poll_s=parse("WEBHOOK_POLL_S", _float_range(0.01, 60.0), d.webhook_poll_s),
        webhook_allow_private=parse("WEBHOOK_ALLOW_PRIVATE", _bool, d.webhook_allow_private),
        webhook_max_endpoints=parse("WEBHOOK_MAX_ENDPOINTS", _int_range(1, 10_000),
                                    d.webhook_max_endpoints),
        reputation_window_h=parse(
            "REPUTATION_WINDOW_H", _float_range(0.01, 168.0), d.reputation_window_h
        ),
        reputation_min_sends=parse(
            "REPUTATION_MIN_SENDS", _int_range(1, 10_000_000), d.reputation_min_sends
        ),
        account_min_sends=parse(
            "ACCOUNT_MIN_SENDS", _int_range(1, 100_000_000), d.account_min_sends
        ),
        pause_bounce_rate=parse("PAUSE_BOUNCE_RATE", _float_range(1e-6, 1.0), d.pause_bounce_rate),
        pause_complaint_rate=parse(
            "PAUSE_COMPLAINT_RATE", _float_range(1e-6, 1.0), d.pause_complaint_rate
        ),
        reputation_check_s=parse(
            "REPUTATION_CHECK_S", _float_range(0.1, 3600.0), d.reputation_check_s
        ),
        account_check_s=parse("ACCOUNT_CHECK_S", _float_range(1.0, 86400.0), d.account_check_s),
        sqs_queue_url=parse("SQS_QUEUE_URL", _base_url, d.sqs_queue_url),
        sqs_raw_messages=parse("SQS_RAW_MESSAGES", _bool, d.sqs_raw_messages),
        sqs_wait_s=parse("SQS_WAIT_S", _int_range(0, 20), d.sqs_wait_s),
        feedback_sender_id=get("FEEDBACK_SENDER_ID"),
    )


def _choose_transport(
    explicit: str | None, sender: str | None, env: Mapping[str, str]
) -> tuple[str, str]:
    if explicit is not None:
        if explicit.lower() not in TRANSPORTS:
            raise ConfigError(
                f"EMAIL_TRANSPORT={explicit!r} is invalid: expected one of {', '.join(TRANSPORTS)}"
            )
        if explicit.lower() == "ses" and sender is None:
            raise ConfigError("EMAIL_SENDER is required when EMAIL_TRANSPORT=ses")
        return explicit.lower(), "EMAIL_TRANSPORT"
    if sender is None:
        return "outbox", "EMAIL_SENDER is not set"
    if not _has_aws_credentials(env):
        return "outbox", "no AWS credentials in the environment"
    return "ses", "AWS credentials and EMAIL_SENDER are set"


def _has_aws_credentials(env: Mapping[str, str]) -> bool:
    # Only credentials a person configured: probing the EC2 metadata service
    # here would stall start-up on machines without one. On EC2/ECS roles set
    # EMAIL_TRANSPORT=ses explicitly.
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if env.get("AWS_PROFILE") or env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return True
    shared = env.get("AWS_SHARED_CREDENTIALS_FILE") or str(Path.home() / ".aws" / "credentials")
    return Path(shared).is_file()


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def conv(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return conv


def _float_range(low: float, high: float) -> Callable[[str], float]:
    def conv(raw: str) -> float:
        value = float(raw)
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"must be between {low:g} and {high:g}")
        return value

    return conv


def _base_url(raw: str) -> str:
    """An absolute http(s) URL with a host, without a trailing slash."""
    try:
        parts = urlsplit(raw)
        valid = (
            parts.scheme in ("http", "https")
            and bool(parts.hostname)
            and (parts.port is None or parts.port > 0)  # .port raises for a bad one
            and not (parts.query or parts.fragment)
            and not any(c.isspace() or _CONTROL.match(c) for c in raw)
        )
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(
            "must be an absolute http:// or https:// URL with a host and no query,"
            " e.g. https://mail.example.com"
        )
    return raw.rstrip("/")


def _api_key(raw: str | None) -> str | None:
    """``API_KEY`` if long enough (unset: one is generated); never echoed in errors."""
    if raw is not None and len(raw) < MIN_API_KEY_CHARS:
        raise ConfigError(
            f"API_KEY is too short ({len(raw)} characters): use at least"
            f" {MIN_API_KEY_CHARS}, or leave it unset to have one generated"
        )
    return raw


def _postgres_url(raw: str) -> str:
    if not raw.startswith(("postgresql://", "postgres://")):
        raise ValueError("must be a postgresql:// URL (leave it unset for SQLite)")
    return raw


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive number")
    return value


def _email(raw: str) -> str:
    try:
        validate_email(raw, check_deliverability=False, allow_display_name=True)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return raw


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def conv(raw: str) -> str:
        if raw.upper() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return raw.upper()

    return conv
