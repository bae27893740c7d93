"""Outgoing webhooks: events pushed to the user's endpoints, signed, durable, retried.

- :mod:`events`: the event types, payloads and filters (pure);
- :mod:`model`: endpoints, claims, attempts and verdicts;
- :mod:`policy`: backoff, giving up and disabling (pure);
- :mod:`signing`: secrets and Standard Webhooks signatures;
- :mod:`targets`: which URLs may be called (the SSRF guard);
- :mod:`poster`: one bounded HTTP POST in a worker thread;
- :mod:`dispatcher`: the delivery actor.

The SQL (outbox writers included) is in :mod:`mailpipe.store.webhooks`.
"""
