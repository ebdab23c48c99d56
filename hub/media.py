"""The media fetcher: inbound MMS media become stored documents.

Twilio's incoming-message webhook names each media item by URL (``MediaUrl{N}``,
https://www.twilio.com/docs/messaging/guides/webhook-request); ingest keeps each as a
document with ``source_url`` set and ``sha256`` NULL (size 0): pending. The worker job
:func:`fetch_media` makes them real. Each round:

1. takes up to :data:`BATCH` pending documents, oldest first, leaving out those given up
   or not yet due for a retry (below; filtered in SQL, so dead ones never fill a batch);
2. downloads them with httpx, :data:`CONCURRENCY` at a time, streaming into the
   FileStore with a cap of :data:`MAX_MEDIA_BYTES`: Twilio takes at most 5 MB of media
   per message (https://www.twilio.com/docs/messaging/api/media-resource), so anything
   bigger is more than an MMS can carry and is refused (by Content-Length before
   reading, else when the stream passes the cap) without keeping a byte;
3. per event, in one transaction: sets ``sha256`` and ``size`` on its documents (only
   where ``sha256`` is still NULL: a second worker that fetched the same file, or an
   erasure meanwhile, wins and the file left behind is an unreferenced blob), the
   ``size`` in the event's ``attachments`` summary, and its ``data["media_errors"]``;
   then publishes the changed event to ``services.publisher`` ("timeline").

Credentials. Twilio enforces HTTP Basic auth for media URLs ("Authentication required"
on https://www.twilio.com/docs/messaging/api/media-resource). The account sid and auth
token are sent only to Twilio's origin: the URL's scheme, host and port equal those of
``TWILIO_API_BASE`` (the sandbox, a fake) or of ``https://api.twilio.com`` (plain
``http://api.twilio.com`` never gets them). Any other URL is fetched *without*
credentials, not refused: media of other channels can be public URLs, and these URLs
come from signed webhooks. Redirects are followed (at most :data:`MAX_REDIRECTS`);
httpx drops the Authorization header whenever a redirect leaves the origin (media
handed out from a CDN on another host; the sandbox's ``media_redirect`` imitates it),
and never adds it on a redirect into Twilio's origin; ``tests/hub/media`` checks both
against servers that record the header.

Failures are kept in the owning event's ``data["media_errors"][document_id]``:
``{"error", "status", "attempts", "failed_at", "retry_at" | "gave_up_at"}``. The schema
has no column for it, and skip-and-log would either retry a dead URL every round
forever or need state that a restart loses; in the event, the state is shared by every
worker process, survives restarts, lets the selection skip given-up documents, and
shows agents (the event JSON carries ``data``) why an attachment has no file. A
success removes the entry; removing a given-up entry by hand makes the next round try
again (after fixing a rotated auth token, say). The rules:

- a refusal (any 4xx but 408/425/429, e.g. 401 with a stale auth token or 404 for
  deleted media; a non-http(s) URL; a redirect loop) is retried next round, and given
  up on the :data:`MAX_ATTEMPTS`-th failed attempt;
- over the size cap: given up at once (the same file will not get smaller);
- network errors, timeouts, 408/425/429 and 5xx: retried next round, then with
  doubling delays (:data:`RETRY_FIRST` up to :data:`RETRY_MAX`), given up after
  :data:`MAX_TRANSIENT_ATTEMPTS` (about 11 hours of outage).

Timestamps in the entry are fixed-width UTC (``2024-05-01T12:00:00.000000Z``), so the
selection compares them as text on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from config import Settings
from hub.services import Services
from timeline.events import utcnow
from timeline.files import FileStore, TooLarge
from timeline.records import StoredEvent
from timeline.schema import documents, events

__all__ = [
    "BATCH",
    "MAX_MEDIA_BYTES",
    "MEDIA_EVERY",
    "MediaRound",
    "credentials_for",
    "fetch_media",
    "fetch_round",
    "media_client",
]

log = logging.getLogger(__name__)

#: Twilio's limit of media per message: "up to 5MB".
MAX_MEDIA_BYTES = 5 * 1024 * 1024
#: Pending documents taken per round.
BATCH = 50
#: Downloads at once.
CONCURRENCY = 4
#: Failed attempts after which a refused (4xx) download is given up.
MAX_ATTEMPTS = 3
#: Failed attempts after which a download that only met network trouble is given up.
MAX_TRANSIENT_ATTEMPTS = 20
#: The delay before the first retry (the job runs more often: the next round retries).
RETRY_FIRST = timedelta(seconds=10)
#: The longest delay between retries.
RETRY_MAX = timedelta(hours=1)
#: Seconds between rounds of the worker job.
MEDIA_EVERY = 15.0
#: Seconds one download may take in all (read timeouts alone would let a trickle go on).
DOWNLOAD_SECONDS = 120.0
MAX_REDIRECTS = 5
#: The key of the failures in the event's ``data``.
ERRORS_KEY = "media_errors"

_TWILIO_ORIGIN = ("https", "api.twilio.com", 443)
_TRANSIENT_STATUS = frozenset({408, 425, 429})

FailureKind = Literal["refused", "transient", "too_large"]


@dataclasses.dataclass(frozen=True, slots=True)
class MediaRound:
    """What one round did: documents tried, stored, failed (and of those, given up)."""

    attempted: int = 0
    fetched: int = 0
    failed: int = 0
    gave_up: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class _Pending:
    doc_id: str
    event_id: str
    url: str


@dataclasses.dataclass(frozen=True, slots=True)
class _Stored:
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True, slots=True)
class _Failed:
    kind: FailureKind
    error: str
    status: int | None = None


_Outcome = _Stored | _Failed


def _origin(url: str) -> tuple[str, str, int] | None:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        return None
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


def credentials_for(url: str, settings: Settings) -> tuple[str, str] | None:
    """The (account sid, auth token) to send with ``url``: only to Twilio's origin.

    Twilio's origin is ``TWILIO_API_BASE``'s scheme, host and port, or
    ``https://api.twilio.com``; None for every other URL, or when the account is not set.
    """
    sid, token = settings.twilio_account_sid, settings.twilio_auth_token
    origin = _origin(url)
    if not sid or not token or origin is None:
        return None
    if origin in (_origin(settings.twilio_api_base), _TWILIO_ORIGIN):
        return sid, token
    return None


def media_client(timeout: float = 30.0) -> httpx.AsyncClient:
    """An httpx client for media: follows up to :data:`MAX_REDIRECTS` redirects."""
    return httpx.AsyncClient(
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        timeout=httpx.Timeout(timeout, connect=10.0),
        headers={"User-Agent": "commhub-media-fetcher"},
    )


def _stamp(when: datetime) -> str:
    """Fixed-width UTC, comparable as text."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _error_field(dialect: str, field: str) -> sa.ColumnElement[Any]:
    """``events.data["media_errors"][documents.id][field]`` as text (NULL if absent)."""
    if dialect == "postgresql":
        return sa.func.jsonb_extract_path_text(events.c.data, ERRORS_KEY, documents.c.id, field)
    # Document ids are hex digits: nothing in them needs escaping inside the quotes.
    path = sa.literal(f'$.{ERRORS_KEY}."') + documents.c.id + sa.literal(f'".{field}')
    return sa.func.json_extract(events.c.data, path)


