"""Write a fast copy of rules.yaml for drills and end-to-end tests.

    python playbooks/alerts/render.py --for 5s --window 30s --interval 1s -o fast-rules.yaml
    python playbooks/alerts/render.py --threshold LLMCostBurnRateHigh=0.5 -o drill-rules.yaml

The logic lives in ``drills.alert_rules.render_rules`` (importable by tests); this
script is its command line. The shipped rules.yaml is never modified.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bot.base.errors import InputError
from drills.alert_rules import render_rules


def _threshold(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ALERTNAME=NUMBER, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--for", dest="for_", default="5s", help="every alert's for: (5s)")
    parser.add_argument("--window", default="30s", help="replaces every [5m] window (30s)")
    parser.add_argument("--interval", default=None, help="rule group evaluation interval")
    parser.add_argument(
        "--threshold",
        action="append",
        type=_threshold,
        default=[],
        metavar="ALERT=N",
        help="override an alert's threshold (repeatable)",
    )
    parser.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    try:
        text = render_rules(
            for_=args.for_,
            window=args.window,
            interval=args.interval,
            thresholds=dict(args.threshold),
        )
    except InputError as exc:
        print(f"render.py: {exc}", file=sys.stderr)
        return 2
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
