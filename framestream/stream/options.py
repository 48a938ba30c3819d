"""StreamOptions: every knob of the stream engine, typed, documented and validated in one place.

The dataset, :class:`~framestream.DatasetConfig` and the command line all read their types,
defaults and help from these fields, so an option is written once. Values are checked (and
converted, e.g. ``"true"`` from a config file) once, when the object is built; the object is
frozen afterwards, so the engine can trust it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["StreamOptions", "coerce", "coerce_field", "option_docs"]


def _opt(default: Any, doc: str, *, minimum: float | None = None, size: bool = False) -> Any:
    return field(default=default, metadata={"doc": doc, "minimum": minimum, "size": size})


# Per DataLoader worker; chosen so that a worker streaming the benchmark dataset (2 cameras,
# 240x320) at the defaults peaks under 512 MB of RSS, interpreter and torch included (README,
# "Memory"). "auto" raises it for long camera windows (stream.budget.resolve_budget), up to
# AUTO_MAX_MEMORY_BUDGET.
DEFAULT_MEMORY_BUDGET = 112 << 20
AUTO_MAX_MEMORY_BUDGET = 1 << 30


@dataclass(frozen=True, kw_only=True)
class StreamOptions:
    """How :class:`~framestream.StreamingLeRobotDataset` streams (each field says its cost)."""

    tolerance_s: float = _opt(
        1e-4, "largest allowed gap (s) between a queried and a decoded timestamp", minimum=0
    )
    return_uint8: bool = _opt(
        False,
        "RGB video cameras as uint8 instead of float32 in [0, 1]: 4x fewer bytes to move "
        "(PNG image features and depth stay float32, as in LeRobot)",
    )
    depth_output_unit: Literal["mm", "m"] = _opt(
        "mm", "depth cameras in millimetres (rounded, float32) or metres, as in LeRobot"
    )
    channels_last: bool = _opt(
        False,
        "cameras as (C, H, W) views of (H, W, C) memory: a memcpy per frame instead of a "
        "transposing copy; collate with framestream.collate",
    )
    pixel_format: Literal["rgb", "yuv420"] = _opt(
        "rgb",
        "cameras as RGB (torchcodec's exact pixels), or 'yuv420': I420 planes (..., H*3/2, W), "
        "half the bytes and no colour conversion in the workers; framestream.yuv_to_rgb(batch) "
        "gives the identical RGB on the training process's device (needs return_uint8=True, "
        "channels_last=False)",
    )
    shuffle: bool = _opt(
        True, "mix samples of active_shards episodes through a reservoir; False: in order"
    )
    seed: int = _opt(0, "with the epoch, fully determines the order")
    buffer_size: int = _opt(
        1000,
        "reservoir entries (references; the frames they need stay decoded until they leave)",
        minimum=1,
    )
    active_shards: int | None = _opt(
        None,
        "episode pieces open at once per worker: more mixes better, each holds its frames; "
        "None: 32, fewer for long camera windows (each open piece holds its window: "
        "512 / span, at least 8)",
        minimum=1,
    )
    shuffle_warmup: int = _opt(
        64, "references held before the first sample leaves (lower: faster first batch)", minimum=1
    )
    shuffle_pieces: bool = _opt(
        True,
        "cut episodes into shuffled pieces dealt to every worker (batches mix like a global "
        "shuffle at a small reservoir; see shuffle_chunk); False: whole episodes",
    )
    shuffle_chunk: int | None = _opt(
        None,
        "frames per shuffled piece of an episode: pieces of every episode are dealt to every "
        "worker, so one worker's batch mixes them all; a cut re-decodes the cameras' window "
        "span and a piece starts with a seek; None: 16, or enough for cuts to cost < 1/16 "
        "(16 x span, 8 keyframe intervals; remote sources: whole episodes); 0: whole "
        "episodes",
        minimum=0,
    )
    video_decoder_cache_size: int | None = _opt(
        None, "open decoders kept per worker; None: (active_shards + 1) x cameras", minimum=1
    )
    even_ranks: bool = _opt(
        False,
        "every rank and worker yields the same number of samples (repeats flagged "
        "is_repeat), so DDP never waits on a short rank",
    )
    video_backend: Literal["torchcodec", "pyav"] | None = _opt(
        None, "video decoder; None: torchcodec when it loads, else PyAV"
    )
    decoder_threads: int = _opt(
        1, "FFmpeg threads per decoder; 1 suits one DataLoader worker per core", minimum=0
    )
    on_error: Literal["raise", "skip"] = _opt(
        "raise",
        "a bad episode raises an error naming file/episode/frame, or is skipped and counted "
        "in stats()",
    )
    prefetch: int = _opt(
        2, "segments beyond the open ones whose remote files are fetched ahead", minimum=0
    )
    memory_budget: int | Literal["auto"] | None = _opt(
        "auto",
        "bytes per worker for decoded frames awaiting their samples, open decoders and batch "
        "slots (e.g. '512MB'); the shuffle buffer shrinks to fit and stats() says so; 'auto': "
        "112 MB, raised to hold active_shards open episodes' camera windows (at most 1 GB); "
        "None: no limit (README, Memory)",
        minimum=1 << 20,
        size=True,
    )

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            name = f"{type(self).__name__}.{f.name}"
            value = coerce_field(name, hints[f.name], f.metadata, getattr(self, f.name))
            low = f.metadata.get("minimum")
            if low is not None and isinstance(value, int | float) and value < low:
                raise ValueError(f"{type(self).__name__}.{f.name} must be >= {low}, got {value}")
            object.__setattr__(self, f.name, value)
        if self.pixel_format == "yuv420" and (self.channels_last or not self.return_uint8):
            raise ValueError(
                "pixel_format='yuv420' needs return_uint8=True and channels_last=False"
            )
        if not self.tolerance_s > 0 or not math.isfinite(self.tolerance_s):
            raise ValueError(f"tolerance_s must be a positive number, got {self.tolerance_s}")

    @classmethod
    def build(cls, base: StreamOptions | None = None, /, **changes: Any) -> StreamOptions:
        """``base`` (or the defaults) with ``changes``; an unknown name is a TypeError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown stream option(s) {unknown}; known: {sorted(names)}")
        if base is None:
            return cls(**changes)
        return dataclasses.replace(base, **changes) if changes else base

    def decoder_cache_size(self, num_cameras: int) -> int:
        """The decoder cache's capacity for a dataset with ``num_cameras`` cameras."""
        if self.video_decoder_cache_size is not None:
            return self.video_decoder_cache_size
        return ((self.active_shards or 32) + 1) * max(1, num_cameras)


