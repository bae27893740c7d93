"""Per-recipient content: templates, tracking links, signed tokens, MIME.

All of it is pure computation (no I/O). Per recipient, at send time::

    rendered = compiled.render(data, unsubscribe_url=tokens.unsubscribe_url(base, rid, to))
    html = add_tracking(
        rendered.html,
        pixel_url=tokens.open_url(base, rid),
        click_url=lambda url: tokens.click_url(base, rid, url),
        exclude=(unsubscribe_url,),
    )

The text part is derived before tracking, so it keeps the original links.
"""

from mailpipe.content.html import add_tracking, html_to_text, is_web_url, links
from mailpipe.content.mime import build_message, to_bytes
from mailpipe.content.templates import (
    CompiledMessage,
    Rendered,
    TemplateError,
    check_recipients,
    compile_message,
)
from mailpipe.content.tokens import Tokens, load_or_create_secret

__all__ = [
    "CompiledMessage",
    "Rendered",
    "TemplateError",
    "Tokens",
    "add_tracking",
    "build_message",
    "check_recipients",
    "compile_message",
    "html_to_text",
    "is_web_url",
    "links",
    "load_or_create_secret",
    "to_bytes",
]
