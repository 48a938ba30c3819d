"""framestream: stream LeRobot v3.0 datasets (parquet + mp4) into PyTorch training.

The public surface is small; everything in a ``_module`` is private.

- :class:`StreamingLeRobotDataset`: the iterable dataset for training (shuffle, rank/worker
  split, windows of any length, decode-once video, resumable).
- :class:`MapDataset` (alias ``LeRobotDataset``): random access, the reference for parity.
- :class:`DatasetMeta`: ``info.json``, episodes index and tasks of a dataset.
- :class:`StreamOptions`: every streaming knob, typed and validated once.
- :class:`RemoteOptions`: timeouts, retries and fetch sizes for remote sources.
- :class:`DatasetConfig` / :func:`make_dataset`: build either dataset from a YAML/JSON config.
- :func:`generate_synthetic_dataset`: a valid v3.0 dataset with identifiable frames.
- :func:`yuv_to_rgb`: torchcodec's exact RGB from ``pixel_format="yuv420"`` batches, on any
  device.
"""

from framestream._errors import (
    DatasetFormatError,
    DatasetNotFoundError,
    EpisodeNotFoundError,
    FramestreamError,
    SourceError,
    StateDictError,
    TimestampToleranceError,
    VideoDecodeError,
)
from framestream.batch.collate import collate
from framestream.config import DatasetConfig, make_dataset
from framestream.datasets.map_style import MapDataset
from framestream.datasets.streaming import StreamingLeRobotDataset, merge_states
from framestream.decode.yuv import yuv_to_rgb
from framestream.format.meta import DatasetMeta
from framestream.io.remote import RemoteOptions
from framestream.stream.options import StreamOptions

LeRobotDataset = MapDataset

__version__ = "0.1.0"


def generate_synthetic_dataset(*args, **kwargs):  # noqa: ANN002, ANN003
    """See :func:`framestream.testing.synth.generate_synthetic_dataset` (imported lazily: PyAV)."""
    from framestream.testing.synth import generate_synthetic_dataset as _gen

    return _gen(*args, **kwargs)


__all__ = [
    "DatasetConfig",
    "DatasetFormatError",
    "DatasetMeta",
    "DatasetNotFoundError",
    "EpisodeNotFoundError",
    "FramestreamError",
    "LeRobotDataset",
    "MapDataset",
    "RemoteOptions",
    "SourceError",
    "StateDictError",
    "StreamOptions",
    "StreamingLeRobotDataset",
    "TimestampToleranceError",
    "VideoDecodeError",
    "__version__",
    "collate",
    "generate_synthetic_dataset",
    "make_dataset",
    "merge_states",
    "yuv_to_rgb",
]
