"""What moves between the scheduler, the sender pool and the recorder."""

from __future__ import annotations

from dataclasses import dataclass, replace

from mailpipe.model import Content


@dataclass(frozen=True)
class Job:
    """One claimed request on its way to the transport."""

    request_id: int
    topic_id: str
    to: str
    content: Content
    attempt: int = 0
    """Provider calls made for this job so far (throttled ones included)."""
    data: str | None = None
    """The recipient's template data (JSON text), None when it has none."""
    failures: int = 0
    """Transient failures so far: only these count toward ``MAX_ATTEMPTS``."""

    def retried(self, *, failed: bool) -> Job:
        """The same job, one call later; ``failed`` when that call failed transiently."""
        return replace(self, attempt=self.attempt + 1, failures=self.failures + failed)


class Backlog:
    """Claimed jobs waiting in the job channel: the scheduler counts in what it
    sends, the sender pool counts out what it receives."""

    def __init__(self) -> None:
        self.count = 0

    def put(self, n: int) -> None:
        """``n`` jobs went into the channel."""
        self.count += n

    def take(self, n: int) -> None:
        """``n`` jobs came out of it (or never went in)."""
        self.count -= n


class Handed:
    """Requests handed to the provider and not yet recorded: the pool adds them
    as their call leaves, the recorder settles them once their outcome is
    stored, and the pool those whose call came back to be tried again. A stop
    cannot call these back."""

    def __init__(self) -> None:
        self._topics: dict[int, str] = {}

    def add(self, job: Job) -> None:
        """``job`` is in a provider call now."""
        self._topics[job.request_id] = job.topic_id

    def settle(self, request_id: int) -> None:
        """``request_id`` is out of the provider's hands: its outcome is stored,
        or it waits for a retry."""
        self._topics.pop(request_id, None)

    def of_topic(self, topic_id: str) -> list[int]:
        """The handed requests of ``topic_id``."""
        return [rid for rid, topic in self._topics.items() if topic == topic_id]
