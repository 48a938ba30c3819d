"""The lifetime of a run's pin records: ``<cache>/pins/<run>/``, held while the run lives.

Why: a run records, per remote file, the size/ETag it first saw (the version it reads, see
:meth:`framestream.io.fetch.RemoteReads._remote_info`) in the cache folder so that all its
workers read one version. Those records mean nothing once the run is over, and one folder per
run would otherwise pile up in a long-lived cache.

Liveness is a lock, as for cache entries (:mod:`framestream.io.cache`): every process of a
run that opens its source holds a *shared* ``flock`` on ``pins/<run>.lock``
(:func:`hold_run`; DataLoader workers forked from it share the parent's). A run's folder and
lock file are removed by whoever can take the lock *exclusively* without waiting, i.e. only
when no process of the run is left: the last process to :meth:`RunLease.release` (the
source is closed or garbage-collected, or the process exits), or else :func:`sweep_runs`
when a cache is next opened (a killed run's lock died with its processes, pid reuse or pid
namespaces do not matter). Folders without a lock file (written before leases existed) are
removed once untouched for :data:`STALE_UNLOCKED_S`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
from pathlib import Path

from framestream.io.cache import _flock

PINS = "pins"
STALE_UNLOCKED_S = 24 * 3600.0
"""Age (seconds since last change) after which a run folder without a lock file is removed."""

_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


def run_dir(cache_root: str | os.PathLike[str], run_id: str) -> Path:
    """Where run ``run_id`` records the versions it reads."""
    return Path(cache_root) / PINS / run_id


def _lock_path(cache_root: str | os.PathLike[str], run_id: str) -> Path:
    return Path(cache_root) / PINS / f"{run_id}.lock"


class RunLease:
    """This process's shared hold on a run; :meth:`release` ends it (idempotent).

    A forked child inherits the object and the parent's lock with it: there, release does
    nothing (closing or unlocking the shared descriptor would drop the parent's hold).
    """

    def __init__(self, cache_root: Path, run_id: str, fd: int) -> None:
        self.cache_root, self.run_id, self._fd, self._pid = cache_root, run_id, fd, os.getpid()

    @property
    def held(self) -> bool:
        return self._fd is not None and self._pid == os.getpid()

    def release(self) -> None:
        if self._pid != os.getpid():
            return
        fd, self._fd = self._fd, None
        if fd is None:
            return
        os.close(fd)  # drops the shared lock
        remove_run_if_done(self.cache_root, self.run_id)


def hold_run(
    cache_root: str | os.PathLike[str], run_id: str, timeout_s: float = 600.0
) -> RunLease | None:
    """Take this process's shared hold on ``run_id`` (None when the cache folder is not
    writable: records then stay in memory, see ``_save_pin``)."""
    path = _lock_path(cache_root, run_id)
    deadline = time.monotonic() + timeout_s
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                _flock(fd, fcntl.LOCK_SH, deadline, f"run {run_id} in {cache_root}")
                # A sweeper may have removed the file while we waited: hold the current one.
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    return RunLease(Path(cache_root), run_id, fd)
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
    except OSError:
        return None


def remove_run_if_done(cache_root: str | os.PathLike[str], run_id: str) -> bool:
    """Remove ``run_id``'s records and lock file if no process holds the run."""
    path = _lock_path(cache_root, run_id)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _BUSY:
                return False  # a process of the run still holds it
            raise
        try:
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                return False  # replaced meanwhile: another sweeper's turn
        except FileNotFoundError:
            return False
        shutil.rmtree(run_dir(cache_root, run_id), ignore_errors=True)
        path.unlink(missing_ok=True)  # last, while still locked: holders re-check the inode
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def sweep_runs(cache_root: str | os.PathLike[str], *, now: float | None = None) -> int:
    """Remove the records of every run no process holds any more; returns how many."""
    base = Path(cache_root) / PINS
    try:
        entries = list(os.scandir(base))
    except OSError:
        return 0
    locked = {e.name[: -len(".lock")] for e in entries if e.name.endswith(".lock")}
    now = time.time() if now is None else now
    removed = 0
    for run_id in sorted(locked):
        removed += remove_run_if_done(cache_root, run_id)
    for e in entries:
        if e.name in locked or not e.is_dir(follow_symlinks=False):
            continue
        with contextlib.suppress(OSError):
            if now - e.stat(follow_symlinks=False).st_mtime > STALE_UNLOCKED_S:
                shutil.rmtree(e.path, ignore_errors=True)
                removed += 1
    return removed
