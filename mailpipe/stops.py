"""Topics stopped by ``DELETE /v1/topics/{id}``, as the sender checks them."""

from __future__ import annotations

from collections import OrderedDict

MAX_TOPICS = 100_000


class TopicStops:
    """For each stopped topic, the highest request id the stop covers.

    Requests posted to the topic after the stop have higher ids and still go out.
    """

    def __init__(self) -> None:
        self._upto: OrderedDict[str, int] = OrderedDict()

    def stop(self, topic_id: str, upto_request_id: int) -> None:
        """Stop every request of ``topic_id`` with id up to ``upto_request_id``."""
        self._upto[topic_id] = max(upto_request_id, self._upto.get(topic_id, 0))
        self._upto.move_to_end(topic_id)
        while len(self._upto) > MAX_TOPICS:
            self._upto.popitem(last=False)

    def items(self) -> list[tuple[str, int]]:
        """Every stop: (topic id, highest request id it covers)."""
        return list(self._upto.items())

    def stopped(self, topic_id: str, request_id: int) -> bool:
        """Whether the request was stopped."""
        upto = self._upto.get(topic_id)
        return upto is not None and request_id <= upto
