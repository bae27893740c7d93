"""One stored content, prepared once and finished per recipient.

:class:`PreparedContent` compiles a content's templates once. For a content
that is the same for everyone (no template syntax at all), the HTML is also
scanned for links only once: it keeps the tracked body as literal pieces with
holes for the pixel and click URLs, so each recipient costs a few string joins
and one HMAC per link. A personalised body is rendered, then tracked, per
recipient (see :mod:`mailpipe.content`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from html import escape
from typing import Any

from mailpipe.content.html import add_tracking
from mailpipe.content.templates import CompiledMessage, Rendered, compile_message

__all__ = ["PreparedContent", "TrackedBody"]

_HOLE = re.compile("\x00([0-9]*)\x00")  # "\0\0" marks the pixel, "\0<n>\0" the n-th link
_PIXEL = "\x00\x00"


@dataclass(frozen=True, slots=True)
class TrackedBody:
    """A tracked HTML body as literal ``pieces`` around holes for per-recipient URLs.

    ``targets[i]`` is the original URL of hole ``i``, or None for the open pixel.
    """

    pieces: tuple[str, ...]
    targets: tuple[str | None, ...]

    @classmethod
    def build(cls, html: str, *, pixel: bool, clicks: bool) -> TrackedBody | None:
        """The body ``add_tracking`` would make, with holes; None if ``html`` holds NUL."""
        if "\x00" in html:
            return None
        links: list[str] = []

        def hole(url: str) -> str:
            links.append(url)
            return f"\x00{len(links) - 1}\x00"

        tracked = add_tracking(
            html, pixel_url=_PIXEL if pixel else None, click_url=hole if clicks else None
        )
        split = _HOLE.split(tracked)
        targets = tuple(links[int(n)] if n else None for n in split[1::2])
        return cls(tuple(split[0::2]), targets)

    def fill(self, pixel_url: str | None, click_url: Callable[[str], str] | None) -> str:
        """The body with this recipient's URLs in the holes."""
        out = [self.pieces[0]]
        for target, piece in zip(self.targets, self.pieces[1:], strict=True):
            url = pixel_url if target is None else click_url and click_url(target)
            if url is None:
                raise ValueError("a pixel or link URL is missing")
            out.append(escape(url, quote=True))
            out.append(piece)
        return "".join(out)


class PreparedContent:
    """A content's templates and tracking options, ready to finish for any recipient.

    Raises :class:`~mailpipe.content.templates.TemplateError` when a template
    does not compile.
    """

    __slots__ = ("_compiled", "_static_body", "track_clicks", "track_opens")

    def __init__(
        self,
        subject: str,
        html: str,
        text: str | None,
        *,
        track_opens: bool = True,
        track_clicks: bool = True,
    ) -> None:
        self._compiled: CompiledMessage = compile_message(subject, html, text)
        self.track_opens = track_opens
        self.track_clicks = track_clicks
        self._static_body: TrackedBody | None = None
        if not self._compiled.personalised:
            body = self._compiled.render({}, unsubscribe_url="").html
            self._static_body = TrackedBody.build(body, pixel=track_opens, clicks=track_clicks)

    def finish(
        self,
        data: Mapping[str, Any],
        *,
        unsubscribe_url: str,
        open_url: str | None,
        click_url: Callable[[str], str] | None,
    ) -> Rendered:
        """One recipient's subject, tracked HTML and text (derived before tracking).

        ``open_url`` is required when this content tracks opens, ``click_url``
        when it tracks clicks; the unsubscribe link is never click-tracked.
        Raises ``TemplateError`` when the recipient's data does not render.
        """
        pixel = open_url if self.track_opens else None
        clicks = click_url if self.track_clicks else None
        if (self.track_opens and pixel is None) or (self.track_clicks and clicks is None):
            raise ValueError("this content tracks opens or clicks: give their URLs")
        rendered = self._compiled.render(data, unsubscribe_url=unsubscribe_url)
        if self._static_body is not None:
            html = self._static_body.fill(pixel, clicks)
        else:
            html = add_tracking(
                rendered.html, pixel_url=pixel, click_url=clicks, exclude=(unsubscribe_url,)
            )
        return Rendered(rendered.subject, html, rendered.text)
