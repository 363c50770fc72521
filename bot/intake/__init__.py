"""Alerts in: webhook bodies (Alertmanager, Grafana, generic JSON) -> ``Alert``.

``alert`` is the normalised alert, ``parse`` reads each source's format with exact
field paths in its errors, ``fields`` bounds what a label or annotation may hold.
"""