async def _pending(conn: AsyncConnection, batch: int, now: datetime) -> list[_Pending]:
    dialect = conn.dialect.name
    retry_at = _error_field(dialect, "retry_at")
    query = (
        sa.select(documents.c.id, documents.c.event_id, documents.c.source_url)
        .join(events, events.c.id == documents.c.event_id)
        .where(
            documents.c.source_url.is_not(None),
            documents.c.sha256.is_(None),
            _error_field(dialect, "gave_up_at").is_(None),
            sa.or_(retry_at.is_(None), retry_at <= _stamp(now)),
        )
        .order_by(documents.c.created_at, documents.c.id)
        .limit(batch)
    )
    rows = await conn.execute(query)
    return [_Pending(r.id, r.event_id, r.source_url) for r in rows]


def _status_failure(status: int) -> _Failed:
    transient = status in _TRANSIENT_STATUS or status >= 500
    return _Failed("transient" if transient else "refused", f"HTTP {status}", status)


async def _download(
    http: httpx.AsyncClient,
    files: FileStore,
    url: str,
    credentials: tuple[str, str] | None,
    max_bytes: int,
) -> _Outcome:
    """Stream one URL into the file store, or say why not."""
    if _origin(url) is None:
        return _Failed("refused", "not an http(s) URL")
    too_large = f"more than {max_bytes} bytes (Twilio's MMS limit is 5 MB)"
    try:
        async with asyncio.timeout(DOWNLOAD_SECONDS):
            async with http.stream("GET", url, auth=credentials, follow_redirects=True) as response:
                if response.status_code != 200:
                    return _status_failure(response.status_code)
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    return _Failed("too_large", too_large, 200)
                sha, size = await files.put_stream(response.aiter_bytes(), max_bytes)
    except TooLarge:
        return _Failed("too_large", too_large, 200)
    except TimeoutError:
        return _Failed("transient", f"no answer within {DOWNLOAD_SECONDS:.0f} s")
    except httpx.TooManyRedirects:
        return _Failed("refused", f"more than {MAX_REDIRECTS} redirects")
    except httpx.UnsupportedProtocol:
        return _Failed("refused", "redirected to a URL that is not http(s)")
    except httpx.TransportError as exc:
        return _Failed("transient", type(exc).__name__)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return _Failed("refused", type(exc).__name__)
    return _Stored(sha, size)


