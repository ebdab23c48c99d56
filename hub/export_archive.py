"""The GDPR export as one archive: the JSON export plus every file of the customer.

GDPR Art. 15(3) (a copy of the personal data) and Art. 20 (a commonly used,
machine-readable format): a ZIP (``zipfile``, PKWARE APPNOTE) holding

- ``export.json``: exactly what ``GET /api/v1/customers/{id}/export`` answers;
- ``files/<document id>-<file name>``: every stored document of the customer, whatever
  its channel (uploads, email attachments, MMS media);
- ``recordings/<event id>-<recording sid>.wav``: the audio of every completed call
  recording, fetched from the provider, where recordings stay
  (https://www.twilio.com/docs/voice/api/recording#fetch-a-recording-media-file);
- ``manifest.json``: each file with its SHA-256 and size, and each file that could not be
  included with the reason (``pending``: MMS media not fetched yet; ``deleted``: removed
  by retention; ``missing``: not on disk; ``provider``: the provider could not give it).

The archive is built in a temporary folder (not in memory) and deleted once sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import httpx

from channels.twilio.voice import recording_media_url
from config import Settings
from timeline.files import FileStore

_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def safe_name(name: str, fallback: str = "file") -> str:
    """A file name that is one harmless path segment inside the archive."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE.sub("_", base).strip(" .")[:100]
    return cleaned or fallback


def recordings_of(export: dict[str, Any]) -> list[tuple[str, str]]:
    """(event id, recording sid) of every completed recording in an export."""
    found = []
    for event in export["events"]:
        recording = (event.get("data") or {}).get("recording")
        if (
            isinstance(recording, dict)
            and recording.get("status") == "completed"
            and isinstance(recording.get("sid"), str)
        ):
            found.append((str(event["id"]), recording["sid"]))
    return found


async def _fetch_recording(
    client: httpx.AsyncClient, settings: Settings, sid: str, target: Path
) -> str | None:
    """Download one recording to ``target``; None, or why it could not be had."""
    assert settings.twilio_account_sid
    url = recording_media_url(settings.twilio_api_base, settings.twilio_account_sid, sid)
    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                return f"provider answered {response.status_code}"
            with target.open("wb") as fh:
                async for chunk in response.aiter_bytes(64 * 1024):
                    fh.write(chunk)
    except httpx.HTTPError as exc:
        return f"provider unreachable ({type(exc).__name__})"
    return None


def _write_zip(
    path: Path,
    export: dict[str, Any],
    purged: set[str],
    files: FileStore,
    recordings: list[tuple[str, Path]],
    manifest: dict[str, Any],
) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("export.json", json.dumps(export, ensure_ascii=False, indent=2))
        for doc in export["documents"]:
            sha = doc.get("sha256")
            name = f"files/{doc['id']}-{safe_name(doc['filename'])}"
            if not sha:
                reason = "deleted" if doc["id"] in purged else "pending"
                manifest["not_included"].append({"document_id": doc["id"], "reason": reason})
                continue
            source = files.path(sha)
            if not source.is_file():
                manifest["not_included"].append({"document_id": doc["id"], "reason": "missing"})
                continue
            archive.write(source, name)
            manifest["files"].append(
                {"path": name, "document_id": doc["id"], "sha256": sha, "size": doc["size"]}
            )
        for name, local in recordings:
            archive.write(local, name)
            digest = hashlib.sha256(local.read_bytes()).hexdigest()
            entry = {"path": name, "sha256": digest, "size": local.stat().st_size}
            manifest["files"].append(entry)
        archive.writestr("manifest.json", json.dumps(manifest, ensure_ascii=False, indent=2))


async def build(
    export: dict[str, Any], purged: set[str], files: FileStore, settings: Settings
) -> tuple[Path, Path, dict[str, Any]]:
    """Write the archive; (its path, the temporary folder to delete after, the manifest).

    ``purged``: ids of documents whose file retention deleted.
    """
    folder = Path(tempfile.mkdtemp(prefix="export-"))
    try:
        manifest: dict[str, Any] = {
            "customer_id": export["customer"]["id"],
            "exported_at": export["exported_at"],
            "files": [],
            "not_included": [],
        }
        fetched: list[tuple[str, Path]] = []
        wanted = recordings_of(export)
        if wanted and not (settings.twilio_account_sid and settings.twilio_auth_token):
            for event_id, sid in wanted:
                manifest["not_included"].append(
                    {"event_id": event_id, "recording_sid": sid, "reason": "provider off"}
                )
        elif wanted:
            async with httpx.AsyncClient(
                auth=(settings.twilio_account_sid or "", settings.twilio_auth_token or ""),
                timeout=httpx.Timeout(60.0, connect=10.0),
                follow_redirects=True,
            ) as client:
                for event_id, sid in wanted:
                    local = folder / f"{safe_name(event_id)}-{safe_name(sid)}.wav"
                    error = await _fetch_recording(client, settings, sid, local)
                    if error is None:
                        fetched.append((f"recordings/{local.name}", local))
                    else:
                        manifest["not_included"].append(
                            {"event_id": event_id, "recording_sid": sid, "reason": error}
                        )
        path = folder / "export.zip"
        await asyncio.to_thread(_write_zip, path, export, purged, files, fetched, manifest)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return path, folder, manifest
