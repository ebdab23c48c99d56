"""Identifiers: time-ordered, made by the client so bulk inserts need no round trip."""

from __future__ import annotations

import os
import time


def new_id() -> str:
    """A 32-hex-digit id laid out like UUIDv7 (RFC 9562 5.7): ms timestamp, then random.

    Ids sort by creation time, which keeps B-tree inserts at the right edge.
    """
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | rand
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 9562 variant
    return f"{value:032x}"