def _failure_entry(previous: Any, failure: _Failed, now: datetime) -> dict[str, Any]:
    """The ``media_errors`` entry after another failed attempt."""
    attempts = 1
    if isinstance(previous, dict) and isinstance(previous.get("attempts"), int):
        attempts = previous["attempts"] + 1
    entry: dict[str, Any] = {
        "error": failure.error,
        "status": failure.status,
        "attempts": attempts,
        "failed_at": _stamp(now),
    }
    give_up = (
        failure.kind == "too_large"
        or (failure.kind == "refused" and attempts >= MAX_ATTEMPTS)
        or attempts >= MAX_TRANSIENT_ATTEMPTS
    )
    if give_up:
        entry["gave_up_at"] = _stamp(now)
    else:
        delay = min(RETRY_FIRST * 2 ** (attempts - 1), RETRY_MAX)
        entry["retry_at"] = _stamp(now + delay)
    return entry


async def _record(
    conn: AsyncConnection,
    event_id: str,
    outcomes: Sequence[tuple[_Pending, _Outcome]],
    now: datetime,
) -> tuple[StoredEvent | None, MediaRound]:
    """Write one event's outcomes; the changed event (None if nothing changed)."""
    row = (
        (await conn.execute(sa.select(events).where(events.c.id == event_id).with_for_update()))
        .mappings()
        .one_or_none()
    )
    if row is None:  # erased while we downloaded
        return None, MediaRound()
    attachments = [dict(a) for a in row["attachments"] or []]
    data = dict(row["data"] or {})
    errors = dict(data.get(ERRORS_KEY) or {})
    fetched = failed = gave_up = 0
    for item, outcome in outcomes:
        if isinstance(outcome, _Stored):
            result = await conn.execute(
                documents.update()
                .where(documents.c.id == item.doc_id, documents.c.sha256.is_(None))
                .values(sha256=outcome.sha256, size=outcome.size)
            )
            if result.rowcount != 1:
                continue
            for summary in attachments:
                if summary.get("id") == item.doc_id:
                    summary["size"] = outcome.size
            errors.pop(item.doc_id, None)
            fetched += 1
            continue
        still_pending = (
            await conn.execute(
                sa.select(documents.c.id).where(
                    documents.c.id == item.doc_id, documents.c.sha256.is_(None)
                )
            )
        ).first()
        if still_pending is None:
            continue
        entry = _failure_entry(errors.get(item.doc_id), outcome, now)
        errors[item.doc_id] = entry
        failed += 1
        gave_up += "gave_up_at" in entry
        log.log(
            logging.WARNING if "gave_up_at" in entry else logging.INFO,
            "media of document %s: %s (attempt %d%s)",
            item.doc_id,
            outcome.error,
            entry["attempts"],
            ", given up" if "gave_up_at" in entry else "",
        )
    if not fetched and not failed:
        return None, MediaRound()
    if errors:
        data[ERRORS_KEY] = errors
    else:
        data.pop(ERRORS_KEY, None)
    await conn.execute(
        events.update()
        .where(events.c.id == event_id)
        .values(attachments=attachments, data=data, updated_at=utcnow())
    )
    fresh = (await conn.execute(sa.select(events).where(events.c.id == event_id))).mappings().one()
    counts = MediaRound(fetched + failed, fetched, failed, gave_up)
    return StoredEvent.from_row(fresh), counts


