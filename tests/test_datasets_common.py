"""framestream.datasets.common: a process's memory counters reach a stats board once each,
however many of its streams publish there."""

from __future__ import annotations

import os
import subprocess
import sys

from framestream.batch import slots as _slots
from framestream.datasets.common import Publisher
from framestream.decode import buffers as _buffers
from framestream.stream.stats import StatsBoard


def test_two_publishers_of_one_board_give_each_increment_once():
    """A persistent worker's next-pass stream gets its publisher while the last pass still
    publishes: the increments between them must not be counted by both."""
    board, other = StatsBoard(), StatsBoard()
    pool, buffers = _slots.pool(), _buffers.pool()
    current = Publisher(board, 1)
    pool.in_place += 3
    buffers.reused += 5
    prepared = Publisher(board, 1)  # built while `current` drains
    pool.in_place += 2
    current({"samples": 1})  # the last pass ends: 3 + 2
    pool.in_place += 4
    prepared({"samples": 1})  # the next pass: 4
    Publisher(other, 1)({})  # another board counts from its own first publisher
    t = board.totals()
    assert t["batches_in_place"] == 9
    assert t["frame_buffers_reused"] == 5
    assert t["samples"] == 2
    assert other.totals()["batches_in_place"] == 0


_LOADER = """
import sys
from torch.utils.data import DataLoader
from framestream import StreamingLeRobotDataset

ds = StreamingLeRobotDataset(sys.argv[1], return_uint8=True, seed=7)
loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True, timeout=120)
batches = 0
for epoch in range(3):
    ds.set_epoch(epoch)
    batches += sum(1 for _ in loader)
s = ds.stats()
print(batches, s["prepared_passes"], s["batches_in_place"], s["batch_slots_reused"],
      s["batch_slot_fallbacks"])
"""


def test_persistent_workers_count_each_batch_once(small_root):
    """Three epochs on persistent workers (two passes start on prepared streams): no batch
    counter exceeds the batches delivered. (A subprocess: a fresh process's counters.)"""
    out = subprocess.run(
        [sys.executable, "-c", _LOADER, str(small_root)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert out.returncode == 0, out.stderr
    batches, prepared, in_place, reused, fallbacks = map(int, out.stdout.split())
    assert prepared >= 2  # the overlap this is about happened
    assert 0 < in_place <= batches
    assert 0 < reused + fallbacks <= batches
