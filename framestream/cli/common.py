"""What every subcommand shares: one-line errors, the local-path check, common flags.

Why: a new user's first contact is a typo'd path or a dataset of the wrong version, and a
41-line traceback hides the one line that matters. Every command therefore reports
``framestream <cmd>: error: <message>`` on stderr and exits 2 (usage: bad flags, a missing
path) or 1 (the data or the source is wrong); the global ``--debug`` flag re-raises instead.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, NoReturn

from framestream._units import parse_episodes, parse_size
from framestream.io.remote import is_hub_repo_id

__all__ = [
    "CLIError",
    "ArgumentParser",
    "HelpFormatter",
    "add_remote_arguments",
    "check_root",
    "clean_message",
    "is_hub_repo_id",
    "looks_local",
    "parse_episodes",
    "parse_size",
]


class CLIError(Exception):
    """An error the command reports in one line; ``code`` is the exit status (2: usage)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class HelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to an option's help once: not when the text already gives its
    default, and not for flags (``store_true``) or options without one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        says = re.search(r"\(default|default:|; default", text.lower().replace("by default", ""))
        if (
            says
            or action.default is None
            or action.default is False
            or action.default is argparse.SUPPRESS
            or action.default == []
            or not action.option_strings
            or action.nargs == 0
        ):
            return text
        default = action.default
        if isinstance(default, list):
            default = " ".join(map(str, default))
        shown = str(default).replace("%", "%%")
        return f"{text} (default: {shown})" if text else f"default: {shown}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``PROG: error: MESSAGE (see PROG --help)``), exit 2,
    and :class:`HelpFormatter` unless another formatter is asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fmt = kwargs.get("formatter_class")
        if fmt in (None, argparse.HelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
            kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# A Hub repo id: exactly ``org/name``, each part starting with a letter or digit (what the Hub
# accepts: letters, digits, '-', '_', '.').
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def looks_local(root: str) -> bool:
    """True for a root that can only mean a local folder: not a URL and not a Hub repo id."""
    return "://" not in root and not is_hub_repo_id(root)


def check_root(root: str | None) -> None:
    """Refuse a local-looking root that does not exist, before anything tries the Hub."""
    if root is None or not looks_local(root):
        return
    path = os.path.expanduser(root)
    if not os.path.exists(path):
        raise CLIError(f"no such local dataset folder: {root}")
    if not os.path.isdir(path):
        raise CLIError(f"not a dataset folder (a file): {root}")


# torchcodec's errors carry its build tree's source paths and line numbers, e.g.
# "SingleStreamDecoder, /__w/torchcodec/.../src/torchcodec/_core/SingleStreamDecoder.cpp:52, "
# and wrapped Python errors its site-packages paths: useless to a user, so they are cut.
_TORCHCODEC_PATH = re.compile(
    r"(?:\b[A-Za-z_]\w*, )?(?:[^\s,'\"()]*/)?torchcodec/[^\s,'\"()]*\.(?:cpp|cc|h|hpp|py)"
    r"(?::\d+)?(?:[,:] ?)?"
)


def clean_message(text: str, limit: int = 2000) -> str:
    """One line: torchcodec source paths removed, C++ stack frames dropped, lines joined."""
    text = _TORCHCODEC_PATH.sub("", text)
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(("Exception raised from", "frame #")):
            break
        if line:
            lines.append(line)
    one = " ".join(lines)
    return one if len(one) <= limit else one[: limit - 3] + "..."


def parse_json_object(text: str) -> dict[str, Any]:
    """``--storage-options`` JSON -> dict (an argparse ``type``)."""
    import json

    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"anon\": true}'")
    return value


def add_remote_arguments(p: argparse.ArgumentParser, *, cache: bool = True) -> None:
    """``--storage-options``, ``--revision`` and (with ``cache``) ``--cache-dir`` /
    ``--cache-max-bytes``: how a remote root is read. They change nothing for a local folder."""
    p.add_argument(
        "--storage-options",
        type=parse_json_object,
        default={},
        metavar="JSON",
        help="fsspec options for a remote root, e.g. '{\"anon\": true}' (default: {})",
    )
    p.add_argument(
        "--revision", help="Hub revision (branch, tag or commit) of an hf:// root (default: main)"
    )
    if cache:
        p.add_argument(
            "--cache-dir",
            help="byte cache of remote files, the one `framestream prewarm` fills; a "
            "prewarmed folder makes a remote run read local copies (default: "
            "$FRAMESTREAM_CACHE/bytes, else ~/.cache/framestream/bytes)",
        )
        p.add_argument(
            "--cache-max-bytes",
            type=parse_size,
            default=None,
            metavar="SIZE",
            help="byte cache size limit, e.g. 50G; 0 reads remote files in place with range "
            "requests, no disk used (default: 20G)",
        )


def report(prog: str, exc: BaseException) -> int:
    """Print ``exc`` as ``PROG: error: MESSAGE`` on stderr and return the exit status."""
    from framestream._errors import FramestreamError

    if isinstance(exc, CLIError):
        code, message = exc.code, str(exc)
    elif isinstance(exc, argparse.ArgumentTypeError):  # a bad option value (framestream._units)
        code, message = 2, str(exc)
    elif isinstance(exc, FramestreamError):
        code, message = 1, str(exc)
    elif isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        code = 2
        name = exc.filename if getattr(exc, "filename", None) else None
        message = f"no such file or folder: {name}" if name else str(exc)
    elif isinstance(exc, FileExistsError):
        code, message = 2, str(exc)
    elif isinstance(exc, (OSError, ValueError, KeyError, RuntimeError)):
        code, message = 1, f"{type(exc).__name__}: {exc}"
    else:
        code = 1
        message = (
            f"internal error {type(exc).__name__}: {exc} "
            "(rerun with --debug for the traceback, and please report it)"
        )
    print(f"{prog}: error: {clean_message(message)}", file=sys.stderr)
    return code
