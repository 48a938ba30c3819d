"""framestream.stream.stats: a snapshot never shows half of a worker's publication."""

from __future__ import annotations

import multiprocessing as mp

from framestream.stream.stats import StatsBoard


def _publish(board: StatsBoard, n: int) -> None:
    for _ in range(n):
        board.add(1, {"samples": 1, "delivered_frames": 18, "decoded_frames": 2})


def test_snapshots_are_consistent_while_a_worker_publishes():
    board = StatsBoard()
    proc = mp.get_context("fork").Process(target=_publish, args=(board, 20_000))
    proc.start()
    snapshots = 0
    while proc.is_alive() or snapshots == 0:
        t = board.totals()
        assert t["delivered_frames"] == 18 * t["samples"], t
        assert t["decoded_frames"] == 2 * t["samples"], t
        snapshots += 1
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert board.totals()["samples"] == 20_000
    board.reset()
    assert board.totals()["samples"] == 0


def test_peaks_combine_by_max_and_min_over_workers_and_passes():
    board = StatsBoard()
    board.add(1, {"memory_peak_bytes": 300, "reservoir_limited_min": 7, "samples": 5})
    board.add(2, {"memory_peak_bytes": 500, "reservoir_limited_min": 0, "samples": 5})
    board.add(1, {"memory_peak_bytes": 200, "reservoir_limited_min": 9, "samples": 1})  # pass 2
    t = board.totals()
    assert (t["memory_peak_bytes"], t["reservoir_limited_min"], t["samples"]) == (500, 0, 11)
    board.reset()
    assert board.totals()["reservoir_limited_min"] is None  # nothing published


def test_a_setting_is_summed_over_workers_but_not_over_passes():
    """Each pass of a persistent worker publishes its budget again: the total stays the
    workers' budgets together (it grew by one budget per pass)."""
    board = StatsBoard()
    for _ in range(3):  # three passes (epochs) of two workers
        board.add(1, {"memory_budget_bytes": 112, "samples": 2})
        board.add(2, {"memory_budget_bytes": 112, "samples": 2})
    t = board.totals()
    assert (t["memory_budget_bytes"], t["samples"]) == (224, 12)
