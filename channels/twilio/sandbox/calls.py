"""The sandbox's telephone: calls that ring the hub, follow its TwiML, and get recorded.

Twilio Voice as the hub meets it (https://www.twilio.com/docs/voice/twiml):

- :meth:`Voice.call_hub` (``POST /sandbox/calls``) is a customer phoning one of our
  numbers: it POSTs the signed incoming-call webhook to ``hub_url + voice_path`` and
  runs the TwiML it answers;
- a call created through the REST API whose ``Url`` is the hub's fetches that TwiML when
  the called phone answers (click-to-call) and runs it;
- running TwiML: ``<Say>``/``<Play>``/``<Pause>`` take a moment; ``<Dial>`` makes a child
  leg (``ParentCallSid``) per ``<Client>``/``<Number>``, all ringing at once, each with
  the signed status callbacks its ``statusCallbackEvent`` asks for; the first one to
  answer is ``in-progress``, the others ``canceled``; ``record="record-from-answer"``
  records the conversation; then the ``action`` URL gets ``DialCallStatus`` and its
  TwiML goes on. ``<Enqueue>`` is bridged at once (or the caller hangs up) and its
  ``action`` gets ``QueueResult``. ``<Record>`` records the caller's message, posts the
  recording status callback, the transcription (``transcribeCallback``) and the
  ``action``. ``<Redirect>`` fetches another document; ``<Hangup>`` ends the call.
- when the call ends, the number's status callback (``hub_url + status_path``) gets
  ``completed`` with ``CallDuration``, as a Twilio number configured with a status
  callback URL does for incoming calls.

Who answers: a ``call_hub(answer=False)`` call is answered by no agent; a dialled or
created call to a number ending in ``0008`` is not answered (``no-answer``), ``0009`` is
``busy``; a ``<Client>`` or any other number answers. A caller with ``voicemail=None``
hangs up at the beep; with a text, that is the message they leave (and its transcript).

Recordings (``channels.twilio.sandbox.recordings``) are short generated WAV files served
at their Twilio URL behind HTTP Basic auth.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from channels.twilio.forms import encode_form
from channels.twilio.sandbox.recordings import (
    audio_response,
    delete_recording,
    recording_form,
    recording_resource,
    transcription_form,
    wav_tone,
)
from channels.twilio.sandbox.shapes import (
    API_VERSION,
    E164,
    call_resource,
    country,
    not_found,
    now_rfc2822,
)
from channels.twilio.signature import SIGNATURE_HEADER, sign

if TYPE_CHECKING:
    from channels.twilio.sandbox.app import Sandbox

__all__ = ["CALL_TEST_NUMBERS", "CallResult", "Voice", "behaviour"]

_log = logging.getLogger(__name__)

#: Last four digits of a dialled or created call's ``To`` -> how that phone answers.
CALL_TEST_NUMBERS = {"0008": "no-answer", "0009": "busy"}
#: Seconds a caller waits in a queue before hanging up when no agent takes the call.
QUEUE_PATIENCE = 30
#: Documents one call may fetch (``action``, ``<Redirect>``) before the sandbox stops it.
MAX_DOCUMENTS = 20
_TERMINAL = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
_STEP_EVENT = {"initiated": "initiated", "ringing": "ringing", "in-progress": "answered"}
_WAV_RATE = 8000


@dataclasses.dataclass(frozen=True, slots=True)
class CallResult:
    """What the hub answered when a customer phoned it through the sandbox."""

    sid: str
    status_code: int
    response_text: str


class _CallerGone(Exception):
    """The caller hung up: nothing more of the call's TwiML runs."""


@dataclasses.dataclass(slots=True)
class _Call:
    """A call whose TwiML is running."""

    resource: dict[str, Any]
    answer: bool = True
    voicemail: str | None = None
    elapsed: int = 0
    documents: int = 0


def behaviour(number: str) -> str:
    """How a dialled phone answers: ``answer``, ``no-answer`` or ``busy``."""
    return CALL_TEST_NUMBERS.get(number[-4:], "answer")


def _form_text(element: ET.Element) -> str:
    identity = element.find("Identity")
    text = identity.text if identity is not None else element.text
    return (text or "").strip()


