"""TwiML, the hub's answers to Twilio Voice, built with the SDK's ``VoiceResponse``.

https://www.twilio.com/docs/voice/twiml. Pure: strings in, XML out.

- :func:`route_call` answers an incoming call: an optional greeting, then ring browser
  clients or agents' numbers at once (``<Dial>``) or queue the caller (``<Enqueue>``);
- :func:`voicemail` takes a message (``<Record>``, transcribed);
- :func:`bridge` dials the customer once the agent of a click-to-call answers;
- :func:`hangup` ends a call.

Every leg the hub dials reports ``initiated ringing answered completed`` to the status
callback it is given (``channels.twilio.voice.LEG_EVENTS``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from twilio.twiml.voice_response import Dial, VoiceResponse

from channels.twilio.voice import LEG_EVENTS

__all__ = ["VOICEMAIL_MAX_SECONDS", "Routing", "bridge", "hangup", "route_call", "voicemail"]

#: Twilio transcribes recordings up to two minutes long.
VOICEMAIL_MAX_SECONDS = 120


@dataclasses.dataclass(frozen=True, slots=True)
class Routing:
    """How inbound calls are routed (``TWILIO_VOICE_*`` settings)."""

    route: Literal["clients", "numbers", "queue"] = "clients"
    clients: tuple[str, ...] = ()
    numbers: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    queue: str = "support"
    greeting: str | None = None
    record: bool = False
    timeout: int = 20
    voicemail_prompt: str = "Please leave a message after the tone."


def _xml(response: VoiceResponse) -> str:
    xml: str = response.to_xml(xml_declaration=True)
    return xml


def _leg_callbacks(status_callback: str) -> dict[str, Any]:
    return {
        "status_callback": status_callback,
        "status_callback_event": " ".join(LEG_EVENTS),
        "status_callback_method": "POST",
    }


def _recording(record: bool, recording_callback: str) -> dict[str, Any]:
    if not record:
        return {}
    return {
        "record": "record-from-answer",
        "recording_status_callback": recording_callback,
        "recording_status_callback_event": "completed",
    }


def _add_voicemail(
    response: VoiceResponse, prompt: str, *, action: str, recording_callback: str
) -> None:
    response.say(prompt)
    response.record(
        action=action,
        method="POST",
        max_length=VOICEMAIL_MAX_SECONDS,
        play_beep=True,
        trim="trim-silence",
        recording_status_callback=recording_callback,
        recording_status_callback_event="completed",
        transcribe=True,
        transcribe_callback=recording_callback,
    )
    response.hangup()


def route_call(
    routing: Routing,
    *,
    dial_action: str,
    status_callback: str,
    recording_callback: str,
    voicemail_action: str,
) -> str:
    """The TwiML answer to an incoming call.

    An optional ``<Say>`` greeting, then ``<Dial>`` ringing every client identity or agent
    number at once (the first to answer takes the call; ``answerOnBridge`` keeps the
    caller hearing the ring until then) for ``timeout`` seconds, each leg reporting to
    ``status_callback``; or ``<Enqueue>`` into the queue. Either way Twilio then requests
    ``dial_action``, whose answer is :func:`voicemail` or :func:`hangup`. With nobody to
    ring the caller goes straight to voicemail. With ``record``, answered calls are
    recorded from the answer and reported to ``recording_callback``.
    https://www.twilio.com/docs/voice/twiml/dial, https://www.twilio.com/docs/voice/twiml/enqueue
    """
    response = VoiceResponse()
    if routing.greeting:
        response.say(routing.greeting)
    if routing.route == "queue":
        response.enqueue(routing.queue, action=dial_action, method="POST")
        return _xml(response)
    targets = routing.clients if routing.route == "clients" else routing.numbers
    if not targets:
        _add_voicemail(
            response,
            routing.voicemail_prompt,
            action=voicemail_action,
            recording_callback=recording_callback,
        )
        return _xml(response)
    dial = Dial(
        action=dial_action,
        method="POST",
        timeout=routing.timeout,
        answer_on_bridge=True,
        **_recording(routing.record, recording_callback),
    )
    for target in targets:
        if routing.route == "clients":
            dial.client(target, **_leg_callbacks(status_callback))
        else:
            dial.number(target, **_leg_callbacks(status_callback))
    response.append(dial)
    return _xml(response)


def voicemail(prompt: str, *, action: str, recording_callback: str) -> str:
    """``<Say>`` the prompt, ``<Record>`` a message (transcribed), then hang up.

    The recording and its transcription are reported to ``recording_callback``;
    ``action`` is requested when recording ends (it must answer :func:`hangup`: without
    an action Twilio would request the current document again).
    https://www.twilio.com/docs/voice/twiml/record
    """
    response = VoiceResponse()
    _add_voicemail(response, prompt, action=action, recording_callback=recording_callback)
    return _xml(response)


def bridge(
    number: str,
    *,
    caller_id: str,
    status_callback: str,
    action: str,
    record: bool = False,
    recording_callback: str = "",
    announcement: str | None = None,
) -> str:
    """The TwiML of a click-to-call once the agent answers: dial the customer.

    The customer sees ``caller_id`` (one of our numbers); their leg reports to
    ``status_callback`` and ``action`` is requested when it ends.
    https://www.twilio.com/docs/voice/twiml/number
    """
    response = VoiceResponse()
    if announcement:
        response.say(announcement)
    dial = Dial(
        action=action,
        method="POST",
        caller_id=caller_id,
        answer_on_bridge=True,
        **_recording(record, recording_callback),
    )
    dial.number(number, **_leg_callbacks(status_callback))
    response.append(dial)
    return _xml(response)


def dequeue(queue: str, *, url: str) -> str:
    """An agent takes the caller who waited longest in ``queue``: ``<Dial><Queue url>``.

    Twilio requests ``url`` (with the caller's ``CallSid`` and the agent's
    ``DequeingCallSid``) just before bridging them; its answer plays to the caller.
    https://www.twilio.com/docs/voice/twiml/queue
    """
    response = VoiceResponse()
    dial = Dial()
    dial.queue(queue, url=url, method="POST")
    response.append(dial)
    return _xml(response)


def empty() -> str:
    """``<Response/>``: nothing to do (the caller is bridged at once)."""
    return _xml(VoiceResponse())


def hangup(announcement: str | None = None) -> str:
    """End the call (after an optional ``<Say>``). https://www.twilio.com/docs/voice/twiml/hangup"""
    response = VoiceResponse()
    if announcement:
        response.say(announcement)
    response.hangup()
    return _xml(response)
