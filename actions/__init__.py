"""Mitigations and the drivers that apply them to a serving stack.

Nothing here imports Slack or a web framework: an action is pure planning over
the serving policy, a driver is the one place that touches a real target.
"""
