"""The CLI's one way to call the service: URL and key resolution, one-line errors."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from mailpipe.config import Config

DEFAULT_URL: Final = f"http://127.0.0.1:{Config().server_port}"
"""The service's default ``SERVER_PORT`` on this machine."""
KEY_FILE: Final = Path("data") / "api_key"
"""The key the service generated on this machine (``DB_PATH``'s directory by default)."""
TIMEOUT_S: Final = 120.0
"""A POST of 100,000 recipients is validated and committed in a few seconds."""


class CliError(Exception):
    """A failure to print as one line (the server's message when it sent one)."""


@dataclass(frozen=True)
class Target:
    """Where the service answers and the key it wants."""

    url: str
    key: str


def resolve_target(url: str | None, key: str | None) -> Target:
    """``--url``/``--key``, else ``MAILPIPE_URL``/``MAILPIPE_API_KEY``, else the local
    ``data/api_key`` and the default URL; :class:`CliError` when no key is found."""
    url = url or os.environ.get("MAILPIPE_URL") or DEFAULT_URL
    key = key or os.environ.get("MAILPIPE_API_KEY")
    if not key and KEY_FILE.is_file():
        key = KEY_FILE.read_text().strip()
    if not key:
        raise CliError(
            "no API key: pass --key, set MAILPIPE_API_KEY, or run from the directory"
            f" holding {KEY_FILE}"
        )
    return Target(url.rstrip("/"), key)


class Client:
    """Keyed JSON calls; every failure becomes a :class:`CliError`."""

    def __init__(self, target: Target) -> None:
        self.target = target
        try:
            self._http = httpx.Client(
                base_url=target.url, headers={"x-api-key": target.key}, timeout=TIMEOUT_S
            )
        except (httpx.InvalidURL, ValueError) as exc:
            raise CliError(f"invalid URL {target.url!r}: {exc}") from None

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[dict[str, Any], httpx.Headers]:
        """The JSON answer of a 2xx and its headers; else :class:`CliError` with the
        server's ``error`` message and status."""
        try:
            response = self._http.request(
                method, path, json=json, content=content, params=params, headers=headers
            )
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach {self.target.url}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not response.is_success:
            message = body.get("error") if isinstance(body, dict) else None
            text = message or response.text.strip()[:200] or response.reason_phrase
            raise CliError(f"{method} {path}: {response.status_code} {text}")
        if not isinstance(body, dict):
            raise CliError(f"{method} {path}: the answer is not a JSON object")
        return body, response.headers

    def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        """GET ``path``'s JSON object."""
        return self.call("GET", path, params=params)[0]
