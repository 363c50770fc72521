"""``python -m drills.sandbox --port 4000 --policy FILE``: run the sandbox gateway."""

from __future__ import annotations

import argparse
import logging
import random
import sys
from pathlib import Path

from bot.base.errors import InputError
from drills.sandbox.app import create_app
from drills.sandbox.shape import load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m drills.sandbox", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=4000)
    p.add_argument("--policy", type=Path, help="serving policy file, re-read on every request")
    p.add_argument("--config", type=Path, help="routes/models config (default: the packaged one)")
    p.add_argument("--time-scale", type=float, help="multiply simulated delays (0 = no waiting)")
    p.add_argument("--seed", type=int, help="seed the random choices for a reproducible run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    overrides = {"time_scale": args.time_scale} if args.time_scale is not None else {}
    try:
        config = load_config(args.config, **overrides)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import uvicorn  # imported late: only the standalone server needs it

    app = create_app(config, args.policy, rng=random.Random(args.seed))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
