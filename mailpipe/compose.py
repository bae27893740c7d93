"""Turns a claimed job into the finished email a transport sends."""

from __future__ import annotations

from mailpipe.jobs import Job
from mailpipe.transport import Email, request_headers, request_tags


class Composer:
    """Builds each recipient's :class:`Email` from its job."""

    def __init__(self, sender: str) -> None:
        self.sender = sender

    def compose(self, job: Job) -> Email:
        """The email for ``job``: its content, addressed, with correlation headers and tags."""
        return Email(
            request_id=job.request_id,
            sender=self.sender,
            to=job.to,
            subject=job.content.subject,
            html=job.content.html,
            headers=request_headers(job.request_id),
            tags=request_tags(job.request_id),
            content_id=job.content.id,
        )