def option_docs(cls: type = StreamOptions) -> dict[str, str]:
    """``{field: "doc (default: X)"}`` for help texts and generated docstrings."""
    return {
        f.name: f"{f.metadata.get('doc', '')} (default: {f.default!r})"
        for f in dataclasses.fields(cls)
    }


# ---------------------------------------------------------------------- value conversion
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert ``value`` to the annotation ``tp`` or raise a ValueError naming ``name``.

    Accepts what config files and command lines produce (``"true"``, ``"3"``, ``"none"``) as
    well as Python values; never silently keeps a value of the wrong kind.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
            return None
        if len(inner) == 1:
            return coerce(name, inner[0], value)
        for alt in inner:  # X | Y | None: the first kind that takes the value
            try:
                return _convert(alt, typing.get_origin(alt), typing.get_args(alt), value)
            except (TypeError, ValueError):
                continue
        raise ValueError(
            f"{name}: cannot use {value!r} ({type(value).__name__}) as "
            + " or ".join(_kind_name(a) for a in inner)
        )
    try:
        return _convert(tp, origin, args, value)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name}: cannot use {value!r} ({type(value).__name__}) as {_kind_name(tp)}"
        ) from exc


def _convert(tp: Any, origin: Any, args: tuple[Any, ...], value: Any) -> Any:
    if value is None:
        raise TypeError("null is not allowed")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"not one of {args}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise TypeError
    if tp is int:
        return _int(value)
    if tp is float:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    if tp is str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise TypeError
        return value
    if origin is list:
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise TypeError
        (item,) = args
        return [_convert(item, typing.get_origin(item), typing.get_args(item), v) for v in value]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise TypeError
        _, item = args
        if item is Any:
            return dict(value)
        return {
            str(k): _convert(item, typing.get_origin(item), typing.get_args(item), v)
            for k, v in value.items()
        }
    if tp is Any:
        return value
    raise TypeError(f"no conversion for {tp!r}")  # pragma: no cover - a new field's type


def coerce_field(name: str, tp: Any, metadata: Mapping[str, Any], value: Any) -> Any:
    """:func:`coerce` for a field: a size field also takes ``"512MB"``-style strings."""
    if metadata.get("size") and isinstance(value, str):
        value = _size(name, value)
    return coerce(name, tp, value)


def _size(name: str, text: str) -> int | str:
    """``"512MB"`` -> bytes (``"none"`` and plain numbers are left to :func:`coerce`)."""
    from framestream._units import parse_size

    if text.strip().lower() in ("none", ""):
        return text
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return parse_size(text)
    except Exception:  # argparse.ArgumentTypeError
        raise ValueError(f"{name}: cannot use {text!r} as a size (e.g. 512MB, 2G)") from None


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("bool is not an int")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{value} is not an integer")
    return int(value)


def _kind_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return "list"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))
