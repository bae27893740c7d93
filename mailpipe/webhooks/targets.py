"""Which URLs a webhook may be sent to (the SSRF guard).

A target must be an absolute http(s) URL (https only with ``ENV=production``)
with a host. Its host is resolved and refused when any address it resolves to
is loopback, private, link-local (cloud metadata at 169.254.169.254 among
them), multicast, reserved or unspecified, unless ``WEBHOOK_ALLOW_PRIVATE``.
Checked at registration and again before every attempt, since DNS may change,
and a third time as the connection is made: :class:`CheckedBackend` connects to
an address it has just checked, so a name that resolves to a public address for
the check and to a private one a moment later (DNS rebinding) gets nowhere.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Final
from urllib.parse import urlsplit

import httpcore

from mailpipe.errors import MailpipeError

MAX_URL: Final = 2048
METADATA_HOSTS: Final = frozenset({"metadata.google.internal", "metadata"})


class TargetRefused(MailpipeError):
    """A webhook URL that may not be called; the message says why."""


def check_url_shape(url: object, *, https_only: bool) -> str:
    """``url`` if it is an absolute http(s) URL with a host; TargetRefused otherwise."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise TargetRefused(f"url must be a string of 1 to {MAX_URL} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise TargetRefused("url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"url is not a valid URL: {exc}") from None
    allowed = ("https",) if https_only else ("http", "https")
    if parts.scheme not in allowed or not parts.hostname:
        need = "https://" if https_only else "http:// or https://"
        raise TargetRefused(f"url must be an absolute {need} URL with a host")
    if port == 0 or parts.username is not None or parts.password is not None:
        raise TargetRefused("url must not carry credentials or port 0")
    return url


def refused_address(address: str) -> str | None:
    """Why calling ``address`` is refused, or None when it is a public address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for test, what in (
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local (cloud metadata)"),
        (ip.is_private, "private"),
        (ip.is_multicast, "multicast"),
        (ip.is_reserved, "reserved"),
        (ip.is_unspecified, "unspecified"),
    ):
        if test:
            return what
    return None


Resolve = Callable[[str], list[str]]
"""A host name → the addresses it resolves to now (blocking)."""


def resolve(host: str) -> list[str]:
    """Every TCP address ``host`` resolves to (``getaddrinfo``)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)]


def check_target(url: str, *, allow_private: bool, resolver: Resolve = resolve) -> None:
    """Raise TargetRefused unless every address ``url``'s host resolves to may be called.

    Blocking (it resolves the host): run it in a worker thread."""
    if not allow_private:
        public_addresses(urlsplit(url).hostname or "", resolver)


def public_addresses(host: str, resolver: Resolve = resolve) -> list[str]:
    """The addresses ``host`` resolves to, all public; TargetRefused otherwise."""
    if host.lower().rstrip(".") in METADATA_HOSTS:
        raise TargetRefused(f"url host {host} is a cloud metadata service")
    try:
        addresses = resolver(host)
    except (OSError, UnicodeError) as exc:
        raise TargetRefused(f"url host {host} does not resolve: {exc}") from None
    if not addresses:
        raise TargetRefused(f"url host {host} does not resolve")
    for address in addresses:
        why = refused_address(address)
        if why is not None:
            raise TargetRefused(
                f"url host {host} resolves to a {why} address ({address});"
                " set WEBHOOK_ALLOW_PRIVATE=true to allow it"
            )
    return addresses


class CheckedBackend(httpcore.NetworkBackend):
    """httpcore's blocking network backend, connecting only to checked addresses.

    The host is resolved once more at the connection and refused (TargetRefused)
    unless all its addresses are public; the connection goes to one of those
    addresses, not to a fresh lookup. TLS still verifies the URL's host name.
    """

    def __init__(self, *, allow_private: bool, resolver: Resolve = resolve) -> None:
        self._inner = httpcore.SyncBackend()
        self._allow_private = allow_private
        self._resolver = resolver

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        """Connect to a checked address of ``host``."""
        if not self._allow_private:
            host = public_addresses(host, self._resolver)[0]
        return self._inner.connect_tcp(host, port, timeout, local_address, socket_options)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        """Never: webhooks go over TCP."""
        raise TargetRefused("webhooks are not sent over unix sockets")

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds``."""
        self._inner.sleep(seconds)
