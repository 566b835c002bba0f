"""Deck.skips (presence/deck.py): the most users a recent deck window walked past, which sets how far
a deck change reaches (presence/audience.py)."""

import pytest

from server.presence import deck


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(deck.time, "monotonic", lambda: now[0])
    return now


def test_the_most_skipped_is_kept_for_one_to_two_periods_then_forgotten(clock):
    g = deck.SkipGauge(period_s=60)
    assert g.most() == 0
    g.saw(7)
    g.saw(3)  # a smaller walk does not lower it
    assert g.most() == 7
    clock[0] += 61  # next period: still remembered
    g.saw(2)
    assert g.most() == 7
    clock[0] += 60  # the period that saw 7 is two periods old
    assert g.most() == 2
    clock[0] += 125  # silence for over two periods forgets everything
    assert g.most() == 0
