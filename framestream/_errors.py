"""Errors framestream raises. Each names the file, episode and problem where it knows them."""

from __future__ import annotations


class FramestreamError(Exception):
    """Base class of every error framestream raises on purpose."""


class DatasetFormatError(FramestreamError, ValueError):
    """The dataset's metadata or files do not follow the LeRobot v3.0 format."""


class EpisodeNotFoundError(FramestreamError, KeyError):
    """An episode index that the dataset does not contain."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class VideoDecodeError(FramestreamError, RuntimeError):
    """A video file is missing, corrupt, or a decoded frame is not the one asked for."""


class TimestampToleranceError(VideoDecodeError):
    """A decoded frame's timestamp is further than ``tolerance_s`` from the query."""


class StateDictError(FramestreamError, ValueError):
    """A ``state_dict`` that cannot be loaded into this dataset."""


class SourceError(FramestreamError, OSError):
    """A remote or local source failed after the configured retries."""


class DatasetNotFoundError(FramestreamError, FileNotFoundError):
    """A local dataset folder that does not exist (never retried, never a Hub lookup)."""
