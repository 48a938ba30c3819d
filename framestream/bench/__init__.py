"""The streaming benchmark, shared by ``benchmarks/streaming/benchmark_streaming.py`` and
``framestream bench``.

Why library code: the numbers people compare loaders by must come from one definition.
The script (for clusters, CSV matrices) and the CLI (for a quick look) both call
:func:`run_benchmark`, so they cannot drift apart in what "samples/s" or "latency" means.

What a run does: build a :class:`~framestream.StreamingLeRobotDataset` for a *mode* (the
shape of the samples), iterate it through a real ``torch.utils.data.DataLoader`` with a dummy
consumer that touches every tensor page and discards it, time every batch, read the dataset's
counters (summed over the DataLoader workers), and optionally measure the machine's
sequential decode ceiling on the same mp4 files. Under ``torchrun``/``accelerate launch``/
``srun`` every rank runs the same thing and figures are summed per node over a gloo group.
See ``benchmarks/streaming/README.md`` for what each figure means.

The modules, one job each: :mod:`.config` (settings and flags), :mod:`.windows` (frame
windows per mode), :mod:`.measure` (the timed loop, latency, peak memory), :mod:`.dist` (ranks
and per-node sums), :mod:`.ceiling` (the decode ceiling), :mod:`.shuffle` (the perfect-shuffle
reference), :mod:`.system` (versions and machine), :mod:`.outputs` (JSON, CSV, summary),
:mod:`.remote` (the shaped loopback server, cold caches, bytes fetched against needed),
:mod:`.ranks` (``--ranks N``: rank processes against one server, their totals) and
:mod:`.runner`, which puts them together.
"""

from __future__ import annotations

from framestream.bench.ceiling import measure_ceiling, node_cpus
from framestream.bench.config import MODES, TARGETS, BenchConfig, add_arguments, effective_warmup
from framestream.bench.dist import DistInfo, detect_dist, init_dist
from framestream.bench.measure import RssTracker, percentiles, touch
from framestream.bench.outputs import CSV_FIELDS, append_csv, format_summary, write_outputs
from framestream.bench.runner import run_benchmark, run_benchmarks
from framestream.bench.shuffle import expected_distinct_episodes
from framestream.bench.system import machine, versions
from framestream.bench.windows import CAMERAS_KEY, mode_frames, parse_delta_spec, resolve_deltas

__all__ = [
    "CAMERAS_KEY",
    "CSV_FIELDS",
    "MODES",
    "TARGETS",
    "BenchConfig",
    "DistInfo",
    "RssTracker",
    "add_arguments",
    "append_csv",
    "detect_dist",
    "effective_warmup",
    "expected_distinct_episodes",
    "format_summary",
    "init_dist",
    "machine",
    "measure_ceiling",
    "mode_frames",
    "node_cpus",
    "parse_delta_spec",
    "percentiles",
    "resolve_deltas",
    "run_benchmark",
    "run_benchmarks",
    "touch",
    "versions",
    "write_outputs",
]
