"""HTML body helpers: tracking links and pixel, link extraction, plain-text derivation.

One regular-expression tokenizer serves all of them. It understands quoted
and unquoted attribute values in any case and order, skips comments, scripts
and styles, and runs in linear time on any input (no tag can fail to close:
the scan stops at the last ``>``). Link rewriting replaces only the ``href``
values that change and copies the rest of the document unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator
from html import escape, unescape
from urllib.parse import urlsplit

__all__ = ["add_tracking", "html_to_text", "is_web_url", "links"]

_ATTR = r"""[^\s/>][^\s/>=]*+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s>]*))?"""
_TOKENS = re.compile(
    rf"""<!--.*?(?:-->|\Z)
       | <[!?][^>]*>
       | <(?P<raw>script|style|title|textarea|template)\b(?:\s+|/|{_ATTR})*+>
         .*?(?:</(?P=raw)\s*>|\Z)
       | </(?P<end>[a-zA-Z][^\s/>]*)[^>]*>
       | <(?P<tag>[a-zA-Z][^\s/>]*)(?P<attrs>(?:\s+|/|{_ATTR})*+)>""",
    re.IGNORECASE | re.DOTALL | re.VERBOSE,
)
_ATTRS = re.compile(
    r"""(?P<name>[^\s/>][^\s/>=]*+)
        (?:\s*=\s*(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<uq>[^\s>]*)))?""",
    re.VERBOSE,
)
_URL_SPACE = " \t\n\r\f"


def _tokens(html: str) -> Iterator[re.Match[str]]:
    """Comments, declarations, raw-text elements, end tags and start tags, in order."""
    return _TOKENS.finditer(html, 0, html.rfind(">") + 1)


def _attributes(html: str, tag: re.Match[str]) -> Iterator[tuple[str, str, int, int]]:
    """``(name, raw value, start, end)`` of a start tag's attributes.

    ``start:end`` spans the value with its quotes (empty span for a bare name).
    """
    for attr in _ATTRS.finditer(html, tag.start("attrs"), tag.end("attrs")):
        name = attr.group("name").lower()
        for group, quote in (("dq", 1), ("sq", 1), ("uq", 0)):
            raw = attr.group(group)
            if raw is not None:
                start, end = attr.span(group)
                yield name, raw, start - quote, end + quote
                break
        else:
            yield name, "", attr.end(), attr.end()


def _attribute_map(html: str, tag: re.Match[str]) -> dict[str, str]:
    """A start tag's attributes, unescaped; the first of duplicate names wins."""
    found: dict[str, str] = {}
    for name, raw, _, _ in _attributes(html, tag):
        found.setdefault(name, unescape(raw))
    return found


