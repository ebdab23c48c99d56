"""Rendering for the console: the Jinja2 environment, event display and safe email HTML.

Email HTML is untrusted twice over: it is sanitized with nh3 (scripts, handlers, forms and
styles go; links get ``rel=noopener noreferrer``) and then shown in an ``<iframe sandbox
srcdoc>`` whose document carries ``Content-Security-Policy: default-src 'none'; img-src
data:``, so even what the sanitizer let through cannot run or fetch. Remote images are
dropped from the markup unless the agent asks for them; then the message is served from
``/ui/events/{id}/body?images=1`` (an iframe ``src`` with its own CSP allowing https
images), because a ``srcdoc`` document inherits the console's policy, which allows none.
"""

from __future__ import annotations

import functools
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import nh3
from markupsafe import Markup

from timeline.records import StoredEvent

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

EMAIL_CSP = "default-src 'none'; img-src data:"
EMAIL_CSP_IMAGES = "default-src 'none'; img-src data: https:"

#: Text badges of the channels (short, readable by a screen reader with the title).
BADGES = {
    "voice": ("Call", "badge-voice"),
    "sms": ("SMS", "badge-sms"),
    "email": ("Email", "badge-email"),
    "calendar": ("Meeting", "badge-calendar"),
    "social": ("Social", "badge-social"),
    "note": ("Note", "badge-note"),
    "document": ("Doc", "badge-document"),
    "survey": ("Survey", "badge-survey"),
    "review": ("Review", "badge-review"),
}

_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "code", "col", "colgroup", "dd",
    "del", "div", "dl", "dt", "em", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i",
    "img", "ins", "li", "ol", "p", "pre", "q", "s", "small", "span", "strong", "sub", "sup",
    "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul",
}  # fmt: skip


def sanitize_email(raw: str, *, remote_images: bool) -> tuple[str, int]:
    """Sanitized HTML of an email and how many remote images were left out."""
    dropped = 0

    def attribute_filter(tag: str, attr: str, value: str) -> str | None:
        nonlocal dropped
        if tag == "img" and attr == "src":
            lowered = value.strip().lower()
            if lowered.startswith("data:image/"):
                return value
            if remote_images and lowered.startswith("https://"):
                return value
            dropped += 1
            return None
        return value

    cleaned = nh3.clean(
        raw,
        tags=_TAGS,
        clean_content_tags={"script", "style", "title", "head"},
        attributes={
            "a": {"href", "title"},
            "img": {"src", "alt", "width", "height", "title"},
            "td": {"colspan", "rowspan"},
            "th": {"colspan", "rowspan"},
            "*": {"dir", "lang"},
        },
        attribute_filter=attribute_filter,
        url_schemes={"http", "https", "mailto", "tel", "data"},
    )
    return cleaned, dropped


def email_document(raw: str, *, remote_images: bool) -> tuple[str, int]:
    """A whole HTML document for the sandboxed iframe, with its CSP in a meta element."""
    body, dropped = sanitize_email(raw, remote_images=remote_images)
    csp = EMAIL_CSP_IMAGES if remote_images else EMAIL_CSP
    doc = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<base target="_blank"></head>'
        f"<body>{body}</body></html>"
    )
    return doc, dropped


def when(value: datetime | None) -> str:
    """A short UTC time for lists."""
    if value is None:
        return ""
    return value.strftime("%Y-%m-%d %H:%M UTC")


def duration(seconds: Any) -> str:
    """``m:ss`` of a call's duration."""
    try:
        total = int(seconds)
    except (TypeError, ValueError):
        return ""
    return f"{total // 60}:{total % 60:02d}"


@functools.lru_cache(maxsize=64)
def badge(channel: str) -> Markup:
    """The channel's text badge (made once per channel: a page shows dozens)."""
    label, css = BADGES.get(channel, (channel.title(), "badge-other"))
    return Markup('<span class="badge {}" title="{}">{}</span>').format(css, channel, label)


def is_missed(event: StoredEvent) -> bool:
    """Whether a call was missed (nobody answered)."""
    return bool(event.data.get("missed")) or (
        event.channel == "voice"
        and event.direction == "inbound"
        and event.status in ("no-answer", "busy", "canceled")
    )


def recording_of(event: StoredEvent) -> bool:
    """Whether a call has a recording to play."""
    recording = event.data.get("recording")
    return isinstance(recording, dict) and recording.get("status") == "completed"


def safe_email(event: StoredEvent) -> tuple[str, int]:
    """The sanitized document of an email (for the ``srcdoc`` attribute, which the
    template's autoescaping quotes) and how many remote images it leaves out: one
    sanitizer pass for both."""
    return email_document(event.html or "", remote_images=False)


def group_threads(items: list[StoredEvent]) -> list[tuple[StoredEvent, list[StoredEvent]]]:
    """Events with email threads folded: (newest of a thread, its older ones on the page)."""
    out: list[tuple[StoredEvent, list[StoredEvent]]] = []
    heads: dict[str, list[StoredEvent]] = {}
    for event in items:
        if event.channel == "email" and event.thread_key:
            older = heads.get(event.thread_key)
            if older is not None:
                older.append(event)
                continue
            older = []
            heads[event.thread_key] = older
            out.append((event, older))
        else:
            out.append((event, []))
    return out


def environment() -> jinja2.Environment:
    """The console's template environment (autoescaped)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        enable_async=False,
    )
    env.filters["when"] = when
    env.filters["duration"] = duration
    env.globals.update(
        badge=badge,
        is_missed=is_missed,
        has_recording=recording_of,
        safe_email=safe_email,
    )
    return env
