"""Text from outside (alerts, chat messages) made safe for terminals, logs and chat.

Alert labels reach the console, the service log and Slack. None of them may move
a terminal's cursor (ANSI escapes), forge a log line (CR/LF in a one-line record),
or display other than it reads (bidirectional overrides). ``neutralise`` is used
at intake and again by every sink, so text from any other source is covered too.
"""

from __future__ import annotations

import logging
import re

# C0/C1 control characters but tab and newline, and the bidirectional overrides.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def neutralise(text: str) -> str:
    """``text`` with control characters removed (tab and newline kept)."""
    return CONTROL.sub("", text) if CONTROL.search(text) else text


def one_line(text: str) -> str:
    """``neutralise``, and line breaks shown as ``\\n``: for one-line records (logs)."""
    return neutralise(text).replace("\n", "\\n")


class OneLineFormatter(logging.Formatter):
    """A log formatter whose message part is always one line with no control characters.

    Tracebacks still span lines (they come from the process, not from outside).
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = one_line(record.message)
        return super().formatMessage(record)
