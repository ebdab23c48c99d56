"""The built-in Twilio sandbox: a fake Twilio, in memory, that the real SDK talks to.

It speaks the REST paths and JSON shapes of the Message and Call resources
(https://www.twilio.com/docs/messaging/api/message-resource,
https://www.twilio.com/docs/voice/api/call-resource) behind HTTP Basic auth (account
sid and auth token), answers errors as Twilio does (``{"code": 21610, "message": ...,
"more_info": ..., "status": 400}``) and, after a create, POSTs status callbacks signed
with the auth token to the message's ``StatusCallback``, as Twilio would
(https://www.twilio.com/docs/messaging/guides/outbound-message-status-in-status-callbacks):
none for the initial ``queued``, then ``sent`` and ``delivered``, or a failure. Point
``TWILIO_API_BASE`` at it.

Test numbers, by the last four digits of ``To``:

======  ==========================================================
0005    sent, then undelivered with ErrorCode 30005 (unknown handset)
0003    sent, then undelivered with ErrorCode 30003 (unreachable: retry once)
0007    sent, then undelivered with ErrorCode 30007 (filtered by the carrier)
0001    failed with ErrorCode 30001 (queue overflow: back off)
other   sent, then delivered
======  ==========================================================

Opted-out numbers (:meth:`Sandbox.opt_out`, ``POST /sandbox/opt-outs``
``{"number", "from"?}``, or a customer texting STOP, which Twilio itself honours for
that pair of numbers) make a create answer 400 with code 21610; ``DELETE
/sandbox/opt-outs/{number}`` lifts it. :meth:`Sandbox.fail_next_create` makes the next
create fail (429, 500, ...), if asked after the message was accepted.

Customers' phones: :meth:`Sandbox.text_hub` or ``POST /sandbox/sms`` ``{"from", "to",
"body", "media_urls"?, "media"?}`` POSTs a signed inbound-SMS form, with Twilio's field
set, to the hub's ``/webhooks/twilio/sms`` and delivers the ``<Message>`` replies of its
TwiML. ``GET /sandbox/phones/{number}/messages`` lists what a phone sent and received.

MMS media (https://www.twilio.com/docs/messaging/api/media-resource): ``media_urls`` go
into the form as given; each :class:`MediaFile` of ``media`` (bytes and content type,
or only a type for a small generated PNG, JPEG, GIF or text) becomes a Media resource
hosted by the sandbox at ``{base}/2010-04-01/Accounts/{AccountSid}/Messages/
{MessageSid}/Media/{MediaSid}``, behind HTTP Basic auth as Twilio enforces for media
URLs, with ``.json``, ``Media.json`` and ``DELETE`` as the REST API has them
(``channels.twilio.sandbox.media``; ``Sandbox.media_redirect`` imitates the redirect to
a CDN on another origin).

Calls (``channels.twilio.sandbox.calls``): :meth:`Sandbox.call_hub` or ``POST
/sandbox/calls`` ``{"from", "to", "answer"?, "voicemail"?}`` is a customer phoning our
number: the signed incoming-call webhook goes to the hub's ``/webhooks/twilio/voice``
and the sandbox runs the TwiML it answers (``<Dial>`` legs with ``ParentCallSid`` and
their signed status callbacks, ``action`` requests, ``<Enqueue>``, ``<Record>`` with a
generated WAV recording served behind Basic auth at its Twilio URL, transcription
callbacks), then the number's status callback gets ``completed``. Calls can be created
and fetched through the REST API; a created call goes initiated, ringing, in-progress,
completed, with signed callbacks for the ``StatusCallbackEvent`` values asked for
(default ``completed``), and runs its TwiML ``Url`` when that is the hub's (click-to-call);
a ``To`` ending in 0008 is not answered, 0009 is busy.

Serve it with ``async with run_sandbox(sandbox) as base_url: ...`` (uvicorn on a
loopback port, in the running loop), or mount ``sandbox.app``. State lives in memory.
"""

from __future__ import annotations

from channels.twilio.sandbox.app import CallbackRecord, Sandbox, TextResult, create_app
from channels.twilio.sandbox.calls import CallResult
from channels.twilio.sandbox.media import MediaFile
from channels.twilio.sandbox.server import run_sandbox, serve

__all__ = [
    "CallResult",
    "CallbackRecord",
    "MediaFile",
    "Sandbox",
    "TextResult",
    "create_app",
    "run_sandbox",
    "serve",
]
