"""Stopping the background workers: every task ends, even one that absorbed a cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from config import Settings
from hub.services import Services
from hub.workers import Workers


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/hub.db", data_dir=tmp_path)
    built = Services.build(settings)
    try:
        yield built
    finally:
        await built.close()


async def test_stop_ends_a_loop_that_absorbed_its_first_cancellation(services: Services) -> None:
    """As SQLAlchemy's connection terminate and aiosqlite's close can: the cancellation
    is caught below the loop, which goes on to its next round; stop() must still end."""
    rounds: list[str] = []

    async def absorbs_one() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            rounds.append("absorbed")
        while True:
            rounds.append("next round")
            await asyncio.sleep(1.0)

    async def plain() -> None:
        await asyncio.sleep(3600)

    workers = Workers(services, jobs={}, loops={"absorbs": absorbs_one, "plain": plain})
    workers.start()
    tasks = list(workers.tasks)
    await asyncio.sleep(0.01)
    await asyncio.wait_for(workers.stop(), timeout=10)
    # Cancelled again in its first round's sleep (RECANCEL_EVERY < 1 s), not left
    # running until something else cancels it.
    assert rounds == ["absorbed", "next round"]
    assert all(task.done() for task in tasks)
    assert workers.tasks == []


async def test_stop_logs_a_loop_that_failed_while_stopping(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    async def fails_on_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    workers = Workers(services, jobs={}, loops={"fails": fails_on_cancel})
    workers.start()
    await asyncio.sleep(0.01)
    await asyncio.wait_for(workers.stop(), timeout=10)
    assert "worker fails ended with an error" in caplog.text
