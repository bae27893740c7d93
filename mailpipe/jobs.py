"""What moves between the scheduler, the sender pool and the recorder."""

from __future__ import annotations

from dataclasses import dataclass, replace

from mailpipe.store import Content


@dataclass(frozen=True)
class Job:
    """One claimed request on its way to the transport."""

    request_id: int
    topic_id: str
    to: str
    content: Content
    attempt: int = 0
    data: str | None = None
    """The recipient's template data (JSON text), None when it has none."""

    def retried(self) -> Job:
        """The same job, one attempt later."""
        return replace(self, attempt=self.attempt + 1)
