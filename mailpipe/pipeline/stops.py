"""What the sender checks just before handing a request to SES.

Topics stopped by ``DELETE /v1/topics/{id}``, topics paused (by the reputation
guard or by hand), and addresses suppressed while the process runs: all can
come after a request was claimed.
"""

from __future__ import annotations

from collections.abc import Iterable

from mailpipe.addresses import address_key
from mailpipe.lru import BoundedCache

MAX_TOPICS = 100_000
MAX_ADDRESSES = 100_000


class TopicStops:
    """For each stopped topic, the highest request id the stop covers.

    Requests posted to the topic after the stop have higher ids and still go out.
    """

    def __init__(self) -> None:
        self._upto: BoundedCache[str, int] = BoundedCache(MAX_TOPICS)

    def stop(self, topic_id: str, upto_request_id: int) -> None:
        """Stop every request of ``topic_id`` with id up to ``upto_request_id``."""
        self._upto.put(topic_id, max(upto_request_id, self._upto.get(topic_id) or 0))

    def items(self) -> list[tuple[str, int]]:
        """Every stop: (topic id, highest request id it covers)."""
        return self._upto.items()

    def stopped(self, topic_id: str, request_id: int) -> bool:
        """Whether the request was stopped."""
        upto = self._upto.get(topic_id)
        return upto is not None and request_id <= upto


class TopicPauses:
    """The paused topics: their claimed requests go back to the queue, unsent.

    The store keeps the pauses (its claims pass paused topics by); this holds
    them for the requests claimed before the pause came.
    """

    def __init__(self) -> None:
        self._topics: BoundedCache[str, bool] = BoundedCache(MAX_TOPICS)

    def pause(self, topic_id: str) -> None:
        """Hold back the topic's claimed requests from now on."""
        self._topics.put(topic_id, True)

    def resume(self, topic_id: str) -> None:
        """Send the topic's requests again."""
        self._topics.pop(topic_id)

    def paused(self, topic_id: str | None) -> bool:
        """Whether the topic is paused."""
        return topic_id is not None and self._topics.get(topic_id) is not None


class RecentSuppressions:
    """Addresses suppressed (bounce, complaint, unsubscribe) since the process started.

    The store stops a suppressed address when it claims the row; this covers
    rows claimed before the suppression came, waiting for a permit or a retry.
    Addresses compare as the store compares them
    (:func:`~mailpipe.addresses.address_key`). Past ``MAX_ADDRESSES`` the oldest are
    forgotten: by then their rows were claimed after the suppression.
    """

    def __init__(self, max_addresses: int = MAX_ADDRESSES) -> None:
        self._reasons: BoundedCache[str, str] = BoundedCache(max_addresses)

    def add(self, suppressions: Iterable[tuple[str, str]]) -> None:
        """Remember each (address, reason); an address keeps its first reason."""
        for address, reason in suppressions:
            key = _key(address)
            kept = self._reasons.get(key)
            self._reasons.put(key, reason if kept is None else kept)

    def discard(self, address: str) -> None:
        """Forget ``address`` (its suppression was lifted)."""
        self._reasons.pop(_key(address))

    def reason(self, address: str) -> str | None:
        """Why ``address`` was suppressed, or None."""
        if not self._reasons:
            return None
        return self._reasons.get(_key(address))


def _key(address: str) -> str:
    return address_key(address)
