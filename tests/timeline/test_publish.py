"""The in-process publisher: fan-out to live subscribers, slow ones dropped (timeline.publish)."""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

from timeline.publish import Publisher, Subscription


async def test_subscribers_receive_published_items_in_order() -> None:
    publisher = Publisher()
    with publisher.subscribe() as first, publisher.subscribe() as second:
        assert publisher.subscriber_count == 2
        readers = [asyncio.create_task(_take(sub, 5)) for sub in (first, second)]
        await asyncio.sleep(0)
        for i in range(5):
            publisher.publish("timeline", {"n": i})
        got = await asyncio.wait_for(asyncio.gather(*readers), 2)
    expected = [("timeline", {"n": i}) for i in range(5)]
    assert got == [expected, expected]
    assert publisher.subscriber_count == 0


async def test_close_ends_every_subscription() -> None:
    publisher = Publisher()
    with publisher.subscribe() as sub:
        reader = asyncio.create_task(_drain(sub))
        await asyncio.sleep(0)
        publisher.close()
        assert await asyncio.wait_for(reader, 2) == []
    assert publisher.subscriber_count == 0


async def test_close_delivers_what_was_already_queued() -> None:
    publisher = Publisher()
    with publisher.subscribe() as sub:
        for i in range(3):
            publisher.publish("timeline", i)
        publisher.close()
        assert await asyncio.wait_for(_drain(sub), 2) == [0, 1, 2]


async def _take(sub: Subscription, n: int) -> list[tuple[str, Any]]:
    got: list[tuple[str, Any]] = []
    async for item in sub:
        got.append(item)
        if len(got) == n:
            break
    return got


async def test_publishing_without_subscribers_is_fine() -> None:
    publisher = Publisher()
    publisher.publish("timeline", "nobody listens")
    assert publisher.subscriber_count == 0


async def test_leaving_a_subscription_stops_delivery() -> None:
    publisher = Publisher()
    with publisher.subscribe() as sub:
        publisher.publish("t", 1)
    publisher.publish("t", 2)
    assert publisher.subscriber_count == 0
    assert sub.queue.qsize() == 1


async def test_a_subscriber_that_never_reads_is_dropped_without_blocking() -> None:
    assert not inspect.iscoroutinefunction(Publisher.publish)  # publishing never awaits
    publisher = Publisher(maxsize=10)
    received: list[int] = []
    with publisher.subscribe() as stalled, publisher.subscribe() as live:

        async def read() -> None:
            async for _topic, item in live:
                received.append(item)

        reader = asyncio.create_task(read())
        started = time.perf_counter()
        for i in range(200):
            publisher.publish("timeline", i)
            await asyncio.sleep(0)  # the live reader keeps up
        elapsed = time.perf_counter() - started
        assert stalled.dropped is True
        assert live.dropped is False
        assert publisher.subscriber_count == 1
        for _ in range(100):
            if len(received) == 200:
                break
            await asyncio.sleep(0)
        publisher.close()
        await asyncio.wait_for(reader, 2)
        # The dropped subscriber's loop ends instead of hanging forever.
        leftovers = await asyncio.wait_for(_drain(stalled), 2)
    assert received == list(range(200))
    # What it had queued before it fell behind, in order, and nothing after.
    assert leftovers == sorted(leftovers)
    assert set(leftovers) <= set(range(10))
    assert elapsed < 5.0  # generous: 200 non-blocking calls under any load


async def _drain(sub: Subscription) -> list[int]:
    return [item async for _topic, item in sub]


async def test_a_full_queue_never_blocks_the_publisher() -> None:
    publisher = Publisher(maxsize=3)
    with publisher.subscribe() as sub:
        for i in range(1000):
            publisher.publish("t", i)  # returns at once, whatever the subscriber does
        assert sub.dropped
        assert sub.queue.qsize() <= 3
