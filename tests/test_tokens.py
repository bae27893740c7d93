"""Signed open, click and unsubscribe links; the secret file."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailpipe.content.tokens import TOKEN_LENGTH, Tokens, load_or_create_secret
from mailpipe.errors import ConfigError
from mailpipe.secrets_file import load_or_create_secret_file

BASE = "https://mail.example.com"
TOKENS = Tokens(b"k" * 32)
OTHER = Tokens(b"o" * 32)

ids = st.integers(min_value=0, max_value=2**63 - 1)
emails = st.emails()
web_urls = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}/{path}",
    st.sampled_from(["http", "https", "HTTPS"]),
    st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z]{2,6}){1,2}", fullmatch=True),
    st.text(max_size=60),
)


def query(url: str) -> dict[str, str]:
    """The decoded query of ``url``, as the HTTP layer would see it."""
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def flip(token: str) -> str:
    """``token`` with its last character changed."""
    return token[:-1] + ("A" if token[-1] != "A" else "B")


# -- shape ------------------------------------------------------------------


def test_open_url_shape() -> None:
    url = TOKENS.open_url(BASE + "/", 42)
    assert url.startswith(f"{BASE}/v1/events/open?requestId=42&t=")
    q = query(url)
    assert len(q["t"]) == TOKEN_LENGTH
    assert set(q["t"]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_click_url_percent_encodes_target() -> None:
    target = "https://shop.example/a b?x=1&y=ü#frag"
    url = TOKENS.click_url(BASE, 7, target)
    assert url.startswith(f"{BASE}/v1/events/click?requestId=7&url=https%3A%2F%2Fshop.example")
    assert " " not in url
    assert "ü" not in url
    assert query(url)["url"] == target


def test_unsubscribe_url_does_not_reveal_the_address() -> None:
    url = TOKENS.unsubscribe_url(BASE, 9, "alice@example.com")
    assert url.startswith(f"{BASE}/v1/unsubscribe?requestId=9&t=")
    assert "alice" not in url


def test_tokens_differ_per_kind_and_secret() -> None:
    t_open = query(TOKENS.open_url(BASE, 1))["t"]
    t_unsub = query(TOKENS.unsubscribe_url(BASE, 1, "a@b.c"))["t"]
    assert t_open != t_unsub
    assert t_open != query(OTHER.open_url(BASE, 1))["t"]


def test_short_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="TRACKING_SECRET"):
        Tokens(b"short")


@pytest.mark.parametrize("bad", [-1, True, 1.5])
def test_invalid_request_id_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="request id"):
        TOKENS.open_url(BASE, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("target", ["mailto:a@b.c", "javascript:alert(1)", "/relative", "http:x"])
def test_click_url_refuses_non_web_targets(target: str) -> None:
    with pytest.raises(ValueError, match="http"):
        TOKENS.click_url(BASE, 1, target)


# -- open -------------------------------------------------------------------


def test_open_round_trip() -> None:
    q = query(TOKENS.open_url(BASE, 123))
    assert TOKENS.check_open(q["requestId"], q["t"]) == 123


GOOD = "<the valid token for request 123>"


@pytest.mark.parametrize(
    ("rid", "token"),
    [
        ("124", GOOD),  # another request id
        (None, GOOD),  # missing request id
        ("123", None),  # missing token
        ("", ""),
        ("0123", GOOD),  # non-canonical form of the same id
        ("+123", GOOD),
        (" 123", GOOD),
        ("-123", GOOD),
        ("١٢٣", GOOD),  # non-ASCII digits
        ("9" * 40, GOOD),
        ("123", "é" * TOKEN_LENGTH),
    ],
)
def test_open_rejects(rid: str | None, token: str | None) -> None:
    if token == GOOD:
        token = query(TOKENS.open_url(BASE, 123))["t"]
    assert TOKENS.check_open(rid, token) is None


def test_open_rejects_tampered_tokens() -> None:
    good = query(TOKENS.open_url(BASE, 5))["t"]
    for token in (flip(good), good[:-1], good + "A", good.upper(), "", " " * TOKEN_LENGTH):
        assert TOKENS.check_open("5", token) is None
    assert OTHER.check_open("5", good) is None


# -- click ------------------------------------------------------------------


def test_click_round_trip() -> None:
    target = "https://example.com/p?a=1&b=2"
    q = query(TOKENS.click_url(BASE, 3, target))
    assert TOKENS.check_click(q["requestId"], q["url"], q["t"]) == (3, target)


def test_click_rejects_tampering() -> None:
    target = "https://example.com/p"
    q = query(TOKENS.click_url(BASE, 3, target))
    t = q["t"]
    assert TOKENS.check_click("4", target, t) is None
    assert TOKENS.check_click("3", "https://evil.example/p", t) is None
    assert TOKENS.check_click("3", target + "/", t) is None
    assert TOKENS.check_click("3", target, flip(t)) is None
    assert TOKENS.check_click("3", target, t[:16]) is None
    assert TOKENS.check_click("3", None, t) is None
    assert TOKENS.check_click(None, target, t) is None
    assert TOKENS.check_click("3", target, None) is None


def test_click_refuses_token_of_another_kind() -> None:
    open_token = query(TOKENS.open_url(BASE, 3))["t"]
    assert TOKENS.check_click("3", "https://example.com/", open_token) is None
    click_token = query(TOKENS.click_url(BASE, 3, "https://example.com/"))["t"]
    assert TOKENS.check_open("3", click_token) is None
    assert TOKENS.check_unsubscribe("3", click_token, "a@b.c") is None


def test_click_never_validates_a_non_web_url() -> None:
    # Even a correctly signed value could not redirect to javascript: (not signable anyway).
    assert TOKENS.check_click("3", "javascript:alert(1)", "A" * TOKEN_LENGTH) is None


# -- unsubscribe ------------------------------------------------------------


def test_unsubscribe_round_trip_ignores_case_and_spaces() -> None:
    q = query(TOKENS.unsubscribe_url(BASE, 11, "Alice@Example.com"))
    assert TOKENS.check_unsubscribe(q["requestId"], q["t"], "alice@example.com ") == 11


def test_unsubscribe_rejects_tampering() -> None:
    t = query(TOKENS.unsubscribe_url(BASE, 11, "alice@example.com"))["t"]
    assert TOKENS.check_unsubscribe("11", t, "bob@example.com") is None
    assert TOKENS.check_unsubscribe("12", t, "alice@example.com") is None
    assert TOKENS.check_unsubscribe("11", t, None) is None
    assert TOKENS.check_unsubscribe("11", None, "alice@example.com") is None
    assert TOKENS.check_unsubscribe("11", flip(t), "alice@example.com") is None
    open_token = query(TOKENS.open_url(BASE, 11))["t"]
    assert TOKENS.check_unsubscribe("11", open_token, "alice@example.com") is None


# -- properties -------------------------------------------------------------


@given(rid=ids)
def test_open_round_trips(rid: int) -> None:
    q = query(TOKENS.open_url(BASE, rid))
    assert TOKENS.check_open(q["requestId"], q["t"]) == rid
    assert TOKENS.check_open(str(rid + 1), q["t"]) is None


@given(rid=ids, target=web_urls)
def test_click_round_trips(rid: int, target: str) -> None:
    q = query(TOKENS.click_url(BASE, rid, target))
    assert q["url"] == target
    assert TOKENS.check_click(q["requestId"], q["url"], q["t"]) == (rid, target)


@given(rid=ids, email=emails, other=emails)
def test_unsubscribe_round_trips(rid: int, email: str, other: str) -> None:
    q = query(TOKENS.unsubscribe_url(BASE, rid, email))
    assert TOKENS.check_unsubscribe(q["requestId"], q["t"], email) == rid
    if other.lower() != email.lower():
        assert TOKENS.check_unsubscribe(q["requestId"], q["t"], other) is None


@given(rid=st.one_of(st.none(), st.text()), url=st.one_of(st.none(), st.text()), token=st.text())
def test_garbage_never_raises_or_validates(rid: str | None, url: str | None, token: str) -> None:
    assert TOKENS.check_open(rid, token) is None
    assert TOKENS.check_click(rid, url, token) is None
    assert TOKENS.check_unsubscribe(rid, token, url) is None


# -- secret files -----------------------------------------------------------


def test_secret_file_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "tracking_secret"
    key = load_or_create_secret(path)
    assert len(key) == 64
    assert bytes.fromhex(key.decode())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["tracking_secret"]  # no temp left


def test_secret_file_reads_existing_content(tmp_path: Path) -> None:
    path = tmp_path / "api_key"
    path.write_text("  my-key \n")
    os.chmod(path, 0o600)
    assert load_or_create_secret_file(path, 16) == "my-key"


def test_empty_secret_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "api_key"
    path.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        load_or_create_secret_file(path)


def test_concurrent_creators_agree(tmp_path: Path) -> None:
    path = tmp_path / "api_key"
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(load_or_create_secret_file(path)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(results) == 8
    assert len(set(results)) == 1
    assert path.read_text().strip() == results[0]
