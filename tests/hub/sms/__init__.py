"""The hub's SMS path end to end against the Twilio sandbox."""
