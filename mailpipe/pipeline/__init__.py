"""The pipeline: the actors that move a stored request to SES and its outcome back.

- :mod:`.scheduler` claims due rows and feeds the job channel;
- :mod:`.limiter` (one instance) and :mod:`.shared_rate` (several) hand out permits;
- :mod:`.sender` is the pool of provider calls;
- :mod:`.recorder` writes outcomes in batches;
- :mod:`.cluster` keeps an instance in step with the others (PostgreSQL);
- :mod:`.pause` and :mod:`.probe` hold sending while the account cannot send;
- :mod:`.metrics` counts, and reports every few seconds.

:mod:`.jobs` holds what travels between them, :mod:`.stops` what the pool
checks just before a call, :mod:`.backoff` the retry delays.
"""
