"""Headless Chromium (Debian's ``chromium`` package) driven by Playwright for Python.

``playwright install`` downloads browsers and cannot run here, so the tests use
the system's ``/usr/bin/chromium``. Without it the browser tests are skipped with
one line, or fail with ``MAILPIPE_REQUIRE_BROWSER=1`` (as CI sets).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def chromium_or_skip() -> str:
    """The Chromium binary; skip (or fail when required) when it is missing."""
    found = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        found = None
    if found is None:
        message = f"no chromium at {CHROMIUM} (apt-get install chromium) or no playwright"
        if os.environ.get("MAILPIPE_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


@contextmanager
def browser_page(width: int = 1200, height: int = 900) -> Iterator[Any]:
    """A new page in a fresh headless Chromium, closed afterwards."""
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()


def log_in(page: Any, url: str, key: str) -> None:
    """Log in to the dashboard at ``url`` with ``key`` through its form."""
    page.goto(f"{url}/dashboard/")
    assert page.url.endswith("/dashboard/login")
    page.fill("input[name=api_key]", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/dashboard/")
