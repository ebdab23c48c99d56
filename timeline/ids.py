"""Identifiers: time-ordered, made by the client so bulk inserts need no round trip."""

from __future__ import annotations

import os
import time


def new_id() -> str:
    """A 32-hex-digit id laid out like UUIDv7 (RFC 9562 5.7): ms timestamp, then random.

    Ids sort by creation time, which keeps B-tree inserts at the right edge.
    """
    return new_ids(1)[0]


def new_ids(n: int) -> list[str]:
    """``n`` ids laid out as :func:`new_id` describes, one ``os.urandom`` call for all."""
    ms = time.time_ns() // 1_000_000
    pool = os.urandom(10 * n)
    head = (ms << 80) & ~(0xF << 76) | (0x7 << 76)  # version 7
    ids = []
    for i in range(0, 10 * n, 10):
        rand = int.from_bytes(pool[i : i + 10], "big") & ~(0xF << 76 | 0x3 << 62)
        ids.append(f"{head | rand | (0x2 << 62):032x}")  # RFC 9562 variant
    return ids
