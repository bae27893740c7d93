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
