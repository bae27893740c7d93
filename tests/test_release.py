"""A call's release moment: held until its permit, told when it left, and,
with a slack (several instances), refused once it is too late to leave."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fake_ses import FakeSES
from test_bulk import email

from mailpipe.errors import ReleaseMissed
from mailpipe.transport import Release, hold_until
from mailpipe.transport.outbox import OutboxTransport
from mailpipe.transport.ses import SesTransport, make_client


def past(seconds: float, slack: float | None, told: list[float]) -> Release:
    """A release whose moment was ``seconds`` ago."""
    return Release(time.perf_counter() - seconds, told.append, slack)


def test_a_late_release_is_told_how_late_and_goes() -> None:
    told: list[float] = []
    hold_until(past(0.02, None, told))
    assert len(told) == 1 and told[0] >= 0.02


def test_with_a_slack_an_on_time_release_is_told_too() -> None:
    told: list[float] = []
    hold_until(Release(time.perf_counter() + 0.001, told.append, 0.5))
    assert len(told) == 1 and 0 <= told[0] < 0.5


def test_a_release_later_than_its_slack_is_refused_and_not_told() -> None:
    told: list[float] = []
    with pytest.raises(ReleaseMissed):
        hold_until(past(0.02, 0.005, told))
    assert told == []


def test_the_outbox_writes_nothing_for_a_missed_release(tmp_path: Path) -> None:
    transport = OutboxTransport(tmp_path)
    results = transport.send([email(1)], past(0.02, 0.005, []))
    assert [type(r.error) for r in results] == [ReleaseMissed]
    assert list(tmp_path.iterdir()) == []


def test_ses_sends_nothing_for_a_missed_release(fake: FakeSES) -> None:
    transport = SesTransport(make_client("us-east-1", 4))
    results = transport.send([email(i) for i in range(1, 4)], past(0.02, 0.005, []))
    assert [type(r.error) for r in results] == [ReleaseMissed] * 3
    assert fake.calls == 0
    # The next call, released in time, goes as usual.
    results = transport.send([email(4)], past(0.0, 0.5, []))
    assert results[0].error is None and fake.calls == 1
