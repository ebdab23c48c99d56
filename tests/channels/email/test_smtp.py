"""Sending against a real SMTP server (aiosmtpd): security modes, AUTH, failure classes."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from channels.email.backoff import Backoff
from channels.email.compose import compose_message, message_id_of
from channels.email.errors import (
    AuthenticationError,
    OutcomeUnknownError,
    PermanentSendError,
    TransientSendError,
)
from channels.email.parse import parse_message
from channels.email.smtp import SmtpConfig, send_message, send_with_retry
from config.settings import Settings
from tests.channels.email.conftest import OURS
from tests.peers import free_port
from tests.peers.smtp import SmtpPeer, StartSmtp

pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")


def _config(peer: SmtpPeer, **overrides: object) -> SmtpConfig:
    values: dict[str, object] = {
        "host": peer.host,
        "port": peer.port,
        "security": peer.security,
        "username": peer.username,
        "password": peer.password,
        "tls_context": peer.client_tls_context,
        "timeout": 5.0,
    }
    values.update(overrides)
    return SmtpConfig(**values)  # type: ignore[arg-type]


def _message(**overrides: object) -> EmailMessage:
    values: dict[str, object] = {
        "from_addr": "Support <support@commhub.test>",
        "to": ["Jane <jane.doe@example.org>"],
        "bcc": ["audit@commhub.test"],
        "subject": "Your appointment \u2013 tomorrow",
        "text": "See you at 10:00. Grüße",
    }
    values.update(overrides)
    return compose_message(**values)  # type: ignore[arg-type]


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def test_starttls_with_auth_delivers_the_message_as_composed(
    smtp_server: StartSmtp,
) -> None:
    peer = smtp_server(security="starttls", auth=True)
    msg = _message()
    message_id = message_id_of(msg)  # known (and stored by the outbox) before DATA
    result = await send_message(msg, _config(peer))
    assert result.message_id == message_id
    assert result.accepted == ("jane.doe@example.org", "audit@commhub.test")
    assert result.refused == {}
    assert "queued as Q1" in result.response
    [received] = peer.messages
    assert received.tls and received.authenticated
    assert received.mail_from == "support@commhub.test"
    assert received.rcpt_tos == ("jane.doe@example.org", "audit@commhub.test")
    assert b"Bcc" not in received.content and b"audit@" not in received.content
    parsed = parse_message(received.content, our_addresses=OURS)
    assert parsed.message_id == message_id
    assert parsed.event.text == "See you at 10:00. Grüße"


async def test_implicit_tls_and_plain_both_send(smtp_server: StartSmtp) -> None:
    for security in ("tls", "none"):
        peer = smtp_server(security=security)
        await send_message(_message(), _config(peer))
        assert len(peer.messages) == 1 and peer.messages[0].tls is (security == "tls")


async def test_raw_bytes_from_the_outbox_are_sent_with_their_envelope(
    smtp_server: StartSmtp,
) -> None:
    peer = smtp_server()
    msg = _message()
    result = await send_message(msg.as_bytes(), _config(peer))
    assert result.message_id == message_id_of(msg)
    assert peer.messages[0].rcpt_tos == ("jane.doe@example.org", "audit@commhub.test")


async def test_4xx_is_transient_and_succeeds_on_retry(smtp_server: StartSmtp) -> None:
    peer = smtp_server(security="starttls", auth=True)
    peer.fail_next("data", "451 4.3.0 Try again later")
    with pytest.raises(TransientSendError) as caught:
        await send_message(_message(), _config(peer))
    assert caught.value.code == 451 and caught.value.retryable
    assert peer.messages == []

    peer.fail_next("data", "451 4.3.0 Try again later")
    sleeps = Sleeps()
    msg = _message()
    result = await send_with_retry(msg, _config(peer), sleep=sleeps, backoff=Backoff(base=2))
    assert len(sleeps.delays) == 1 and 1.6 <= sleeps.delays[0] <= 2.4
    assert [parse_message(m.content, our_addresses=OURS).message_id for m in peer.messages] == [
        message_id_of(msg)
    ]
    assert result.message_id == message_id_of(msg)


async def test_5xx_is_permanent_with_the_servers_reason_and_not_retried(
    smtp_server: StartSmtp,
) -> None:
    peer = smtp_server()
    reason = "5.1.1 <jane.doe@example.org>: Recipient address rejected: User unknown"
    peer.fail_next("rcpt", f"550 {reason}", times=2)
    sleeps = Sleeps()
    with pytest.raises(PermanentSendError) as caught:
        await send_with_retry(_message(), _config(peer), sleep=sleeps)
    error = caught.value
    assert error.code == 550 and error.reason == reason and not error.retryable
    assert error.recipients == ("jane.doe@example.org", "audit@commhub.test")
    assert sleeps.delays == [] and peer.messages == []


async def test_5xx_on_data_is_permanent(smtp_server: StartSmtp) -> None:
    peer = smtp_server()
    peer.fail_next("data", "554 5.7.1 Message rejected as spam")
    with pytest.raises(PermanentSendError) as caught:
        await send_message(_message(), _config(peer))
    assert caught.value.code == 554 and "spam" in caught.value.reason


async def test_some_recipients_refused_is_a_partial_success(smtp_server: StartSmtp) -> None:
    peer = smtp_server()
    peer.fail_next("rcpt", "550 5.1.1 User unknown")
    result = await send_message(_message(), _config(peer))
    assert result.refused == {"jane.doe@example.org": (550, "5.1.1 User unknown")}
    assert result.accepted == ("audit@commhub.test",)
    assert peer.messages[0].rcpt_tos == ("audit@commhub.test",)


async def test_552_to_rcpt_counts_as_transient(smtp_server: StartSmtp) -> None:
    peer = smtp_server()
    peer.fail_next("rcpt", "552 5.2.2 Mailbox full")
    with pytest.raises(TransientSendError) as caught:
        await send_message(_message(bcc=[]), _config(peer))
    assert caught.value.code == 452


async def test_wrong_password_is_an_authentication_error(smtp_server: StartSmtp) -> None:
    peer = smtp_server(security="starttls", auth=True)
    with pytest.raises(AuthenticationError) as caught:
        await send_message(_message(), _config(peer, password="wrong"))
    assert caught.value.code == 535


async def test_starttls_required_but_not_offered_is_permanent(smtp_server: StartSmtp) -> None:
    peer = smtp_server(security="none")
    with pytest.raises(PermanentSendError):
        await send_message(_message(), _config(peer, security="starttls"))
    assert peer.messages == []


async def test_no_server_is_transient() -> None:
    config = SmtpConfig(host="127.0.0.1", port=free_port(), security="none", timeout=2)
    with pytest.raises(TransientSendError) as caught:
        await send_message(_message(), config)
    assert caught.value.code is None


async def test_lost_answer_to_data_is_an_unknown_outcome(smtp_server: StartSmtp) -> None:
    peer = smtp_server()
    peer.handler.hang_next_data(1.5)
    with pytest.raises(OutcomeUnknownError):
        await send_message(_message(), _config(peer, timeout=0.5))
    # Why no blind resend: the server had taken the message.
    assert len(peer.messages) == 1


def test_config_from_settings() -> None:
    settings = Settings(
        smtp_host="smtp.example.com",
        smtp_port=465,
        smtp_security="tls",
        smtp_username="u",
        smtp_password="s3cret-pw",
        smtp_from="support@example.com",
    )
    config = SmtpConfig.from_settings(settings)
    assert (config.host, config.port, config.security, config.username) == (
        "smtp.example.com",
        465,
        "tls",
        "u",
    )
    assert "s3cret" not in repr(config)
    with pytest.raises(ValueError):
        SmtpConfig.from_settings(Settings())
