"""``edgeguard demo``: run the built-in demo and write an HTML report."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the built-in demo and write an HTML report")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a tiny run (seconds), for smoke tests")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import run_demo

    path = run_demo(Path(args.out), quick=args.quick)
    print(f"report written to {path}")
    return 0
