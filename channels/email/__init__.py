"""The email channel: IMAP ingestion, SMTP sending, threading, attachments, bounces.

Pure parts (no I/O, tested from ``fixtures/``):

- ``parse``: raw RFC 5322/MIME bytes -> :class:`~timeline.events.Event` (never raises);
  ``dsn``: delivery reports (RFC 3464/3463); ``body``, ``mime``, ``htmltext``: helpers.
- ``threading``: thread keys from Message-ID/In-Reply-To/References (RFC 5322 3.6.4).
- ``compose``: outgoing messages with their Message-ID made before sending.

Clients (I/O, tested against real servers from ``tests/peers``):

- ``smtp``: send via aiosmtplib, failures classified transient/permanent/unknown.
- ``imap``: a typed aioimaplib client; ``mailsync``: checkpointed folder sync and the
  IDLE/poll watch loop, with storage injected by the caller.

Errors are in ``errors`` (its docstring draws the tree). Nothing here imports the store
or the web app: the hub wires checkpoints, ingestion and the outbox to these functions.
"""
