"""The application core's shared rules: the run state machine and cross-process claims.

Everything here is pure and strictly typed (mypy --strict): no store, no driver,
no front end. The use cases that apply these rules live in ``bot.runner``
(runs), ``bot.engine`` (alerts, incidents) and ``bot.core.outbox`` (the work an
ingest leaves for after the webhook's answer).
"""
