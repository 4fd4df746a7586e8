"""``edgeguard`` command line: parse, call the library, print.  Every subcommand is one library call.

One module per subcommand, each with ``add_parser(sub)`` and ``run(args)``; what they share (option
types, option groups, the run folder) is in :mod:`.common`, the names they accept come from the
library's registries (:mod:`.names`).
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import EdgeguardError
from . import attack, compile_cmd, demo, explain, gnn, info, prune, prune_detector, train, tshirt
from .common import Parser

SUBCOMMANDS = (train, prune, prune_detector, info, compile_cmd, attack, explain, gnn, tshirt, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="edgeguard",
        description="Make deep models fast on edge hardware and safe against adversaries.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a bad option (2, one line already printed)
        return stop.code if isinstance(stop.code, int) else 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except (
        EdgeguardError
    ) as err:  # a user's mistake; anything else is a bug and keeps its traceback
        # one line: multi-line hints (expected folder layouts) are joined
        print("error: " + " ".join(part.strip() for part in str(err).splitlines()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
