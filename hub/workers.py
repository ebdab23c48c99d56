"""Background workers that need no channel: housekeeping of the outbox and idempotency keys.

Channel workers (senders, pollers, reconciliation) join the same list. Each worker is a
coroutine looping until cancelled; one that raises is logged and restarted after a
pause, so a bad row cannot stop the hub.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any

from config import Settings
from hub.retention import EVERY as RETENTION_EVERY
from hub.retention import retention_job
from hub.services import Services
from timeline import idempotency, outbox

log = logging.getLogger(__name__)

Job = Callable[[Services], Awaitable[None]]
Loop = Callable[[], Coroutine[Any, Any, None]]

#: Seconds between rounds of the outbox recovery, at most (less when
#: ``HUB_OUTBOX_STALE_AFTER`` is shorter).
RECOVERY_EVERY = 60.0
#: Seconds :meth:`Workers.stop` waits before it cancels a task that is still running again.
RECANCEL_EVERY = 0.5


async def outbox_recovery(services: Services) -> None:
    """Turn claims older than ``HUB_OUTBOX_STALE_AFTER`` (dead workers) into ``unknown``.

    Reconciliation then settles them by asking the provider (RELIABILITY.md, Outbox 31).
    """
    stale_after = timedelta(seconds=services.settings.outbox_stale_after)
    recovered = await outbox.recover_stale(services.db, stale_after)
    if recovered:
        log.warning("%d outbox rows had stale claims; marked unknown", recovered)


async def idempotency_expiry(services: Services) -> None:
    """Forget Idempotency-Key answers older than the configured time."""
    ttl = timedelta(hours=services.settings.idempotency_ttl_hours)
    removed = await idempotency.expire(services.db, ttl)
    if removed:
        log.info("forgot %d expired idempotency keys", removed)


def base_jobs(settings: Settings) -> dict[str, tuple[Job, float]]:
    """name -> (job, seconds between runs) of the jobs that need no channel."""
    return {
        "outbox-recovery": (outbox_recovery, min(RECOVERY_EVERY, settings.outbox_stale_after)),
        "idempotency-expiry": (idempotency_expiry, 3600.0),
        "retention": (retention_job, RETENTION_EVERY),
    }


async def _loop(name: str, job: Job, every: float, services: Services) -> None:
    while True:
        try:
            await job(services)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker %s failed; retrying in %.0f s", name, every)
        await asyncio.sleep(every)


def channel_jobs(services: Services) -> tuple[dict[str, tuple[Job, float]], dict[str, Loop]]:
    """The periodic jobs and long-running loops of the channels that are on."""
    jobs: dict[str, tuple[Job, float]] = {}
    loops: dict[str, Loop] = {}
    if services.twilio is not None:
        from hub.media import MEDIA_EVERY, fetch_media
        from hub.sms_reconcile import Reconciler
        from hub.sms_sender import SmsSender

        sender = SmsSender(services, services.twilio)
        reconciler = Reconciler(services, services.twilio)
        loops["sms-sender"] = sender.run_forever
        every = services.settings.twilio_reconcile_every

        async def reconcile(_: Services) -> None:
            await reconciler.run_once()

        jobs["sms-reconcile"] = (reconcile, every)

        from hub import voice_reconcile

        twilio = services.twilio

        async def reconcile_voice(_: Services) -> None:
            await voice_reconcile.run_once(services, twilio)

        jobs["voice-reconcile"] = (reconcile_voice, every)
        jobs["mms-media"] = (fetch_media, MEDIA_EVERY)
    if services.settings.channel_enabled("smtp"):
        from hub.email_sender import EmailSender

        loops["email-sender"] = EmailSender(services).run_forever
    if services.settings.channel_enabled("imap"):
        from channels.email.imap import ImapConfig
        from hub.email_ingest import MailIngest

        mail = MailIngest(services)
        config = ImapConfig.from_settings(services.settings)

        async def watch_mail() -> None:
            # A failure ends the folder watchers; start them again after a pause.
            while True:
                try:
                    await mail.watch(config, asyncio.Event())
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("imap ingest stopped; restarting in 30 s")
                await asyncio.sleep(30)

        loops["imap-ingest"] = watch_mail
    return jobs, loops


class Workers:
    """Starts and stops the background jobs and loops."""

    def __init__(
        self,
        services: Services,
        jobs: dict[str, tuple[Job, float]] | None = None,
        loops: dict[str, Loop] | None = None,
    ) -> None:
        self.services = services
        if jobs is None and loops is None:
            extra_jobs, loops = channel_jobs(services)
            jobs = {**base_jobs(services.settings), **extra_jobs}
        self.jobs = jobs or {}
        self.loops = loops or {}
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start every job and loop as a task."""
        for name, (job, every) in self.jobs.items():
            self.tasks.append(
                asyncio.create_task(_loop(name, job, every, self.services), name=name)
            )
        for name, loop in self.loops.items():
            self.tasks.append(asyncio.create_task(loop(), name=name))
        log.info("workers started: %s", ", ".join([*self.jobs, *self.loops]) or "none")

    async def stop(self) -> None:
        """Cancel every job and wait for them to end.

        A cancellation can be absorbed below our code: SQLAlchemy's asyncio connection
        terminate (``connectors/asyncio.py``) and aiosqlite's close catch it while they
        tear down a connection that was cancelled mid-query, and the loop then goes on to
        its next round (seen as a shutdown that never ended). So a task still running
        after ``RECANCEL_EVERY`` is cancelled again, until it ends; one that raised
        instead of stopping is logged.
        """
        for task in self.tasks:
            task.cancel()
        pending = set(self.tasks)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=RECANCEL_EVERY)
            for task in pending:
                log.warning(
                    "worker %s did not stop when cancelled; cancelling again", task.get_name()
                )
                task.cancel()
        for task in self.tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error(
                    "worker %s ended with an error", task.get_name(), exc_info=task.exception()
                )
        self.tasks.clear()

    async def run_forever(self) -> None:
        """Run the jobs until cancelled (the ``worker`` command)."""
        self.start()
        try:
            await asyncio.gather(*self.tasks)
        finally:
            await self.stop()
