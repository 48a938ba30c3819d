"""Run LeRobot's own training on framestream's datasets.

``python -m framestream.lerobot ARGS...`` is ``lerobot-train ARGS...`` (LeRobot 0.6.1's own
script, same arguments) with framestream's datasets in place of LeRobot's:
``--dataset.streaming=true`` streams with :class:`framestream.StreamingLeRobotDataset`, and
without it :class:`framestream.LeRobotDataset` (``MapDataset``) serves LeRobot's sampler.
In a script, :func:`install` does the same substitution before LeRobot builds its dataset.

LeRobot is not a dependency of framestream: it is imported only here, when asked for.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from framestream.datasets.lerobot_args import resolve_location
from framestream.datasets.map_style import MapDataset
from framestream.datasets.streaming import StreamingLeRobotDataset
from framestream.format.meta import DatasetMeta
from framestream.io.source import Source

__all__ = [
    "LeRobotDatasetMetadata",
    "install",
    "installed",
    "main",
    "uninstall",
]

log = logging.getLogger("framestream.lerobot")

# Where LeRobot's training path looks its dataset classes up (module globals of the factory),
# and the public aliases, patched for consistency.
_TARGETS = {
    "LeRobotDataset": (
        "lerobot.datasets.factory",
        "lerobot.datasets",
        "lerobot.datasets.lerobot_dataset",
    ),
    "StreamingLeRobotDataset": (
        "lerobot.datasets.factory",
        "lerobot.datasets",
        "lerobot.datasets.streaming_dataset",
    ),
    "LeRobotDatasetMetadata": (
        "lerobot.datasets.factory",
        "lerobot.datasets",
        "lerobot.datasets.dataset_metadata",
    ),
}
_saved: dict[tuple[str, str], Any] = {}

MARKER_ENV = "FRAMESTREAM_LEROBOT_MARKER"


def LeRobotDatasetMetadata(  # noqa: N802 - LeRobot's class name, called like the class
    repo_id: str,
    root: str | os.PathLike | None = None,
    revision: str | None = None,
    force_cache_sync: bool = False,
    metadata_buffer_size: int = 10,
    *,
    repo_type: str = "dataset",
    token: str | bool | None = None,
) -> DatasetMeta:
    """LeRobot's ``LeRobotDatasetMetadata(repo_id, root=...)`` as framestream's metadata."""
    where, name = resolve_location(repo_id, root, repo_type=repo_type)
    options = {"token": token} if token not in (None, True) and where.startswith("hf://") else {}
    meta = DatasetMeta(Source(where, options, revision=revision))
    if name is not None:
        meta.repo_id = name
    return meta


def _announce(kind: str, ds: Any) -> None:
    msg = (
        f"framestream: {kind} -> framestream.{type(ds).__name__} for {ds.repo_id!r} "
        f"at {ds.root} ({ds.num_frames} frames, {ds.num_episodes} episodes)"
    )
    print(msg, file=sys.stderr, flush=True)
    marker = os.environ.get(MARKER_ENV)
    if marker:
        with open(marker, "a") as f:
            record = {"lerobot": kind, "framestream": type(ds).__name__, "root": str(ds.root)}
            f.write(json.dumps(record) + "\n")


def _map_dataset(*args: Any, **kwargs: Any) -> MapDataset:
    ds = MapDataset(*args, **kwargs)
    _announce("LeRobotDataset", ds)
    return ds


def _streaming_dataset(*args: Any, **kwargs: Any) -> StreamingLeRobotDataset:
    ds = StreamingLeRobotDataset(*args, **kwargs)
    _announce("StreamingLeRobotDataset", ds)
    return ds


_REPLACEMENTS = {
    "LeRobotDataset": _map_dataset,
    "StreamingLeRobotDataset": _streaming_dataset,
    "LeRobotDatasetMetadata": LeRobotDatasetMetadata,
}


def _import_lerobot_factory() -> Any:
    try:
        import lerobot.datasets.factory as factory
    except ImportError as exc:
        raise ImportError(
            "framestream.lerobot runs LeRobot's own training script, but LeRobot is not "
            f"importable here ({exc}). Install it beside framestream (e.g. `pip install "
            "lerobot==0.6.1`); framestream itself does not depend on it."
        ) from exc
    return factory


def install() -> None:
    """Make LeRobot's dataset factory (``make_dataset``, used by ``lerobot-train``) build
    framestream's datasets. Idempotent; :func:`uninstall` restores LeRobot's classes."""
    import importlib

    _import_lerobot_factory()
    for name, modules in _TARGETS.items():
        for mod_name in modules:
            try:
                mod = importlib.import_module(mod_name)
            except ImportError:
                continue
            if (mod_name, name) not in _saved:
                _saved[(mod_name, name)] = getattr(mod, name, None)
            setattr(mod, name, _REPLACEMENTS[name])
    log.info("framestream: LeRobot's dataset classes now build framestream datasets")


def uninstall() -> None:
    """Put LeRobot's own classes back."""
    import importlib

    for (mod_name, name), original in list(_saved.items()):
        setattr(importlib.import_module(mod_name), name, original)
        del _saved[(mod_name, name)]


def installed() -> bool:
    return bool(_saved)


def main(argv: list[str] | None = None) -> None:
    """``lerobot-train`` with framestream's datasets: ``python -m framestream.lerobot ARGS``."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        install()
        from lerobot.scripts.lerobot_train import main as train_main
    except ImportError as exc:
        raise SystemExit(str(exc)) from None
    print(
        "framestream: running lerobot-train with framestream's datasets "
        f"(streaming={'--dataset.streaming=true' in args})",
        file=sys.stderr,
        flush=True,
    )
    sys.argv = ["lerobot-train", *args]
    train_main()
