"""Configuration: defaults, .env, and one clear line with exit status 2 for bad values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailpipe.config import load_config
from mailpipe.errors import ConfigError


def test_defaults_match_the_go_service(tmp_path: Path) -> None:
    config = load_config({}, env_file=tmp_path / "none")
    assert config.server_port == 3000
    assert config.email_rate == 14
    assert config.max_concurrent == 28
    assert config.db_path == Path("data/app.db")
    assert config.graceful_timeout == 30
    assert config.max_recipients_per_request == 100_000
    assert config.max_body_bytes == 32 * 1024 * 1024
    assert config.email_transport == "outbox"
    assert config.server_host == "http://localhost:3000"


def test_env_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("EMAIL_RATE=50\nSERVER_PORT=4000\n")
    config = load_config({"SERVER_PORT": "5000"}, env_file=env_file)
    assert config.email_rate == 50
    assert config.max_concurrent == 100
    assert config.server_port == 5000


def test_ses_needs_credentials_and_sender(tmp_path: Path) -> None:
    creds = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
             "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    assert load_config(creds, env_file=tmp_path / "n").email_transport == "outbox"
    with_sender = {**creds, "EMAIL_SENDER": "me@example.com"}
    assert load_config(with_sender, env_file=tmp_path / "n").email_transport == "ses"
    with pytest.raises(ConfigError, match="EMAIL_SENDER"):
        load_config({"EMAIL_TRANSPORT": "ses"}, env_file=tmp_path / "n")


@pytest.mark.parametrize(("name", "value"), [
    ("EMAIL_RATE", "abc"), ("EMAIL_RATE", "0"), ("EMAIL_RATE", "-3"), ("EMAIL_RATE", "nan"),
    ("MAX_CONCURRENT", "0"), ("SERVER_PORT", "99999"), ("SERVER_PORT", "x"),
    ("GRACEFUL_TIMEOUT", "-1"), ("EMAIL_TRANSPORT", "smtp"), ("EMAIL_SENDER", "not-an-address"),
    ("MAX_RECIPIENTS_PER_REQUEST", "0"), ("LOG_LEVEL", "LOUD"), ("MAX_ATTEMPTS", "0"),
    ("WEBHOOK_RETRY_HOURS", "0"), ("WEBHOOK_BACKOFF_S", "-1"), ("WEBHOOK_TIMEOUT_S", "0"),
    ("WEBHOOK_MAX_CONCURRENT", "0"), ("WEBHOOK_PER_ENDPOINT", "x"),
    ("WEBHOOK_MAX_RESPONSE_BYTES", "-1"), ("WEBHOOK_POLL_S", "0"),
    ("WEBHOOK_ALLOW_PRIVATE", "maybe"), ("WEBHOOK_MAX_ENDPOINTS", "0"),
    ("WEBHOOK_BACKOFF_MAX_S", "nan"),
])
def test_bad_values_name_the_variable(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config({name: value}, env_file=tmp_path / "none")


@pytest.mark.parametrize(("name", "value"), [
    ("EMAIL_RATE", "abc"), ("MAX_CONCURRENT", "0"), ("SERVER_PORT", "99999"),
])
def test_bad_value_exits_2_with_one_line(tmp_path: Path, name: str, value: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EMAIL_", "API_"))}
    env[name] = value
    proc = subprocess.run(
        [sys.executable, "-m", "mailpipe"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert name in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing was created


@pytest.mark.parametrize(("content", "says"), [
    (b"API_KEY=\xff\xfe-not-utf8\n", "not UTF-8"),
    (bytes(range(256)) * 4, "not UTF-8"),
    (b"EMAIL_RATE=5\n\x00\x01\x02\x03binary\n", "control character on line 2"),
    (b"EMAIL_RATE=5\nthis is not a setting\n", "line 2 is not NAME=value"),
])
def test_unreadable_env_file_names_the_file(tmp_path: Path, content: bytes, says: str) -> None:
    env_file = tmp_path / ".env"
    env_file.write_bytes(content)
    with pytest.raises(ConfigError, match=says) as caught:
        load_config({}, env_file=env_file)
    assert str(env_file) in str(caught.value)


@pytest.mark.parametrize("value", [
    "mail.example.com", "localhost:3000", "/v1", "ftp://mail.example.com", "https://",
    "http://:80", "https://mail.example.com:99999", "https://mail.example.com/?a=1",
    "https://mail.example.com/#x", "https://mail example.com", "javascript:alert(1)",
])
def test_server_host_must_be_an_absolute_http_url(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"SERVER_HOST.*absolute http"):
        load_config({"SERVER_HOST": value}, env_file=tmp_path / "none")


@pytest.mark.parametrize(("value", "expected"), [
    ("https://mail.example.com/", "https://mail.example.com"),
    ("http://localhost:3000", "http://localhost:3000"),
    ("https://example.com/mail", "https://example.com/mail"),
])
def test_server_host_accepted(tmp_path: Path, value: str, expected: str) -> None:
    assert load_config({"SERVER_HOST": value}, env_file=tmp_path / "none").server_host == expected


def test_short_api_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"API_KEY.*at least 16") as caught:
        load_config({"API_KEY": "short-secret"}, env_file=tmp_path / "none")
    assert "short-secret" not in str(caught.value)
    assert load_config({"API_KEY": "x" * 16}, env_file=tmp_path / "none").api_key == "x" * 16
    assert load_config({"API_KEY": ""}, env_file=tmp_path / "none").api_key is None


@pytest.mark.parametrize(("env_file", "variable", "name"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8", None, ".env"),
    (b"", ("SERVER_HOST", "mail.example.com"), "SERVER_HOST"),
    (b"", ("API_KEY", "abc"), "API_KEY"),
])
def test_config_mistake_exits_2_with_one_line(
    tmp_path: Path, env_file: bytes, variable: tuple[str, str] | None, name: str
) -> None:
    (tmp_path / ".env").write_bytes(env_file)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "EMAIL_", "API_", "SERVER_"))}
    if variable is not None:
        env[variable[0]] = variable[1]
    proc = subprocess.run(
        [sys.executable, "-m", "mailpipe"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert name in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()


def test_webhook_settings_are_read(tmp_path: Path) -> None:
    config = load_config(
        {"WEBHOOK_RETRY_HOURS": "2", "WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_POLL_S": "0.5"},
        env_file=tmp_path / "none",
    )
    assert (config.webhook_retry_hours, config.webhook_allow_private) == (2.0, True)
    assert config.webhook_poll_s == 0.5
    assert load_config({}, env_file=tmp_path / "none").webhook_allow_private is False
