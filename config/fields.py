"""Every setting of the hub, documented in one place.

This table is the single source of the settings: ``config.settings.Settings`` is read
through it, ``.env.example`` and the README's configuration table are generated from it
(``python run.py config --env-example`` / ``--markdown``), and a test keeps them in step.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

FieldType = Literal["str", "int", "float", "bool", "list", "choice", "url"]


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    """One setting: its environment name, type, default and meaning."""

    env: str
    attr: str
    type: FieldType
    default: str | None
    doc: str
    group: str = "hub"
    secret: bool = False
    choices: tuple[str, ...] = ()
    #: Shown in docs instead of the default (for a default computed elsewhere).
    default_doc: str | None = None


#: Settings that switch a channel on: all of ``required`` given means on, none means off,
#: some means a start-up error naming the missing ones.
CHANNEL_GROUPS: dict[str, tuple[str, ...]] = {
    "twilio": ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_NUMBERS"),
    "smtp": ("SMTP_HOST", "SMTP_FROM"),
    "imap": ("IMAP_HOST", "IMAP_USERNAME", "IMAP_PASSWORD"),
    "caldav": ("CALDAV_URL", "CALDAV_USERNAME", "CALDAV_PASSWORD"),
    "meta": ("META_APP_SECRET", "META_VERIFY_TOKEN", "META_ACCESS_TOKEN"),
    "telegram": ("TELEGRAM_BOT_TOKEN", "TELEGRAM_SECRET_TOKEN"),
}

FIELDS: tuple[Field, ...] = (
    # -- the hub itself
    Field(
        "HUB_DATABASE_URL",
        "database_url",
        "str",
        "sqlite+aiosqlite:///./var/hub.db",
        "SQLAlchemy URL; `postgresql+asyncpg://user@host/db` for several processes",
    ),
    Field(
        "HUB_PUBLIC_URL",
        "public_url",
        "url",
        "http://127.0.0.1:8000",
        "base URL providers and customers reach; checks webhook signatures, builds links",
    ),
    Field(
        "HUB_SECRET_KEY",
        "secret_key",
        "str",
        None,
        "signs sessions and tracking tokens; at least 32 characters",
        secret=True,
        default_doc="(required by `serve`; `demo` makes one)",
    ),
    Field(
        "HUB_DEFAULT_REGION",
        "default_region",
        "str",
        "US",
        "region (ISO 3166 code) for phone numbers written without a country code",
    ),
    Field(
        "HUB_TIMEZONE",
        "timezone",
        "str",
        "UTC",
        "business time zone (IANA name), for quiet hours when a customer's is unknown",
    ),
    Field(
        "HUB_DATA_DIR",
        "data_dir",
        "str",
        "./var/files",
        "folder for documents and attachments (content-addressed files)",
    ),
    Field(
        "HUB_MAX_UPLOAD_BYTES",
        "max_upload_bytes",
        "int",
        "26214400",
        "largest document upload in bytes (bigger is refused with 413)",
    ),
    Field(
        "HUB_LOG_LEVEL",
        "log_level",
        "choice",
        "INFO",
        "log level; personal data (bodies, numbers, addresses) appears only at DEBUG",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    ),
    Field(
        "HUB_IDEMPOTENCY_TTL_HOURS",
        "idempotency_ttl_hours",
        "int",
        "24",
        "how long a stored `Idempotency-Key` answer is replayed before it is forgotten",
    ),
    Field(
        "HUB_OUTBOX_STALE_AFTER",
        "outbox_stale_after",
        "float",
        "600",
        "seconds a send may stay claimed before its worker is taken for dead; the outcome "
        "then becomes unknown and reconciliation asks the provider, never resends blindly "
        "(keep it well above a send's timeout)",
    ),
    Field(
        "HUB_RETENTION_FILES_DAYS",
        "retention_files_days",
        "int",
        "0",
        "delete document, attachment and MMS files older than this (the document row stays "
        "as a marker); 0 keeps them",
    ),
    Field(
        "HUB_RETENTION_RECORDINGS_DAYS",
        "retention_recordings_days",
        "int",
        "0",
        "delete call recordings older than this at the provider (the call keeps a marker); "
        "0 keeps them",
    ),
    Field(
        "HUB_RETENTION_PROVIDER_DATA_DAYS",
        "retention_provider_data_days",
        "int",
        "0",
        "remove caller location and caller name sent by providers from events older than "
        "this; 0 keeps them",
    ),
    Field(
        "HUB_RETENTION_AUDIT_DAYS",
        "retention_audit_days",
        "int",
        "0",
        "delete audit records older than this; 0 keeps them",
    ),
    # -- Twilio (SMS and Voice)
    Field(
        "TWILIO_ACCOUNT_SID",
        "twilio_account_sid",
        "str",
        None,
        "Twilio account SID (`AC...`)",
        group="twilio",
    ),
    Field(
        "TWILIO_AUTH_TOKEN",
        "twilio_auth_token",
        "str",
        None,
        "Twilio auth token; also checks X-Twilio-Signature",
        group="twilio",
        secret=True,
    ),
    Field(
        "TWILIO_NUMBERS",
        "twilio_numbers",
        "list",
        "",
        "comma-separated E.164 numbers that belong to us (the first is the default sender)",
        group="twilio",
    ),
    Field(
        "TWILIO_API_BASE",
        "twilio_api_base",
        "url",
        "https://api.twilio.com",
        "where the Twilio REST API is (the sandbox or a test fake points it at loopback)",
        group="twilio",
    ),
    Field(
        "TWILIO_SMS_RATE",
        "twilio_sms_rate",
        "float",
        "1",
        "messages per second per sending number (0 turns the limit off)",
        group="twilio",
    ),
    Field(
        "TWILIO_RECONCILE_EVERY",
        "twilio_reconcile_every",
        "float",
        "300",
        "seconds between reconciliation rounds with Twilio: lost status callbacks, sends "
        "with an unknown outcome, lost inbound webhooks, calls left open",
        group="twilio",
    ),
    Field(
        "TWILIO_HELP_TEXT",
        "twilio_help_text",
        "str",
        "Reply STOP to stop messages, START to get them again.",
        "the answer to an SMS of HELP or INFO",
        group="twilio",
    ),
    Field(
        "TWILIO_VOICE_ROUTE",
        "twilio_voice_route",
        "choice",
        "clients",
        "who an inbound call rings: `clients` (browser clients), `numbers` (agents' phones) "
        "or `queue` (a Twilio queue)",
        group="twilio",
        choices=("clients", "numbers", "queue"),
    ),
    Field(
        "TWILIO_VOICE_CLIENTS",
        "twilio_voice_clients",
        "list",
        "",
        "comma-separated browser client identities rung at once (route `clients`); "
        "none: straight to voicemail",
        group="twilio",
    ),
    Field(
        "TWILIO_VOICE_AGENT_NUMBERS",
        "twilio_voice_agent_numbers",
        "list",
        "",
        "comma-separated E.164 numbers of agents' phones rung at once (route `numbers`)",
        group="twilio",
    ),
    Field(
        "TWILIO_VOICE_QUEUE",
        "twilio_voice_queue",
        "str",
        "support",
        "the queue callers wait in (route `queue`)",
        group="twilio",
    ),
    Field(
        "TWILIO_VOICE_GREETING",
        "twilio_voice_greeting",
        "str",
        None,
        "said to every caller before ringing the agents; unset: none",
        group="twilio",
    ),
    Field(
        "TWILIO_VOICE_RECORD",
        "twilio_voice_record",
        "bool",
        "false",
        "record answered calls (from the answer); agents play them through the hub",
        group="twilio",
    ),
    Field(
        "TWILIO_VOICE_TIMEOUT",
        "twilio_voice_timeout",
        "int",
        "20",
        "seconds the agents' phones ring before the caller is offered voicemail (5-600)",
        group="twilio",
    ),
    Field(
        "TWILIO_VOICEMAIL_PROMPT",
        "twilio_voicemail_prompt",
        "str",
        "Sorry, nobody can take your call right now. Please leave a message after the tone.",
        "said before recording a voicemail",
        group="twilio",
    ),
    Field(
        "TWILIO_AGENT_PHONE",
        "twilio_agent_phone",
        "str",
        None,
        "the phone click-to-call rings first when the request names none (E.164)",
        group="twilio",
    ),
    Field(
        "TWILIO_SANDBOX",
        "twilio_sandbox",
        "bool",
        "false",
        "serve the built-in provider sandbox on loopback at TWILIO_API_BASE (`demo` sets it)",
        group="twilio",
    ),
    # -- email out
    Field("SMTP_HOST", "smtp_host", "str", None, "outgoing mail server", group="smtp"),
    Field("SMTP_PORT", "smtp_port", "int", "587", "its port", group="smtp"),
    Field("SMTP_USERNAME", "smtp_username", "str", None, "login, if any", group="smtp"),
    Field("SMTP_PASSWORD", "smtp_password", "str", None, "password", group="smtp", secret=True),
    Field(
        "SMTP_SECURITY",
        "smtp_security",
        "choice",
        "starttls",
        "`starttls`, `tls` or `none`",
        group="smtp",
        choices=("starttls", "tls", "none"),
    ),
    Field("SMTP_FROM", "smtp_from", "str", None, "From address of outgoing mail", group="smtp"),
    # -- email in
    Field("IMAP_HOST", "imap_host", "str", None, "mailbox server to ingest", group="imap"),
    Field("IMAP_PORT", "imap_port", "int", "993", "its port", group="imap"),
    Field("IMAP_USERNAME", "imap_username", "str", None, "login", group="imap"),
    Field("IMAP_PASSWORD", "imap_password", "str", None, "password", group="imap", secret=True),
    Field(
        "IMAP_SECURITY",
        "imap_security",
        "choice",
        "tls",
        "`tls` or `none`",
        group="imap",
        choices=("tls", "none"),
    ),
    Field(
        "IMAP_MAILBOXES",
        "imap_mailboxes",
        "list",
        "INBOX",
        "comma-separated folders to follow",
        group="imap",
    ),
    Field(
        "IMAP_SYNC_DAYS",
        "imap_sync_days",
        "int",
        "30",
        "how many days back the first sync of a folder reads (newest first)",
        group="imap",
    ),
    # -- calendars
    Field("CALDAV_URL", "caldav_url", "url", None, "CalDAV server (principal URL)", "caldav"),
    Field("CALDAV_USERNAME", "caldav_username", "str", None, "login", group="caldav"),
    Field(
        "CALDAV_PASSWORD",
        "caldav_password",
        "str",
        None,
        "password",
        group="caldav",
        secret=True,
    ),
    # -- Meta
    Field(
        "META_APP_SECRET",
        "meta_app_secret",
        "str",
        None,
        "app secret; checks X-Hub-Signature-256",
        group="meta",
        secret=True,
    ),
    Field(
        "META_VERIFY_TOKEN",
        "meta_verify_token",
        "str",
        None,
        "token of the subscription handshake",
        group="meta",
        secret=True,
    ),
    Field(
        "META_ACCESS_TOKEN",
        "meta_access_token",
        "str",
        None,
        "page / WhatsApp access token for sending",
        group="meta",
        secret=True,
    ),
    Field(
        "META_GRAPH_BASE",
        "meta_graph_base",
        "url",
        "https://graph.facebook.com",
        "where the Graph API is",
        group="meta",
    ),
    # -- Telegram
    Field(
        "TELEGRAM_BOT_TOKEN",
        "telegram_bot_token",
        "str",
        None,
        "bot token",
        group="telegram",
        secret=True,
    ),
    Field(
        "TELEGRAM_SECRET_TOKEN",
        "telegram_secret_token",
        "str",
        None,
        "checks X-Telegram-Bot-Api-Secret-Token (1-256 of `A-Za-z0-9_-`)",
        group="telegram",
        secret=True,
    ),
    Field(
        "TELEGRAM_API_BASE",
        "telegram_api_base",
        "url",
        "https://api.telegram.org",
        "where the Bot API is",
        group="telegram",
    ),
)

BY_ENV: dict[str, Field] = {f.env: f for f in FIELDS}


def env_example() -> str:
    """The text of ``.env.example``: every setting, commented, with its default."""
    lines = [
        "# commhub settings. Copy to .env or export them; HUB_CONFIG=hub.toml may hold the",
        "# same keys. Generated from config/fields.py: python run.py config --env-example",
    ]
    group = ""
    for f in FIELDS:
        if f.group != group:
            group = f.group
            lines += ["", f"# --- {group}"]
        lines.append(f"# {f.doc}")
        value = f.default if f.default is not None else ""
        lines.append(f"# {f.env}={value}" if not f.secret else f"# {f.env}=")
    return "\n".join(lines) + "\n"


def markdown_table() -> str:
    """The README's configuration table."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in FIELDS:
        if f.default_doc is not None:
            default = f.default_doc
        elif f.default:
            default = f"`{f.default}`"
        else:
            default = ""
        rows.append(f"| {f.env} | {default} | {f.doc} |")
    return "\n".join(rows) + "\n"
