"""DatasetConfig and make_dataset: one declarative description of the data a training job reads.

Why a config object: a training job is launched many times (one process per GPU, again after
each preemption) and must build the very same dataset every time, from a file checked into the
experiment plus a few command-line overrides. ``make_dataset`` turns the config into either
the map-style :class:`~framestream.MapDataset` or the :class:`~framestream.StreamingLeRobotDataset`.

Every streaming knob is explicit. In particular the reservoir size is
``streaming_buffer_size`` and nothing is derived from the number of DataLoader workers, so
``num_workers=0`` streams the whole epoch in the main process (a loader that sizes its
buffer from ``num_workers`` gets an empty stream there).

Files (YAML or JSON) hold the fields at the top level or under a ``dataset:`` section, so the
same file can carry a training script's other settings. Overrides use
``--dataset.<field>=<value>`` (or ``--dataset.<field> <value>``); values are parsed as YAML
(``true``, ``null``, ``[0, 3, 5]``, ``{action: [0.0, 0.1]}``) and converted to the field's
type, so ``--dataset.tolerance_s=1e-4`` is a float and ``--dataset.episodes=[0,1]`` a list.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framestream.datasets.map_style import MapDataset
from framestream.datasets.streaming import StreamingLeRobotDataset
from framestream.format.meta import DatasetMeta
from framestream.io.source import Source, resolve_url

__all__ = ["OVERRIDE_PREFIX", "DatasetConfig", "make_dataset"]

OVERRIDE_PREFIX = "--dataset."
_BACKENDS = (None, "torchcodec", "pyav")


@dataclass
class DatasetConfig:
    """What to read and how to stream it.

    Attributes:
        root: a local folder or an fsspec URL (``s3://``, ``http(s)://``, ``hf://``...).
        repo_id: a Hugging Face Hub dataset (``user/name``), used when ``root`` is unset; read
            as ``hf://datasets/<repo_id>[@<revision>]``.
        revision: the Hub revision (branch, tag or commit) of a Hub dataset (``repo_id`` or an
            ``hf://datasets/...`` root).
        episodes: the episodes to read (default: all), in this order.
        delta_timestamps: ``{key: [seconds, ...]}`` windows (each a multiple of 1/fps).
        tolerance_s: the largest allowed gap between a queried and a decoded timestamp.
        return_uint8: cameras as uint8 (4x less to move; convert on the GPU).
        channels_last: cameras as channels-last views; collate with ``framestream.collate``.
        video_backend: ``"torchcodec"``, ``"pyav"`` or None (torchcodec when it loads).
        storage_options: passed to fsspec (credentials, endpoint...).
        cache_dir, cache_max_bytes: the local byte cache remote files are read through
            (default ``<framestream cache>/bytes``, 20 GiB); ``cache_max_bytes=0`` disables it.
        remote_options: timeouts, retries, fetch sizes (``framestream.io.source.RemoteOptions``
            fields).
        streaming: build the streaming dataset (True) or the map-style one (False).
        shuffle: streaming only: mix samples through the reservoir; False gives episodes and
            frames in order.
        seed: streaming only: with the epoch, fully determines the order.
        streaming_buffer_size: the reservoir size (light references, large values are cheap).
        streaming_active_shards: episode readers open at once per worker.
        streaming_shuffle_warmup: references held before the first sample leaves.
        video_decoder_cache_size: open decoders per worker; None means
            ``(streaming_active_shards + 1) x cameras``.
        decoder_threads: FFmpeg threads per decoder (1 suits one worker per core).
        streaming_prefetch: segments beyond the open ones whose files each worker fetches
            ahead from a remote source (0 disables prefetch).
        on_error: ``"raise"`` stops at a broken episode; ``"skip"`` drops it and counts it in
            ``stats()``.
        even_ranks: every rank (and worker) gets the same number of samples, padding with
            repeats flagged ``is_repeat``, so DDP ranks run the same number of steps.
        rank, world_size: None resolves them from Accelerate, torch.distributed, then
            ``RANK``/``WORLD_SIZE``; set them only to simulate a rank.
    """

    root: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    episodes: list[int] | None = None
    delta_timestamps: dict[str, list[float]] | None = None
    tolerance_s: float = 1e-4
    return_uint8: bool = False
    channels_last: bool = False
    video_backend: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    cache_max_bytes: int | None = None
    remote_options: dict[str, Any] = field(default_factory=dict)
    streaming: bool = True
    shuffle: bool = True
    seed: int = 0
    streaming_buffer_size: int = 1000
    streaming_active_shards: int = 8
    streaming_shuffle_warmup: int = 64
    video_decoder_cache_size: int | None = None
    decoder_threads: int = 1
    streaming_prefetch: int = 2
    on_error: str = "raise"
    even_ranks: bool = False
    rank: int | None = None
    world_size: int | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name)))
        minimum = {
            "streaming_buffer_size": 1,
            "streaming_active_shards": 1,
            "streaming_shuffle_warmup": 1,
            "video_decoder_cache_size": 1,
            "decoder_threads": 0,
            "streaming_prefetch": 0,
            "cache_max_bytes": 0,
        }
        for name, low in minimum.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"DatasetConfig.{name} must be >= {low}, got {value}")
        if not self.tolerance_s > 0 or not math.isfinite(self.tolerance_s):
            raise ValueError(
                f"DatasetConfig.tolerance_s must be a positive number, got {self.tolerance_s}"
            )
        if self.on_error not in ("raise", "skip"):
            raise ValueError(
                f"DatasetConfig.on_error must be 'raise' or 'skip', got {self.on_error!r}"
            )
        if self.revision is not None and (self.root or self.repo_id):
            _ = self.url  # a revision for a non-Hub root is an error: say so now, not at load
        if self.video_backend not in _BACKENDS:
            raise ValueError(
                f"DatasetConfig.video_backend must be one of {_BACKENDS}, "
                f"got {self.video_backend!r}"
            )

    # ------------------------------------------------------------------ location
    @property
    def url(self) -> str:
        """Where the dataset is: ``root``, else the Hub dataset ``repo_id`` (with ``revision``)."""
        if self.root:
            return resolve_url(self.root, self.revision)
        if self.repo_id:
            return resolve_url(f"hf://datasets/{self.repo_id}", self.revision)
        raise ValueError("DatasetConfig needs root (a path or URL) or repo_id")

    def load_meta(self) -> DatasetMeta:
        """The dataset's metadata, opened with this config's source options (e.g. to size a
        model from the features before building the dataset; pass it to make_dataset)."""
        source = Source(
            self.url,  # the revision is part of it
            dict(self.storage_options),
            cache_dir=self.cache_dir,
            cache_max_bytes=self.cache_max_bytes,
            remote=dict(self.remote_options),
        )
        return DatasetMeta(source)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain types only (JSON/YAML-safe), e.g. to store next to a checkpoint."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetConfig:
        """Build from a mapping; an unknown key is an error (a typo must not be ignored)."""
        if "dataset" in data and isinstance(data["dataset"], Mapping):
            data = data["dataset"]
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown DatasetConfig field(s) {unknown}; known: {sorted(names)}")
        return cls(**dict(data))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> DatasetConfig:
        """Load a YAML or JSON file (fields at the top level or under ``dataset:``)."""
        return cls.from_dict(load_config_file(path, section=None))

    def replace(self, **changes: Any) -> DatasetConfig:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)

    def with_overrides(self, overrides: Sequence[str]) -> DatasetConfig:
        """Apply ``key=value`` strings (with or without the ``--dataset.`` prefix)."""
        changes: dict[str, Any] = {}
        names = {f.name for f in dataclasses.fields(self)}
        for item in overrides:
            text = item[len(OVERRIDE_PREFIX) :] if item.startswith(OVERRIDE_PREFIX) else item
            key, sep, value = text.partition("=")
            key = key.strip().replace("-", "_")
            if not sep:
                raise ValueError(f"override {item!r} is not key=value")
            if key not in names:
                raise ValueError(f"unknown DatasetConfig field {key!r} in override {item!r}")
            changes[key] = _parse_value(value)
        return self.replace(**changes)

    # ------------------------------------------------------------------ command line
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Register ``--dataset-config FILE`` (``--dataset.<field>=<value>`` go through
        :meth:`from_args`'s ``unknown`` list, see :func:`split_overrides`)."""
        parser.add_argument(
            "--dataset-config",
            metavar="FILE",
            default=None,
            help="YAML/JSON file with DatasetConfig fields (top level or under 'dataset:'); "
            "override single fields with --dataset.<field>=<value>",
        )

    @classmethod
    def from_args(
        cls,
        args: argparse.Namespace,
        overrides: Sequence[str] = (),
        *,
        base: DatasetConfig | None = None,
    ) -> DatasetConfig:
        """The file named by ``--dataset-config`` (else ``base``, else defaults) + overrides."""
        path = getattr(args, "dataset_config", None)
        cfg = cls.from_file(path) if path else (base or cls())
        return cfg.with_overrides(overrides)


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate ``--dataset.k=v`` / ``--dataset.k v`` arguments from the rest of ``argv``.

    Returns ``(rest, overrides)`` with overrides normalised to ``k=v``; use it before
    ``argparse`` so that any field can be overridden without declaring an option per field.
    """
    rest: list[str] = []
    overrides: list[str] = []
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(OVERRIDE_PREFIX):
            body = arg[len(OVERRIDE_PREFIX) :]
            if "=" not in body:
                if i + 1 >= len(argv):
                    raise ValueError(f"{arg} needs a value ({arg}=VALUE or {arg} VALUE)")
                body = f"{body}={argv[i + 1]}"
                i += 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def load_config_file(path: str | os.PathLike[str], *, section: str | None) -> dict[str, Any]:
    """Read a YAML or JSON mapping; ``section`` picks one top-level key (missing: ``{}``)."""
    p = Path(path)
    text = p.read_text()
    if p.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"reading {p} needs PyYAML (pip install 'framestream[accelerate]'), "
                "or use a .json file"
            ) from exc
        data = yaml.safe_load(text)
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ValueError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    if section is not None:
        data = data.get(section) or {}
        if not isinstance(data, Mapping):
            raise ValueError(f"{p}: section {section!r} is not a mapping")
    return dict(data)


def make_dataset(
    cfg: DatasetConfig,
    *,
    image_transforms: Any = None,
    meta: DatasetMeta | None = None,
) -> MapDataset | StreamingLeRobotDataset:
    """The dataset ``cfg`` describes: streaming when ``cfg.streaming``, else map-style.

    ``meta`` reuses already loaded metadata (e.g. read once to size a model from the
    features); ``image_transforms`` is applied to each camera tensor of a sample.
    """
    meta = meta or cfg.load_meta()
    common: dict[str, Any] = {
        "episodes": cfg.episodes,
        "delta_timestamps": cfg.delta_timestamps,
        "tolerance_s": cfg.tolerance_s,
        "return_uint8": cfg.return_uint8,
        "channels_last": cfg.channels_last,
        "image_transforms": image_transforms,
        "video_backend": cfg.video_backend,
        "storage_options": dict(cfg.storage_options),
        "meta": meta,
    }
    if not cfg.streaming:
        return MapDataset(cfg.url, **common)
    return StreamingLeRobotDataset(
        cfg.url,
        **common,
        shuffle=cfg.shuffle,
        seed=cfg.seed,
        buffer_size=cfg.streaming_buffer_size,
        active_shards=cfg.streaming_active_shards,
        shuffle_warmup=cfg.streaming_shuffle_warmup,
        video_decoder_cache_size=cfg.video_decoder_cache_size,
        decoder_threads=cfg.decoder_threads,
        prefetch=cfg.streaming_prefetch,
        on_error=cfg.on_error,
        rank=cfg.rank,
        world_size=cfg.world_size,
        even_ranks=cfg.even_ranks,
    )


# ---------------------------------------------------------------------- value conversion
def _parse_value(text: str) -> Any:
    """A command-line value as YAML (else JSON, else the raw string)."""
    text = text.strip()
    try:
        import yaml

        return yaml.safe_load(text) if text else None
    except ImportError:  # pragma: no cover - depends on the environment
        try:
            return json.loads(text)
        except ValueError:
            return text
    except Exception:  # not valid YAML (e.g. an unbalanced bracket): keep the string
        return text


_KIND: dict[str, str] = {
    "root": "path?",
    "repo_id": "str?",
    "revision": "str?",
    "episodes": "ints?",
    "delta_timestamps": "deltas?",
    "tolerance_s": "float",
    "return_uint8": "bool",
    "channels_last": "bool",
    "video_backend": "str?",
    "storage_options": "dict",
    "cache_dir": "path?",
    "cache_max_bytes": "int?",
    "remote_options": "dict",
    "streaming": "bool",
    "shuffle": "bool",
    "seed": "int",
    "streaming_buffer_size": "int",
    "streaming_active_shards": "int",
    "streaming_shuffle_warmup": "int",
    "video_decoder_cache_size": "int?",
    "decoder_threads": "int",
    "streaming_prefetch": "int",
    "on_error": "str",
    "even_ranks": "bool",
    "rank": "int?",
    "world_size": "int?",
}

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(name: str, value: Any) -> Any:
    """Convert ``value`` to field ``name``'s type, or raise a ValueError naming the field."""
    kind = _KIND[name]
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "")):
        if optional:
            return None
        if kind == "dict":
            return {}
        raise ValueError(f"DatasetConfig.{name} cannot be null")
    try:
        if kind in ("str", "path"):
            if isinstance(value, os.PathLike):
                return os.fspath(value)
            if not isinstance(value, str):
                raise TypeError
            return value
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise TypeError
        if kind == "int":
            return _int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind == "ints":
            if isinstance(value, str | bytes) or not isinstance(value, Sequence):
                raise TypeError
            return [_int(v) for v in value]
        if kind == "deltas":
            if not isinstance(value, Mapping):
                raise TypeError
            out: dict[str, list[float]] = {}
            for key, deltas in value.items():
                if isinstance(deltas, str | bytes) or not isinstance(deltas, Sequence):
                    raise TypeError
                out[str(key)] = [float(d) for d in deltas]
            return out
        if kind == "dict":
            if not isinstance(value, Mapping):
                raise TypeError
            return dict(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"DatasetConfig.{name}: cannot use {value!r} ({type(value).__name__}) as {kind}"
            + (" or null" if optional else "")
        ) from exc
    raise AssertionError(f"no conversion for kind {kind!r}")  # pragma: no cover


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("bool is not an int")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{value} is not an integer")
    return int(value)
