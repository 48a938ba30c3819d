"""framestream: stream LeRobot v3.0 datasets into PyTorch training."""

from framestream._errors import (
    DatasetFormatError,
    EpisodeNotFoundError,
    FramestreamError,
    SourceError,
    StateDictError,
    TimestampToleranceError,
    VideoDecodeError,
)

__version__ = "0.1.0"

__all__ = [
    "DatasetFormatError",
    "EpisodeNotFoundError",
    "FramestreamError",
    "SourceError",
    "StateDictError",
    "TimestampToleranceError",
    "VideoDecodeError",
    "__version__",
]
