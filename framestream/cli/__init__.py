"""The ``framestream`` command: ``stream`` (the default demo), ``synth`` and the others.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``; the module is
imported only when its command runs, so ``framestream --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> module with add_parser(subparsers) -> parser whose defaults carry ``func``
COMMANDS = {
    "stream": "framestream.cli.stream",
    "synth": "framestream.cli.synth",
    "bench": "framestream.cli.bench",
    "validate": "framestream.cli.validate",
    "prewarm": "framestream.cli.prewarm",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="framestream",
        description="Stream LeRobot v3.0 datasets into PyTorch training.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub)
        assert name in sub.choices, f"{module} did not register {name!r}"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
