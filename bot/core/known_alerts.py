"""Alerts already committed, kept in memory so repeats skip the store.

Alertmanager re-sends every alert of a group on each ``group_interval`` and
``repeat_interval``: in a storm most of what arrives is already stored. This
bounded map of ``(fingerprint, startsAt) -> (incident id, status)`` answers those
repeats without a transaction (they are durable already), and from any thread,
so the webhook can answer a body of repeats without waiting for the core.

It can only be stale in one direction, and that one is safe: an alert row is
never deleted and its status only goes firing -> resolved. A repeat with the
status we know, or a firing copy of anything known, changes nothing in the store
either; a resolved copy of an alert we know as firing always goes to the store.
Entries are added only after their transaction commits.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from bot.intake.alert import Alert

Key = tuple[str, str]


class KnownAlerts:
    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._map: OrderedDict[Key, tuple[str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def incident_of_repeat(self, alert: Alert) -> str | None:
        """The incident id when ``alert`` would change nothing in the store, else None."""
        with self._lock:
            known = self._map.get(alert.dedup_key)
        if known is None:
            return None
        incident_id, status = known
        return incident_id if alert.status in (status, "firing") else None

    def repeats(self, alerts: Sequence[Alert]) -> list[str] | None:
        """Incident ids if every alert is a repeat (a body the store can skip), else None."""
        out = []
        for alert in alerts:
            incident_id = self.incident_of_repeat(alert)
            if incident_id is None:
                return None
            out.append(incident_id)
        return out

    def remember(self, committed: Iterable[tuple[Alert, str]]) -> None:
        with self._lock:
            for alert, incident_id in committed:
                key = alert.dedup_key
                known = self._map.get(key)
                # Resolved is final: a late firing copy never turns it back.
                status = "resolved" if known and known[1] == "resolved" else alert.status
                self._map[key] = (incident_id, status)
                self._map.move_to_end(key)
            while len(self._map) > self.limit:
                self._map.popitem(last=False)

    def __len__(self) -> int:
        return len(self._map)
