"""DatasetConfig and make_dataset: one declarative description of the data a training job reads.

Why a config object: a training job is launched many times (one process per GPU, again after
each preemption) and must build the very same dataset every time, from a file checked into the
experiment plus a few command-line overrides. ``make_dataset`` turns the config into either
the map-style :class:`~framestream.MapDataset` or the :class:`~framestream.StreamingLeRobotDataset`.

The fields are not written here twice: where and what to read are declared below, and every
streaming knob is a field of :class:`~framestream.StreamOptions` (type, default, doc and
bounds), four of them renamed with a ``streaming_`` prefix. Nothing is derived from the number
of DataLoader workers, so ``num_workers=0`` streams the whole epoch in the main process.

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
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

from framestream.datasets.map_style import MapDataset
from framestream.datasets.streaming import StreamingLeRobotDataset
from framestream.format.meta import DatasetMeta
from framestream.io.source import Source, resolve_url
from framestream.stream.options import StreamOptions, coerce_field

__all__ = ["OVERRIDE_PREFIX", "DatasetConfig", "make_dataset"]

OVERRIDE_PREFIX = "--dataset."

# StreamOptions fields that carry another name in a config (LeRobot's config names).
_RENAMED = {
    "buffer_size": "streaming_buffer_size",
    "active_shards": "streaming_active_shards",
    "shuffle_warmup": "streaming_shuffle_warmup",
    "prefetch": "streaming_prefetch",
}


def _own(default: Any, doc: str, *, minimum: float | None = None, factory: Any = None) -> Any:
    meta = {"doc": doc, "minimum": minimum}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# Where and what to read, and which dataset class: the fields that are not stream options.
_OWN_FIELDS: list[tuple[str, Any, Any]] = [
    ("root", str | None, _own(None, "a local folder or an fsspec URL (s3://, http(s)://, hf://)")),
    (
        "repo_id",
        str | None,
        _own(None, "a Hub dataset (user/name), read as hf://datasets/<repo_id> when root is unset"),
    ),
    ("revision", str | None, _own(None, "the Hub revision (branch, tag or commit)")),
    ("episodes", list[int] | None, _own(None, "the episodes to read (default: all)")),
    (
        "delta_timestamps",
        dict[str, list[float]] | None,
        _own(None, "{key: [seconds, ...]} windows, each delta a multiple of 1/fps"),
    ),
    ("storage_options", dict[str, Any], _own(None, "passed to fsspec", factory=dict)),
    ("cache_dir", str | None, _own(None, "the local byte cache of remote files")),
    (
        "cache_max_bytes",
        int | None,
        _own(
            None, "the byte cache's size (default 20 GiB); 0 reads remote files in place", minimum=0
        ),
    ),
    (
        "remote_options",
        dict[str, Any],
        _own(None, "timeouts, retries, fetch sizes (RemoteOptions fields)", factory=dict),
    ),
    ("streaming", bool, _own(True, "build the streaming dataset (else the map-style one)")),
    ("rank", int | None, _own(None, "None: from Accelerate, torch.distributed, RANK")),
    ("world_size", int | None, _own(None, "None: from Accelerate, torch.distributed, WORLD_SIZE")),
]


def _option_fields() -> list[tuple[str, Any, Any]]:
    hints = typing.get_type_hints(StreamOptions)
    return [
        (_RENAMED.get(f.name, f.name), hints[f.name], field(default=f.default, metadata=f.metadata))
        for f in dataclasses.fields(StreamOptions)
    ]


class _ConfigMethods:
    """The behaviour of :class:`DatasetConfig` (its fields are generated, see below)."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            name = f"DatasetConfig.{f.name}"
            value = coerce_field(name, hints[f.name], f.metadata, getattr(self, f.name))
            if value is None and f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            low = f.metadata.get("minimum")
            if low is not None and isinstance(value, int | float) and value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
            setattr(self, f.name, value)
        try:
            self.stream_options()
        except ValueError as exc:  # name the field as the config spells it
            raise ValueError(f"DatasetConfig: {exc}") from exc
        if self.revision is not None and (self.root or self.repo_id):
            _ = self.url  # a revision for a non-Hub root is an error: say so now, not at load

    def stream_options(self) -> StreamOptions:
        """The :class:`StreamOptions` this config describes."""
        return StreamOptions(
            **{
                f.name: getattr(self, _RENAMED.get(f.name, f.name))
                for f in dataclasses.fields(StreamOptions)
            }
        )

    def source(self) -> Source:
        """Where the bytes are: one :class:`Source` with this config's options."""
        return Source(
            self.url,  # the revision is part of it
            dict(self.storage_options),
            cache_dir=self.cache_dir,
            cache_max_bytes=self.cache_max_bytes,
            remote=dict(self.remote_options),
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
        return DatasetMeta(self.source())

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain types only (JSON/YAML-safe), e.g. to store next to a checkpoint."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

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
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def with_overrides(self, overrides: Sequence[str]) -> DatasetConfig:
        """Apply ``key=value`` strings (with or without the ``--dataset.`` prefix)."""
        changes: dict[str, Any] = {}
        names = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
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


def _docstring(fields: list[tuple[str, Any, Any]]) -> str:
    lines = ["What to read and how to stream it.", "", "Attributes:"]
    for name, _, f in fields:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"    {name}: {f.metadata.get('doc', '')} (default: {default!r})")
    return "\n".join(lines)


_FIELDS = _OWN_FIELDS + _option_fields()
DatasetConfig = dataclasses.make_dataclass(
    "DatasetConfig",
    _FIELDS,
    bases=(_ConfigMethods,),
    namespace={"__doc__": _docstring(_FIELDS), "__module__": __name__},
)


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
    features; it must come from ``cfg.load_meta()``); ``image_transforms`` is applied to each
    camera tensor of a sample.
    """
    meta = meta or cfg.load_meta()
    options = cfg.stream_options()
    common: dict[str, Any] = {
        "episodes": cfg.episodes,
        "delta_timestamps": cfg.delta_timestamps,
        "image_transforms": image_transforms,
        "meta": meta,
    }
    if not cfg.streaming:
        return MapDataset(
            None,
            **common,
            tolerance_s=options.tolerance_s,
            return_uint8=options.return_uint8,
            channels_last=options.channels_last,
            video_backend=options.video_backend,
        )
    return StreamingLeRobotDataset(
        None, **common, options=options, rank=cfg.rank, world_size=cfg.world_size
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
