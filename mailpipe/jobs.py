"""What moves between the scheduler, the sender pool and the recorder."""

from __future__ import annotations

from dataclasses import dataclass

from mailpipe.store import Content


@dataclass(frozen=True)
class Job:
    """One claimed request on its way to the transport."""

    request_id: int
    topic_id: str
    to: str
    content: Content
    attempt: int = 0

    def retried(self) -> Job:
        """The same job, one attempt later."""
        return Job(self.request_id, self.topic_id, self.to, self.content, self.attempt + 1)