async def fetch_round(
    services: Services,
    *,
    http: httpx.AsyncClient | None = None,
    batch: int = BATCH,
    max_bytes: int = MAX_MEDIA_BYTES,
    now: datetime | None = None,
) -> MediaRound:
    """One round of the fetcher (see the module docstring); what it did.

    ``http`` is the client to use (default: a new :func:`media_client` for the round);
    ``now`` is the time retries are due by and failures are stamped with.
    """
    now = now or utcnow()
    async with services.db.read() as conn:
        pending = await _pending(conn, batch, now)
    if not pending:
        return MediaRound()
    by_event: dict[str, list[_Pending]] = {}
    for item in pending:
        by_event.setdefault(item.event_id, []).append(item)
    gate = asyncio.Semaphore(CONCURRENCY)
    settings = services.settings

    async def download(item: _Pending, client: httpx.AsyncClient) -> _Outcome:
        async with gate:
            credentials = credentials_for(item.url, settings)
            return await _download(client, services.files, item.url, credentials, max_bytes)

    async def one_event(
        event_id: str, items: list[_Pending], client: httpx.AsyncClient
    ) -> MediaRound:
        outcomes = await asyncio.gather(*(download(item, client) for item in items))
        async with services.db.write() as conn:
            changed, counts = await _record(
                conn, event_id, list(zip(items, outcomes, strict=True)), now
            )
        if changed is not None:
            services.publisher.publish("timeline", changed)
        return counts

    async with contextlib.AsyncExitStack() as stack:
        client = http if http is not None else await stack.enter_async_context(media_client())
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(one_event(event_id, items, client))
                for event_id, items in by_event.items()
            ]
    rounds = [task.result() for task in tasks]
    return MediaRound(
        attempted=len(pending),
        fetched=sum(r.fetched for r in rounds),
        failed=sum(r.failed for r in rounds),
        gave_up=sum(r.gave_up for r in rounds),
    )


async def fetch_media(
    services: Services,
    *,
    http: httpx.AsyncClient | None = None,
    batch: int = BATCH,
    max_bytes: int = MAX_MEDIA_BYTES,
    now: datetime | None = None,
) -> None:
    """The worker job: one :func:`fetch_round`, logged (``hub.workers`` runs it)."""
    done = await fetch_round(services, http=http, batch=batch, max_bytes=max_bytes, now=now)
    if done.attempted:
        log.info(
            "media: %d tried, %d stored, %d failed (%d given up)",
            done.attempted,
            done.fetched,
            done.failed,
            done.gave_up,
        )
