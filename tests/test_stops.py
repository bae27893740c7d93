"""What the sender checks before a hand-off: topic stops and recent suppressions."""

from __future__ import annotations

from mailpipe.addresses import address_key
from mailpipe.pipeline.stops import RecentSuppressions, TopicStops


def test_a_topic_stop_covers_ids_up_to_its_mark() -> None:
    stops = TopicStops()
    stops.stop("t", 10)
    stops.stop("t", 7)  # an older, lower mark does not shrink the stop
    assert stops.stopped("t", 10) and not stops.stopped("t", 11)
    assert not stops.stopped("other", 1)


def test_suppressed_addresses_compare_as_the_store_compares_them() -> None:
    recent = RecentSuppressions()
    recent.add([(" Ann@Example.COM ", "bounce"), ("ann@example.com", "complaint")])
    for address in ("ann@example.com", "ANN@EXAMPLE.COM", " ann@example.com", "bob@example.com"):
        expected = "bounce" if address_key(address) == "ann@example.com" else None
        assert recent.reason(address) == expected
    recent.add([("éva@bücher.de", "unsubscribe")])
    assert recent.reason("Éva@BÜCHER.de") == "unsubscribe"  # Unicode folded too, as the key
    recent.discard("ANN@example.com")
    assert recent.reason("ann@example.com") is None


def test_recent_suppressions_are_bounded() -> None:
    recent = RecentSuppressions(max_addresses=2)
    recent.add([(f"a{i}@x.com", "bounce") for i in range(3)])
    assert [recent.reason(f"a{i}@x.com") for i in range(3)] == [None, "bounce", "bounce"]
