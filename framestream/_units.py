"""Parsers for sizes and episode lists given on command lines (the CLI and the benchmark).

They raise :class:`argparse.ArgumentTypeError`, so that ``argparse`` reports a bad value as a
usage error naming the option.
"""

from __future__ import annotations

import argparse


def parse_episodes(values: list[str] | None) -> list[int] | None:
    """``["0", "3-5", "7,9"]`` -> ``[0, 3, 4, 5, 7, 9]`` (ranges inclusive); None means all."""
    if not values:
        return None
    out: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            try:
                out += list(range(int(lo), int(hi) + 1)) if sep else [int(part)]
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"--episodes: {part!r} is not an episode index or a range like 3-7"
                ) from None
    return list(dict.fromkeys(out))


def parse_size(text: str) -> int:
    """``"500M"``, ``"20G"``, ``"1048576"`` -> bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500M, 20G)") from None
