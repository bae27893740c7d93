"""Turns a claimed job into the finished email a transport sends.

Runs in the sender pool's worker threads. Per recipient it renders the
content's templates with the recipient's data, adds the signed open pixel and
click links (as the content asks) and the RFC 8058 one-click unsubscribe
headers. Each content is prepared once (templates compiled; a body that is
the same for everyone scanned once) and kept in a small cache.
"""

from __future__ import annotations

import json
import threading
from email.utils import parseaddr
from functools import partial
from typing import Any

from mailpipe.content.mime import ascii_address
from mailpipe.content.prepared import PreparedContent
from mailpipe.content.templates import TemplateError
from mailpipe.content.tokens import Tokens
from mailpipe.errors import PermanentSendError
from mailpipe.lru import BoundedCache
from mailpipe.model import Content
from mailpipe.pipeline.jobs import Job
from mailpipe.transport import Email, request_headers, request_tags

PREPARED_CACHE = 256
"""Prepared contents kept; past it, the one prepared first is dropped."""
ONE_CLICK = ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
FEEDBACK_PART_MAX = 40
"""Characters each part of a ``Feedback-ID`` keeps (Gmail reads the header up to a
few hundred; a 4-part id of 40 each stays far inside)."""


def feedback_id(topic_id: str | None, content_id: int, sender_id: str) -> str:
    """The ``Feedback-ID`` header's value, ``<topic>:<content>:mailpipe:<sender>``, by
    which Gmail's Postmaster Tools group complaints per campaign. Each part keeps
    only printable ASCII without colons or spaces, at most ``FEEDBACK_PART_MAX``."""
    parts = (topic_id or "none", str(content_id), "mailpipe", sender_id)
    return ":".join(_feedback_part(p) for p in parts)


def _feedback_part(text: str) -> str:
    kept = "".join(c for c in text if "!" <= c <= "~" and c != ":")
    return kept[:FEEDBACK_PART_MAX] or "none"


def sender_domain(sender: str) -> str:
    """The domain of the sending address (``Name <a@b.com>`` gives ``b.com``)."""
    address = parseaddr(sender)[1] or sender
    return address.rpartition("@")[2] or "localhost"


class Composer:
    """Builds each recipient's :class:`Email` from its job.

    With ``tokens``, every email carries signed links based at ``base_url``
    (``SERVER_HOST``): ``List-Unsubscribe`` headers, ``{{ unsubscribe_url }}``,
    and the open pixel and click links where the content tracks them. Without,
    templates are rendered but nothing is tracked (``unsubscribe_url`` is empty).
    """

    def __init__(
        self,
        sender: str,
        tokens: Tokens | None = None,
        base_url: str = "",
        *,
        feedback_sender_id: str | None = None,
    ) -> None:
        self.sender = sender
        self.feedback_sender_id = feedback_sender_id or sender_domain(sender)
        self.tokens = tokens
        self.base_url = base_url
        self._prepared: BoundedCache[int, PreparedContent] = BoundedCache(PREPARED_CACHE)
        self._lock = threading.Lock()

    def compose(self, job: Job) -> Email:
        """The email for ``job``; raises :class:`PermanentSendError` when it cannot be
        rendered (code ``TemplateError``)."""
        rid, to = job.request_id, job.to
        headers = (
            *request_headers(rid),
            ("Feedback-ID", feedback_id(job.topic_id, job.content.id, self.feedback_sender_id)),
        )
        open_url = click_url = None
        unsubscribe_url = ""
        if self.tokens is not None:
            unsubscribe_url = self.tokens.unsubscribe_url(self.base_url, rid, to)
            open_url = self.tokens.open_url(self.base_url, rid)
            click_url = partial(self.tokens.click_url, self.base_url, rid)
            headers = (*headers, ("List-Unsubscribe", f"<{unsubscribe_url}>"), ONE_CLICK)
        try:
            rendered = self._prepare(job.content).finish(
                _data(job.data),
                unsubscribe_url=unsubscribe_url,
                open_url=open_url,
                click_url=click_url,
            )
        except TemplateError as exc:
            raise PermanentSendError("TemplateError", str(exc.for_recipient(to))) from exc
        return Email(
            request_id=rid,
            sender=self.sender,
            to=ascii_address(to),  # rows stored before domains were kept in Punycode
            subject=rendered.subject,
            html=rendered.html,
            text=rendered.text,
            headers=headers,
            tags=request_tags(rid),
            content_id=job.content.id,
        )

    def _prepare(self, content: Content) -> PreparedContent:
        # A plain read, atomic under the GIL: every composing thread passes
        # here once per recipient, and a lock made them queue for it.
        found = self._prepared.get(content.id)
        if found is not None:
            return found
        tracking = self.tokens is not None
        prepared = PreparedContent(  # outside the lock: other threads keep composing
            content.subject,
            content.html,
            content.text,
            track_opens=tracking and content.track_opens,
            track_clicks=tracking and content.track_clicks,
        )
        with self._lock:
            self._prepared.put(content.id, prepared)
        return prepared


def _data(text: str | None) -> dict[str, Any]:
    """A recipient's template data from its stored JSON text."""
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise TemplateError("data", f"stored data is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise TemplateError("data", "stored data is not a JSON object")
    return data
