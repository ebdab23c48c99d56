"""The Twilio SMS channel: verify and parse webhooks (pure), send and look up (client).

Modules:

- ``signature``: X-Twilio-Signature over forms and JSON bodies (``verify``, ``sign``,
  ``public_url_for``).
- ``parse``: inbound SMS/MMS and status callbacks to timeline events, consent keywords.
- ``errors``: the error tree and ``classify`` (what a Twilio error code means for a retry).
- ``client``: ``TwilioClient`` on the SDK's async HTTP client, rebased to
  ``TWILIO_API_BASE``.
- ``sandbox``: the built-in fake Twilio (REST API, signed callbacks, customer phones).
- ``fixtures/``: payloads as Twilio sends them: ``inbound_*.txt`` go to
  ``/webhooks/twilio/sms``, ``status_*.txt`` to ``/webhooks/twilio/sms/status``.

Nothing is imported here: importing the package has no side effects.
"""
