"""Settings: environment and TOML, validation, and the generated docs kept in step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import config
from config.fields import FIELDS, env_example, markdown_table
from config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_contract() -> None:
    s = config.load({})
    assert s.database_url == "sqlite+aiosqlite:///./var/hub.db"
    assert s.public_url == "http://127.0.0.1:8000"
    assert s.default_region == "US"
    assert s.timezone == "UTC"
    assert s.twilio_api_base == "https://api.twilio.com"
    assert s.twilio_sms_rate == 1.0
    assert s.smtp_port == 587 and s.smtp_security == "starttls"
    assert s.imap_port == 993 and s.imap_security == "tls"
    assert s.imap_mailboxes == ("INBOX",)
    assert s.secret_key is None
    assert not s.channel_enabled("twilio")


def test_every_field_is_a_settings_attribute_and_back() -> None:
    attrs = {f.name for f in dataclasses.fields(Settings)}
    assert {f.attr for f in FIELDS} == attrs
    for field in FIELDS:
        assert field.doc, f"{field.env} has no documentation"


def test_settings_are_frozen() -> None:
    s = config.load({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.default_region = "DE"  # type: ignore[misc]


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "hub.toml"
    toml.write_text(
        'HUB_DEFAULT_REGION = "DE"\nHUB_TIMEZONE = "Europe/Berlin"\n'
        '[twilio]\nTWILIO_ACCOUNT_SID = "AC1"\nTWILIO_AUTH_TOKEN = "t"\n'
        'TWILIO_NUMBERS = ["+14155550199", "+14155550198"]\n'
    )
    s = config.load({"HUB_CONFIG": str(toml), "HUB_DEFAULT_REGION": "gb"})
    assert s.default_region == "GB"
    assert s.timezone == "Europe/Berlin"
    assert s.twilio_numbers == ("+14155550199", "+14155550198")
    assert s.channel_enabled("twilio")


@pytest.mark.parametrize(
    ("env", "key", "words"),
    [
        ({"HUB_DEFAULT_REGION": "XX"}, "HUB_DEFAULT_REGION", "region"),
        ({"HUB_TIMEZONE": "Mars/Olympus"}, "HUB_TIMEZONE", "time zone"),
        ({"HUB_MAX_UPLOAD_BYTES": "lots"}, "HUB_MAX_UPLOAD_BYTES", "whole number"),
        ({"HUB_OUTBOX_STALE_AFTER": "0"}, "HUB_OUTBOX_STALE_AFTER", "positive"),
        ({"TWILIO_RECONCILE_EVERY": "-5"}, "TWILIO_RECONCILE_EVERY", "negative"),
        ({"TWILIO_RECONCILE_EVERY": "0"}, "TWILIO_RECONCILE_EVERY", "positive"),
        ({"HUB_PUBLIC_URL": "ftp://x"}, "HUB_PUBLIC_URL", "http"),
        ({"HUB_DATABASE_URL": "mysql://x"}, "HUB_DATABASE_URL", "sqlite"),
        ({"HUB_SECRET_KEY": "short"}, "HUB_SECRET_KEY", "32"),
        ({"HUB_LOG_LEVEL": "LOUD"}, "HUB_LOG_LEVEL", "one of"),
        ({"TWILIO_ACCOUNT_SID": "AC1"}, "TWILIO_AUTH_TOKEN", "twilio"),
        ({"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t"}, "TWILIO_NUMBERS", "twilio"),
        (
            {
                "TWILIO_ACCOUNT_SID": "AC1",
                "TWILIO_AUTH_TOKEN": "t",
                "TWILIO_NUMBERS": "+14155550199",
                "TWILIO_SANDBOX": "true",
            },
            "TWILIO_SANDBOX",
            "loopback",
        ),
        ({"SMTP_HOST": "mail.example"}, "SMTP_FROM", "smtp"),
        ({"SMTP_PORT": "465"}, "SMTP_PORT", "channel is off"),
        (
            {"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t", "TWILIO_NUMBERS": "555"},
            "TWILIO_NUMBERS",
            "E.164",
        ),
        ({"TWILIO_SMS_RATE": "-1"}, "TWILIO_SMS_RATE", "negative"),
    ],
)
def test_bad_settings_name_the_key(env: dict[str, str], key: str, words: str) -> None:
    with pytest.raises(config.SettingsError) as info:
        config.load(env)
    assert info.value.key == key
    assert words.lower() in str(info.value).lower()
    assert "\n" not in str(info.value)


def test_bad_file_is_an_error(tmp_path: Path) -> None:
    broken = tmp_path / "hub.toml"
    broken.write_text("HUB_TIMEZONE = \n")
    with pytest.raises(config.SettingsError, match="HUB_CONFIG"):
        config.load({"HUB_CONFIG": str(broken)})
    unknown = tmp_path / "other.toml"
    unknown.write_text('HUB_COLOUR = "blue"\n')
    with pytest.raises(config.SettingsError, match="HUB_COLOUR"):
        config.load({"HUB_CONFIG": str(unknown)})
    with pytest.raises(config.SettingsError, match="no such file"):
        config.load({"HUB_CONFIG": str(tmp_path / "missing.toml")})


def test_secrets_are_never_shown() -> None:
    s = config.load(
        {
            "HUB_SECRET_KEY": "s" * 40,
            "TWILIO_ACCOUNT_SID": "AC1",
            "TWILIO_AUTH_TOKEN": "very-secret-token",
            "TWILIO_NUMBERS": "+14155550199",
        }
    )
    assert "very-secret-token" not in repr(s)
    assert "s" * 40 not in repr(s)


def test_env_example_is_generated_from_the_fields() -> None:
    assert (ROOT / ".env.example").read_text() == env_example()
    for field in FIELDS:
        assert field.env in env_example()


def test_readme_table_is_generated_from_the_fields() -> None:
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme
