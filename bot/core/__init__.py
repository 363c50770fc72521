"""The application core: the use cases, over the store and the playbooks.

``engine`` (alerts in, incidents, suggestions, the run use cases every front end
calls), ``runner`` (plan, approve, apply, verify, revert over the run state
machine in ``bot.base.run_states``), ``guards``, ``lifecycle`` (incident
statuses), ``recovery`` (crash-left claims), ``outbox`` (work after the webhook's
answer), ``messages`` and ``notifier`` (neutral messages out), ``suggestions``,
``postmortem``. No Slack, web framework or gateway driver is imported here
(import contracts check it); drivers arrive injected.
"""
