"""The hub's settings: one frozen, typed object read from the environment and a TOML file.

``load()`` reads ``HUB_CONFIG`` (a TOML file with the same keys, flat or as
``[hub]``-style tables of them) and the environment; the environment wins. Anything wrong
raises :class:`SettingsError` naming the key and why, which ``run.py`` prints as one line
before it exits with status 2. What each key means is in ``config/fields.py``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import phonenumbers

from config.fields import BY_ENV, CHANNEL_GROUPS, FIELDS, Field


class SettingsError(ValueError):
    """A setting is missing, malformed or half-given; ``key`` names it."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the hub, typed. Build it with :func:`load` (or directly in tests)."""

    database_url: str = "sqlite+aiosqlite:///./var/hub.db"
    public_url: str = "http://127.0.0.1:8000"
    secret_key: str | None = None
    default_region: str = "US"
    timezone: str = "UTC"
    data_dir: str = "./var/files"
    max_upload_bytes: int = 25 * 1024 * 1024
    log_level: str = "INFO"
    idempotency_ttl_hours: int = 24
    outbox_stale_after: float = 600.0
    retention_files_days: int = 0
    retention_recordings_days: int = 0
    retention_provider_data_days: int = 0
    retention_audit_days: int = 0
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = dataclasses.field(default=None, repr=False)
    twilio_numbers: tuple[str, ...] = ()
    twilio_api_base: str = "https://api.twilio.com"
    twilio_sms_rate: float = 1.0
    twilio_reconcile_every: float = 300.0
    twilio_help_text: str = "Reply STOP to stop messages, START to get them again."
    twilio_sandbox: bool = False
    twilio_voice_route: str = "clients"
    twilio_voice_clients: tuple[str, ...] = ()
    twilio_voice_agent_numbers: tuple[str, ...] = ()
    twilio_voice_queue: str = "support"
    twilio_voice_greeting: str | None = None
    twilio_voice_record: bool = False
    twilio_voice_timeout: int = 20
    twilio_voicemail_prompt: str = (
        "Sorry, nobody can take your call right now. Please leave a message after the tone."
    )
    twilio_agent_phone: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: str | None = dataclasses.field(default=None, repr=False)
    smtp_security: str = "starttls"
    smtp_from: str | None = None
    imap_host: str | None = None
    imap_port: int = 993
    imap_username: str | None = None
    imap_password: str | None = dataclasses.field(default=None, repr=False)
    imap_security: str = "tls"
    imap_mailboxes: tuple[str, ...] = ("INBOX",)
    imap_sync_days: int = 30
    caldav_url: str | None = None
    caldav_username: str | None = None
    caldav_password: str | None = dataclasses.field(default=None, repr=False)
    meta_app_secret: str | None = dataclasses.field(default=None, repr=False)
    meta_verify_token: str | None = dataclasses.field(default=None, repr=False)
    meta_access_token: str | None = dataclasses.field(default=None, repr=False)
    meta_graph_base: str = "https://graph.facebook.com"
    telegram_bot_token: str | None = dataclasses.field(default=None, repr=False)
    telegram_secret_token: str | None = dataclasses.field(default=None, repr=False)
    telegram_api_base: str = "https://api.telegram.org"

    def __repr__(self) -> str:
        shown = []
        for f in FIELDS:
            value = getattr(self, f.attr)
            if f.secret and value:
                value = "***"
            shown.append(f"{f.attr}={value!r}")
        return f"Settings({', '.join(shown)})"

    def channel_enabled(self, group: str) -> bool:
        """Whether every key a channel needs is given (``twilio``, ``smtp``, ...)."""
        return all(getattr(self, BY_ENV[key].attr) for key in CHANNEL_GROUPS[group])

    def require_secret_key(self) -> str:
        """The secret key, or a SettingsError for commands that cannot run without it."""
        if not self.secret_key:
            raise SettingsError("HUB_SECRET_KEY", "required to serve; set 32+ random chars")
        return self.secret_key

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is the embedded SQLite."""
        return self.database_url.startswith("sqlite")


def _convert(field: Field, raw: object) -> Any:
    if field.type == "list":
        if isinstance(raw, list):
            items = [str(v).strip() for v in raw]
        else:
            items = [part.strip() for part in str(raw).split(",")]
        return tuple(item for item in items if item)
    if isinstance(raw, (dict, list)):
        raise SettingsError(field.env, f"expected a single value, got {type(raw).__name__}")
    text = str(raw).strip()
    if field.type == "int":
        try:
            return int(text)
        except ValueError:
            raise SettingsError(field.env, f"expected a whole number, got {text!r}") from None
    if field.type == "float":
        try:
            value = float(text)
        except ValueError:
            raise SettingsError(field.env, f"expected a number, got {text!r}") from None
        if value < 0:
            raise SettingsError(field.env, "must not be negative")
        return value
    if field.type == "bool":
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(field.env, f"expected true or false, got {text!r}")
    if field.type == "choice":
        match = {c.lower(): c for c in field.choices}.get(text.lower())
        if match is None:
            raise SettingsError(field.env, f"expected one of {', '.join(field.choices)}")
        return match
    if field.type == "url":
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SettingsError(field.env, f"expected an http(s) URL, got {text!r}")
        return text.rstrip("/")
    return text


def _read_file(path: str) -> dict[str, object]:
    try:
        with Path(path).open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError("HUB_CONFIG", f"no such file: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError("HUB_CONFIG", f"{path} is not valid TOML: {exc}") from None
    flat: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key.upper() not in BY_ENV:
            # A table of keys, for readability: [twilio] TWILIO_NUMBERS = [...]
            for inner, inner_value in value.items():
                flat[inner.upper()] = inner_value
        else:
            flat[key.upper()] = value
    for key in flat:
        if key not in BY_ENV:
            raise SettingsError(key, f"unknown setting in {path}")
    return flat


def _is_e164(number: str) -> bool:
    if not number.startswith("+"):
        return False
    try:
        return phonenumbers.is_possible_number(phonenumbers.parse(number, None))
    except phonenumbers.NumberParseException:
        return False


def _validate(values: dict[str, Any], given: set[str]) -> None:
    region = values["default_region"].upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise SettingsError("HUB_DEFAULT_REGION", f"{region!r} is not a known region code")
    values["default_region"] = region
    try:
        zoneinfo.ZoneInfo(values["timezone"])
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise SettingsError("HUB_TIMEZONE", f"unknown time zone {values['timezone']!r}") from None
    url = values["database_url"]
    if not (url.startswith("sqlite+aiosqlite://") or url.startswith("postgresql+asyncpg://")):
        raise SettingsError(
            "HUB_DATABASE_URL", "expected sqlite+aiosqlite:///path or postgresql+asyncpg://..."
        )
    secret = values.get("secret_key")
    if secret is not None and len(secret) < 32:
        raise SettingsError("HUB_SECRET_KEY", "too short: use at least 32 random characters")
    if values["max_upload_bytes"] <= 0:
        raise SettingsError("HUB_MAX_UPLOAD_BYTES", "must be positive")
    for key, attr in (
        ("HUB_OUTBOX_STALE_AFTER", "outbox_stale_after"),
        ("TWILIO_RECONCILE_EVERY", "twilio_reconcile_every"),
    ):
        if values[attr] <= 0:
            raise SettingsError(key, "must be a positive number of seconds")
    for number in values["twilio_numbers"]:
        try:
            parsed = phonenumbers.parse(number, None)
        except phonenumbers.NumberParseException:
            raise SettingsError(
                "TWILIO_NUMBERS", "each number must be E.164 (+14155550100)"
            ) from None
        if not phonenumbers.is_possible_number(parsed):
            raise SettingsError("TWILIO_NUMBERS", "each number must be E.164 (+14155550100)")
    for key, numbers in (
        ("TWILIO_VOICE_AGENT_NUMBERS", values["twilio_voice_agent_numbers"]),
        (
            "TWILIO_AGENT_PHONE",
            [values["twilio_agent_phone"]] if values["twilio_agent_phone"] else [],
        ),
    ):
        for number in numbers:
            if not _is_e164(number):
                raise SettingsError(key, "each number must be E.164 (+14155550100)")
    if not 5 <= values["twilio_voice_timeout"] <= 600:
        raise SettingsError("TWILIO_VOICE_TIMEOUT", "must be between 5 and 600 seconds")
    for group, keys in CHANNEL_GROUPS.items():
        present = [k for k in keys if values.get(BY_ENV[k].attr)]
        if present and len(present) < len(keys):
            missing = [k for k in keys if k not in present]
            raise SettingsError(
                missing[0],
                f"missing while {', '.join(present)} is set: the {group} channel needs "
                f"{', '.join(keys)}",
            )
    if values["twilio_sandbox"]:
        base = urlsplit(values["twilio_api_base"])
        if base.scheme != "http" or base.hostname not in ("127.0.0.1", "localhost"):
            raise SettingsError(
                "TWILIO_SANDBOX", "needs TWILIO_API_BASE on loopback, e.g. http://127.0.0.1:8001"
            )
    # A non-default value for a channel's optional key with the channel off is a mistake.
    for env in given:
        field = BY_ENV[env]
        if field.group in CHANNEL_GROUPS and env not in CHANNEL_GROUPS[field.group]:
            if not any(values.get(BY_ENV[k].attr) for k in CHANNEL_GROUPS[field.group]):
                raise SettingsError(
                    env,
                    f"set, but the {field.group} channel is off: set "
                    f"{', '.join(CHANNEL_GROUPS[field.group])} too",
                )


def load(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read the settings from ``HUB_CONFIG`` and the environment (which wins).

    ``overrides`` (by attribute name) win over both; the command line uses them.
    Raises :class:`SettingsError` for anything wrong.
    """
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    config_path = env.get("HUB_CONFIG")
    if config_path:
        raw.update(_read_file(config_path))
    for field in FIELDS:
        if field.env in env:
            raw[field.env] = env[field.env]
    values: dict[str, Any] = {}
    given: set[str] = set()
    for field in FIELDS:
        if field.env in raw and not (field.type != "list" and str(raw[field.env]) == ""):
            values[field.attr] = _convert(field, raw[field.env])
            given.add(field.env)
        elif field.default is not None:
            values[field.attr] = _convert(field, field.default)
        else:
            values[field.attr] = None
    values.update(overrides)
    _validate(values, given)
    return Settings(**values)
