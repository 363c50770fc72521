"""The front ends and the composition root: everything that talks to the outside.

``cli`` and ``commands`` (one grammar for the CLI and Slack), ``web`` (FastAPI),
``slack/`` (bolt), ``scheduler`` (APScheduler), ``service`` (``serve``: wiring, the
HTTP loop and the core's own loop), ``settings`` (the only reader of environment
variables) and ``wiring`` (settings -> engine with its drivers). They translate
and call the core's use cases; none writes the store or moves a state itself.
"""