class Voice:
    """The calls side of a :class:`~channels.twilio.sandbox.app.Sandbox`."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        #: Where the hub's number points: its voice URL and call status callback paths
        #: (``status_path`` None: the number has no status callback).
        self.voice_path = "/webhooks/twilio/voice"
        self.status_path: str | None = "/webhooks/twilio/voice/status"
        #: Recording resources by sid, oldest first, and their audio.
        self.recordings: dict[str, dict[str, Any]] = {}
        self.audio: dict[str, bytes] = {}
        #: Call statuses whose status callbacks are lost on the way (never delivered), as
        #: in an outage of the hub: the Calls resource still has them (fetch).
        self.drop_statuses: set[str] = set()
        #: Queue mode: the Voice URL path of the agents' TwiML App, and the client identity
        #: of the agent whose browser takes each queued caller (None: nobody calls in;
        #: the caller is bridged without a dequeue request, as before).
        self.agent_path = "/webhooks/twilio/voice/agent"
        self.queue_agent: str | None = "alice"

    # -- handles ---------------------------------------------------------------------------

    async def call_hub(
        self, from_: str, to: str, *, answer: bool = True, voicemail: str | None = None
    ) -> CallResult:
        """A customer at ``from_`` phones our number ``to``; runs the hub's TwiML.

        Returns once the hub has answered the webhook; the call goes on in the background
        (``Sandbox.settle`` waits for it). Raises ``httpx.HTTPError`` if the hub cannot be
        reached. https://www.twilio.com/docs/voice/twiml#request-parameters
        """
        sandbox = self.sandbox
        sid = sandbox._new_sid("CA")
        resource = call_resource(sandbox.account_sid, sid, from_, to)
        resource.update(direction="inbound", status="ringing", start_time=now_rfc2822())
        sandbox.calls[sid] = resource
        call = _Call(resource, answer=answer, voicemail=voicemail)
        url = sandbox.signing_url + self.voice_path
        response = await self._request(url, self._call_form(resource))
        if response is None:
            raise httpx.ConnectError("the hub could not be reached")
        if response.status_code == 200:
            resource["status"] = "in-progress"
            sandbox._spawn(self._run_inbound(call, response.text, url))
        else:
            self._end(call, "failed")
        return CallResult(sid, response.status_code, response.text)

    def routes(self, prefix: str) -> list[Route]:
        """The Recording media and resource routes, and ``POST /sandbox/calls``."""
        return [
            Route(f"{prefix}/Recordings/{{name}}", self._get_recording, methods=["GET"]),
            Route(f"{prefix}/Recordings/{{name}}", delete_recording, methods=["DELETE"]),
            Route("/sandbox/calls", self._post_call, methods=["POST"]),
        ]

    # -- created calls (REST) ------------------------------------------------------------------

    async def progress_created(self, sid: str, twiml_url: str | None) -> None:
        """A call created through the REST API: ring, answer (or not), run its TwiML.

        The TwiML ``Url`` is fetched only when it is the hub's; otherwise the call talks
        for ``call_duration`` seconds and completes, as before.
        """
        sandbox = self.sandbox
        resource, pending = sandbox.calls[sid], sandbox._pending[sid]
        call = _Call(resource)
        sequence = 0

        async def step(status: str) -> None:
            nonlocal sequence
            await asyncio.sleep(sandbox.callback_delay)
            self._set_status(resource, status)
            event = _STEP_EVENT.get(status, "completed")
            lost = status in self.drop_statuses
            if pending.callback and event in pending.events and not lost:
                await self._request(pending.callback, self._status_form(resource, sequence))
            sequence += 1

        await step("initiated")
        await step("ringing")
        outcome = behaviour(resource["to"])
        if outcome != "answer":
            await step(outcome)
            return
        await step("in-progress")
        if twiml_url and self._is_hub(twiml_url):
            form = self._call_form(resource)
            response = await self._request(twiml_url, form)
            if response is not None and response.status_code == 200:
                try:
                    await self._run(call, response.text, twiml_url)
                except _CallerGone:
                    pass
        else:
            call.elapsed = sandbox.call_duration
        resource["duration"] = str(max(call.elapsed, 1))
        await step("completed")

    # -- running TwiML -----------------------------------------------------------------------

    async def _run_inbound(self, call: _Call, twiml: str, url: str) -> None:
        try:
            await self._run(call, twiml, url)
        except _CallerGone:
            pass
        except Exception:
            _log.exception("sandbox call %s failed", call.resource["sid"])
        await asyncio.sleep(self.sandbox.callback_delay)
        self._end(call, "completed")
        if self.status_path is not None and "completed" not in self.drop_statuses:
            form = self._status_form(call.resource, None)
            await self._request(self.sandbox.signing_url + self.status_path, form)

    async def _run(self, call: _Call, twiml: str, url: str) -> None:
        while True:
            call.documents += 1
            if call.documents > MAX_DOCUMENTS:
                _log.warning("sandbox call %s fetched too many documents", call.resource["sid"])
                return
            try:
                root = ET.fromstring(twiml)  # noqa: S314 - the hub's own answer
            except ET.ParseError:
                return
            following: tuple[str, str] | None = None
            for verb in root:
                await asyncio.sleep(self.sandbox.callback_delay)
                if verb.tag in ("Say", "Play", "Pause"):
                    call.elapsed += 2
                elif verb.tag == "Hangup" or verb.tag == "Reject":
                    return
                elif verb.tag == "Redirect":
                    following = await self._fetch(call, urljoin(url, _form_text(verb)), [])
                elif verb.tag == "Dial":
                    following = await self._dial(call, verb, url)
                elif verb.tag == "Enqueue":
                    following = await self._enqueue(call, verb, url)
                elif verb.tag == "Record":
                    following = await self._record(call, verb, url)
                if following is not None:
                    break
            if following is None:
                return
            twiml, url = following

    async def _fetch(
        self, call: _Call, url: str, extra: list[tuple[str, str]]
    ) -> tuple[str, str] | None:
        response = await self._request(url, self._call_form(call.resource) + extra)
        if response is None or response.status_code != 200:
            return None
        return response.text, url

    async def _dial(self, call: _Call, dial: ET.Element, url: str) -> tuple[str, str] | None:
        sandbox = self.sandbox
        parent = call.resource
        caller_id = dial.get("callerId") or parent["from"]
        legs: list[tuple[dict[str, Any], ET.Element]] = []
        nouns = [n for n in dial if n.tag in ("Client", "Number")]
        if not nouns and (dial.text or "").strip():
            nouns = [ET.Element("Number")]
            nouns[0].text = (dial.text or "").strip()
        for noun in nouns:
            target = _form_text(noun)
            to = f"client:{target}" if noun.tag == "Client" else target
            leg = call_resource(sandbox.account_sid, sandbox._new_sid("CA"), caller_id, to)
            leg.update(direction="outbound-dial", parent_call_sid=parent["sid"])
            sandbox.calls[leg["sid"]] = leg
            legs.append((leg, noun))
        for status in ("initiated", "ringing"):
            await asyncio.sleep(sandbox.callback_delay)
            for leg, noun in legs:
                await self._leg_step(leg, noun, status)
        answering = None
        if call.answer:
            answering = next(
                (
                    leg
                    for leg, _ in legs
                    if leg["to"].startswith("client:") or behaviour(leg["to"]) == "answer"
                ),
                None,
            )
        params: list[tuple[str, str]] = []
        if answering is not None:
            await asyncio.sleep(sandbox.callback_delay)
            for leg, noun in legs:
                await self._leg_step(leg, noun, "in-progress" if leg is answering else "canceled")
            talk = sandbox.call_duration
            call.elapsed += talk
            answering["duration"] = str(talk)
            await asyncio.sleep(sandbox.callback_delay)
            answering_noun = next(n for leg, n in legs if leg is answering)
            await self._leg_step(answering, answering_noun, "completed")
            if (dial.get("record") or "").startswith("record-from-answer"):
                await self._recording(call, dial, talk, "DialVerb")
            params = [
                ("DialCallStatus", "completed"),
                ("DialCallSid", answering["sid"]),
                ("DialCallDuration", str(talk)),
                ("DialBridged", "true"),
            ]
        else:
            call.elapsed += int(dial.get("timeout") or 30)
            await asyncio.sleep(sandbox.callback_delay)
            outcomes = []
            for leg, noun in legs:
                outcome = behaviour(leg["to"])
                outcome = "no-answer" if outcome == "answer" else outcome
                outcomes.append(outcome)
                await self._leg_step(leg, noun, outcome)
            status = "busy" if outcomes and all(o == "busy" for o in outcomes) else "no-answer"
            params = [("DialCallStatus", status if legs else "failed"), ("DialBridged", "false")]
            if legs:
                params.append(("DialCallSid", legs[-1][0]["sid"]))
        action = dial.get("action")
        if not action:
            return None
        return await self._fetch(call, urljoin(url, action), params)

    async def _enqueue(self, call: _Call, verb: ET.Element, url: str) -> tuple[str, str] | None:
        queue_sid = "QU" + secrets.token_hex(16)
        if call.answer:
            waited, result = 5, "bridged"
            await self._dequeue(call, queue_sid, waited)
            call.elapsed += waited + self.sandbox.call_duration
        else:
            waited, result = QUEUE_PATIENCE, "hangup"
            call.elapsed += waited
        params = [("QueueResult", result), ("QueueSid", queue_sid), ("QueueTime", str(waited))]
        action = verb.get("action")
        following = await self._fetch(call, urljoin(url, action), params) if action else None
        if result == "hangup":
            raise _CallerGone
        return following

    async def _dequeue(self, call: _Call, queue_sid: str, waited: int) -> None:
        """An agent's browser client calls the hub, whose ``<Dial><Queue url>`` takes the
        caller: ``url`` is requested with the caller's CallSid and the agent's call.
        https://www.twilio.com/docs/voice/twiml/queue#url
        """
        sandbox = self.sandbox
        if self.queue_agent is None:
            return
        agent_url = sandbox.signing_url + self.agent_path
        agent_call = call_resource(
            sandbox.account_sid, sandbox._new_sid("CA"), f"client:{self.queue_agent}", ""
        )
        agent_call.update(direction="inbound", status="ringing")
        sandbox.calls[agent_call["sid"]] = agent_call
        response = await self._request(agent_url, self._call_form(agent_call))
        if response is None or response.status_code != 200:
            return
        try:
            root = ET.fromstring(response.text)  # noqa: S314 - the hub's own answer
        except ET.ParseError:
            return
        queue = root.find("Dial/Queue")
        target = queue.get("url") if queue is not None else None
        agent_call["status"] = "in-progress"
        if target:
            await self._request(
                urljoin(agent_url, target),
                [
                    *self._call_form(call.resource),
                    ("QueueSid", queue_sid),
                    ("QueueTime", str(waited)),
                    ("DequeingCallSid", agent_call["sid"]),
                ],
            )
        self._set_status(agent_call, "completed")

    async def _record(self, call: _Call, verb: ET.Element, url: str) -> tuple[str, str] | None:
        if call.voicemail is None:
            raise _CallerGone
        limit = int(verb.get("maxLength") or 3600)
        seconds = max(1, min(limit, len(call.voicemail.split()) // 2 + 1))
        call.elapsed += seconds
        recording = await self._recording(call, verb, seconds, "RecordVerb", post=False)
        action = urljoin(url, verb.get("action") or url)
        following = await self._fetch(
            call,
            action,
            [
                ("RecordingUrl", recording["media_url"]),
                ("RecordingDuration", str(seconds)),
                ("RecordingSid", recording["sid"]),
                ("Digits", "hangup"),
            ],
        )
        callback = verb.get("recordingStatusCallback")
        if callback:
            await self._request(
                urljoin(url, callback), recording_form(self.sandbox.account_sid, recording)
            )
        transcribe = verb.get("transcribeCallback")
        if verb.get("transcribe") == "true" and transcribe:
            form = transcription_form(
                self.sandbox.account_sid,
                call.resource,
                recording,
                call.voicemail or "",
                self.sandbox.base_url or "https://api.twilio.com",
            )
            await self._request(urljoin(url, transcribe), form)
        return following

    async def _recording(
        self, call: _Call, verb: ET.Element, seconds: int, source: str, *, post: bool = True
    ) -> dict[str, Any]:
        sandbox = self.sandbox
        recording = recording_resource(
            sandbox.account_sid,
            sandbox._new_sid("RE"),
            call.resource["sid"],
            seconds,
            source,
            sandbox.base_url or "https://api.twilio.com",
        )
        self.recordings[recording["sid"]] = recording
        self.audio[recording["sid"]] = wav_tone(seconds, recording["sid"])
        callback = verb.get("recordingStatusCallback")
        if post and callback:
            await self._request(callback, recording_form(sandbox.account_sid, recording))
        return recording

    async def _leg_step(self, leg: dict[str, Any], noun: ET.Element, status: str) -> None:
        self._set_status(leg, status)
        callback = noun.get("statusCallback")
        wanted = set((noun.get("statusCallbackEvent") or "completed").split())
        event = _STEP_EVENT.get(status, "completed")
        if callback and event in wanted and status not in self.drop_statuses:
            await self._request(callback, self._status_form(leg, None))

    # -- state and forms ---------------------------------------------------------------------

    @staticmethod
    def _set_status(resource: dict[str, Any], status: str) -> None:
        now = now_rfc2822()
        resource.update(status=status, date_updated=now)
        if status == "in-progress":
            resource["start_time"] = now
        if status in _TERMINAL:
            resource["end_time"] = now
            if status != "completed":
                resource["duration"] = "0"

    def _end(self, call: _Call, status: str) -> None:
        self._set_status(call.resource, status)
        call.resource["duration"] = str(max(call.elapsed, 1))

    def _call_form(self, resource: dict[str, Any]) -> list[tuple[str, str]]:
        """What Twilio sends about a call: https://www.twilio.com/docs/voice/twiml#request-parameters"""
        from_, to = resource["from"], resource["to"]
        params = [
            ("Called", to),
            ("ToState", ""),
            ("CallerCountry", country(from_)),
            ("Direction", resource["direction"]),
            ("CallerState", ""),
            ("ToZip", ""),
            ("CallSid", resource["sid"]),
            ("To", to),
            ("CallerZip", ""),
            ("ToCountry", country(to)),
            ("CalledZip", ""),
            ("ApiVersion", API_VERSION),
            ("CalledCity", ""),
            ("CallStatus", resource["status"]),
            ("From", from_),
            ("AccountSid", self.sandbox.account_sid),
            ("CalledCountry", country(to)),
            ("CallerCity", ""),
            ("ToCity", ""),
            ("FromCountry", country(from_)),
            ("Caller", from_),
            ("FromCity", ""),
            ("CalledState", ""),
            ("FromZip", ""),
            ("FromState", ""),
        ]
        if resource.get("parent_call_sid"):
            params.insert(1, ("ParentCallSid", resource["parent_call_sid"]))
        return params

    def _status_form(self, resource: dict[str, Any], sequence: int | None) -> list[tuple[str, str]]:
        """A status callback: https://www.twilio.com/docs/voice/api/call-resource#statuscallback"""
        params = self._call_form(resource)
        params += [
            ("Timestamp", resource["date_updated"]),
            ("CallbackSource", "call-progress-events"),
        ]
        if sequence is not None:
            params.append(("SequenceNumber", str(sequence)))
        if resource["status"] in _TERMINAL:
            seconds = int(resource.get("duration") or 0)
            params += [("CallDuration", str(seconds)), ("Duration", str(-(-seconds // 60)))]
        return params

    # -- HTTP ----------------------------------------------------------------------------------

    def _is_hub(self, url: str) -> bool:
        sandbox = self.sandbox
        return url.startswith(sandbox.signing_url + "/") or url.startswith(sandbox.hub_url + "/")

    def _target(self, url: str) -> str:
        """Where to send a request for ``url``: the hub's own address behind its proxy."""
        sandbox = self.sandbox
        if url.startswith(sandbox.signing_url + "/"):
            return sandbox.hub_url + url[len(sandbox.signing_url) :]
        return url

    async def _request(self, url: str, params: list[tuple[str, str]]) -> httpx.Response | None:
        """POST a signed form as Twilio does; the answer (None: no connection)."""
        # Imported here: app.py imports this module.
        from channels.twilio.sandbox.app import CallbackRecord

        sandbox = self.sandbox
        headers = {
            SIGNATURE_HEADER: sign(sandbox.auth_token, url, params),
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "TwilioProxy/1.1",
        }
        try:
            response = await sandbox._client().post(
                self._target(url), content=encode_form(params), headers=headers
            )
        except httpx.HTTPError as exc:
            _log.warning("sandbox voice request not delivered: %s", type(exc).__name__)
            sandbox.callbacks.append(CallbackRecord(url, tuple(params), None, type(exc).__name__))
            return None
        sandbox.callbacks.append(CallbackRecord(url, tuple(params), response.status_code))
        return response

    # -- routes --------------------------------------------------------------------------------

    async def _get_recording(self, request: Request) -> Response:
        if (denied := self.sandbox.denied(request)) is not None:
            return denied
        name = request.path_params["name"]
        sid, _, extension = name.partition(".")
        recording = self.recordings.get(sid)
        if recording is None or extension not in ("", "wav", "json"):
            return not_found(request.url.path)
        if extension == "json":
            return JSONResponse(recording)
        return audio_response(self.audio[sid], request.headers.get("range", ""))

    async def _post_call(self, request: Request) -> Response:
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return _error("invalid_json", "expected a JSON object")
        from_, to = payload.get("from"), payload.get("to")
        answer, message = payload.get("answer", True), payload.get("voicemail")
        if not isinstance(from_, str) or not E164.fullmatch(from_):
            return _error("invalid_from", "from must be an E.164 number")
        if not isinstance(to, str) or not E164.fullmatch(to):
            return _error("invalid_to", "to must be an E.164 number")
        if not isinstance(answer, bool) or not (message is None or isinstance(message, str)):
            return _error("invalid_body", "answer must be true or false, voicemail text")
        if self.sandbox.base_url is None:
            self.sandbox.base_url = str(request.base_url).rstrip("/")  # mounted
        try:
            result = await self.call_hub(from_, to, answer=answer, voicemail=message)
        except httpx.HTTPError as exc:
            return _error("hub_unreachable", type(exc).__name__, 502)
        return JSONResponse({"sid": result.sid, "hub_status": result.status_code})


def _error(code: str, message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
