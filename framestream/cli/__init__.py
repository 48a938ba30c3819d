"""The ``framestream`` command: ``stream`` (the default demo), ``synth`` and the others.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``; the module is
imported only when its command runs, so ``framestream --help`` stays fast.

Errors: every command prints ``framestream <cmd>: error: <message>`` on one line on stderr
and exits 2 for a usage error (a bad flag, a missing path, an existing output folder) or 1
for a data or source error (any :class:`~framestream.FramestreamError`). ``--debug``, given
anywhere on the command line, shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from framestream.cli.common import ArgumentParser, report

# name -> module with add_parser(subparsers) -> parser whose defaults carry ``func``
COMMANDS = {
    "stream": "framestream.cli.stream",
    "synth": "framestream.cli.synth",
    "bench": "framestream.cli.bench",
    "validate": "framestream.cli.validate",
    "prewarm": "framestream.cli.prewarm",
}


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="framestream",
        description="Stream LeRobot v3.0 datasets into PyTorch training.",
        epilog="Errors are one line on stderr; exit status 2: usage error, 1: data/source "
        "error. 'framestream COMMAND --help' for a command's options.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (allowed anywhere on the command line)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub)
        assert name in sub.choices, f"{module} did not register {name!r}"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is global and may follow the subcommand: take it out before argparse sees it
    # (everything after a bare "--" is left alone).
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    argv = [a for i, a in enumerate(argv) if not (i < end and a == "--debug")]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    prog = f"framestream {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        return report(prog, exc)


if __name__ == "__main__":
    sys.exit(main())