def is_web_url(url: str) -> bool:
    """True if ``url`` is an absolute http or https URL with a host."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def _hrefs(html: str) -> Iterator[tuple[int, int, str]]:
    """Yield ``(start, end, url)`` for the ``href`` of each ``<a>`` start tag.

    ``start:end`` is the span of the attribute value in ``html`` including its
    quotes; ``url`` is the value unescaped and stripped of surrounding spaces.
    """
    for tag in _tokens(html):
        name = tag.group("tag")
        if name is None or name.lower() != "a":
            continue
        for attr, raw, start, end in _attributes(html, tag):
            if attr == "href":
                yield start, end, unescape(raw).strip(_URL_SPACE)
                break  # browsers use the first href only


def links(html: str) -> list[str]:
    """Return the distinct http(s) targets of ``<a href>`` links, in document order."""
    seen: dict[str, None] = {}
    for _, _, url in _hrefs(html):
        if is_web_url(url):
            seen.setdefault(url, None)
    return list(seen)


def add_tracking(
    html: str,
    *,
    pixel_url: str | None,
    click_url: Callable[[str], str] | None,
    exclude: Collection[str] = (),
) -> str:
    """Return ``html`` with tracked links and an open pixel.

    Each http(s) ``<a href>`` whose URL is not in ``exclude`` is replaced by
    ``click_url(url)``; other links (mailto:, anchors, relative) stay as they
    are. With ``pixel_url``, a 1x1 image is added before ``</body>`` (or at the
    end). With neither, ``html`` is returned unchanged.
    """
    if click_url is not None:
        html = _rewrite_links(html, click_url, exclude)
    if pixel_url is not None:
        html = _add_pixel(html, pixel_url)
    return html


def _rewrite_links(html: str, click_url: Callable[[str], str], exclude: Collection[str]) -> str:
    parts: list[str] = []
    done = 0
    for start, end, url in _hrefs(html):
        if start == end or url in exclude or not is_web_url(url):
            continue
        parts.append(html[done:start])
        parts.append(f'"{escape(click_url(url), quote=True)}"')
        done = end
    if not parts:
        return html
    parts.append(html[done:])
    return "".join(parts)


def _add_pixel(html: str, pixel_url: str) -> str:
    img = (
        f'<img src="{escape(pixel_url, quote=True)}" width="1" height="1" alt="" '
        'style="display:block;width:1px;height:1px;border:0" />'
    )
    at = html.lower().rfind("</body")
    if at < 0:
        return html + img
    return html[:at] + img + html[at:]


# -- plain text ----------------------------------------------------------

_HIDEABLE = frozenset({"div", "span", "table"})  # elements reliably closed in practice
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)
_PARAGRAPH = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "table", "blockquote", "pre", "hr"}
)
_LINE = frozenset(
    {
        "div", "li", "tr", "dt", "dd", "section", "article", "header", "footer", "nav",
        "main", "aside", "address", "figure", "figcaption", "form", "fieldset", "center", "body",
    }
)  # fmt: skip
_HIDDEN = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u034f\u200b\u200c\u200d\u2060\ufeff"))
_SPACES = re.compile(r"\s+")
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*):")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")


def html_to_text(html: str) -> str:
    """Return a readable plain-text version of ``html``.

    Blocks become paragraphs or lines, ``<br>`` a line break, list items are
    bulleted, links read ``text (url)``; scripts, styles, comments and hidden
    elements are dropped and entities decoded. The result ends with one
    newline unless it is empty.
    """
    writer = _write_text(html, hide=True)
    if writer.hiding:  # a hidden element never closed: keep everything rather than lose text
        writer = _write_text(html, hide=False)
    return writer.text()


def _write_text(html: str, *, hide: bool) -> _TextWriter:
    writer = _TextWriter(hide=hide)
    done = 0
    for token in _tokens(html):
        if token.start() > done:
            writer.data(html[done : token.start()])
        done = token.end()
        if token.group("tag") is not None:
            writer.start(token.group("tag").lower(), html, token)
        elif token.group("end") is not None:
            writer.end(token.group("end").lower())
    if done < len(html):
        writer.data(html[done:])
    return writer


class _TextWriter:
    """Turns a stream of tags and text into plain text."""

    def __init__(self, *, hide: bool) -> None:
        self._hide = hide
        self._out: list[str] = []
        self._pending = 0  # line breaks owed before the next text
        self._skip: list[str] = []  # tag names of open hidden elements
        self._links: list[tuple[str, int]] = []  # (href, index into _out)
        self._lists: list[list[int]] = []  # per open list: [next number] or [] for bullets
        self._pre = 0

    @property
    def hiding(self) -> bool:
        """True while inside a hidden element."""
        return bool(self._skip)

    def text(self) -> str:
        text = _TRAILING_SPACE.sub("\n", "".join(self._out)).strip()
        return text + "\n" if text else ""

    def start(self, tag: str, html: str, token: re.Match[str]) -> None:
        if self._skip:
            if tag == self._skip[-1]:
                self._skip.append(tag)
            return
        if (
            self._hide
            and tag in _HIDEABLE
            and _HIDDEN.search(_attribute_map(html, token).get("style", ""))
        ):
            self._skip.append(tag)
        elif tag in _PARAGRAPH:
            self._break(2)
            self._pre += tag == "pre"
            if tag in ("ul", "ol"):
                self._lists.append([1] if tag == "ol" else [])
        elif tag in _LINE:
            self._break(1)
            if tag == "li":
                self._bullet()
        elif tag == "br":
            self._pending = min(self._pending + 1, 2) if self._out else 0
        elif tag in ("td", "th"):
            if self._out and not self._pending:
                self._emit(" ")
        elif tag == "a":
            href = _attribute_map(html, token).get("href", "").strip(_URL_SPACE)
            self._links.append((href, len(self._out)))
        elif tag == "img" and self._links:
            self._emit(_SPACES.sub(" ", _attribute_map(html, token).get("alt", "")))

    def end(self, tag: str) -> None:
        if self._skip:
            if tag == self._skip[-1]:
                self._skip.pop()
            return
        if tag in _PARAGRAPH:
            self._break(2)
            if tag == "pre":
                self._pre = max(self._pre - 1, 0)
            if tag in ("ul", "ol") and self._lists:
                self._lists.pop()
        elif tag in _LINE:
            self._break(1)
        elif tag == "a" and self._links:
            self._end_link(*self._links.pop())

    def data(self, data: str) -> None:
        if self._skip:
            return
        data = unescape(data)
        if not data.isascii():
            data = data.replace("\xa0", " ").translate(_INVISIBLE)
        if self._pre:
            self._emit(data, keep_space=True)
        else:
            self._emit(_SPACES.sub(" ", data))

    def _break(self, lines: int) -> None:
        if self._out:
            self._pending = max(self._pending, lines)

    def _emit(self, text: str, *, keep_space: bool = False) -> None:
        if not keep_space and (
            self._pending or not self._out or self._out[-1].endswith(("\n", " "))
        ):
            text = text.lstrip(" ")
        if not text:
            return
        if self._pending:
            self._out.append("\n" * self._pending)
            self._pending = 0
        self._out.append(text)

    def _bullet(self) -> None:
        marker = "- "
        if self._lists and self._lists[-1]:
            marker = f"{self._lists[-1][0]}. "
            self._lists[-1][0] += 1
        self._emit("  " * max(len(self._lists) - 1, 0) + marker)

    def _end_link(self, href: str, start: int) -> None:
        label = "".join(self._out[start:]).strip()
        match = _SCHEME.match(href)
        scheme = match.group(1).lower() if match else ""
        if scheme in ("", "javascript", "data", "cid"):
            return
        shown = href[7:].partition("?")[0] if scheme == "mailto" else href
        if not label:
            self._emit(shown)
        elif label not in (shown, href) and label.rstrip("/") != _strip_scheme(href):
            self._emit(f" ({shown})")


def _strip_scheme(url: str) -> str:
    return url.partition("://")[2].rstrip("/") if "://" in url else url
