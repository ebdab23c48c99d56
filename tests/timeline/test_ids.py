"""Ids: ``new_ids`` makes what ``new_id`` makes, many at once."""

from __future__ import annotations

import uuid

from timeline.ids import new_id, new_ids


def test_new_ids_are_uuid7_laid_out_like_new_id() -> None:
    before = new_id()
    made = new_ids(1000)
    after = new_id()
    assert len(set(made)) == 1000
    for value in [before, *made, after]:
        parsed = uuid.UUID(value)
        assert len(value) == 32 and parsed.version == 7 and parsed.variant == uuid.RFC_4122
    # The millisecond timestamp leads, so ids sort by creation time across calls.
    assert before[:12] <= min(made)[:12] <= max(made)[:12] <= after[:12]
    assert new_ids(0) == []
