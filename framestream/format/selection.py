"""Episode selection: which episodes of a dataset a reader exposes, in what order."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from framestream.format.meta import DatasetMeta

__all__ = ["select_episodes"]


def select_episodes(meta: DatasetMeta, episodes: Sequence[int] | None) -> np.ndarray:
    """The selected episode indices in the order given; each checked to exist."""
    if episodes is None:
        return meta.episodes.episode_index.copy()
    sel = np.asarray(list(episodes), dtype=np.int64)
    if len(sel) == 0:
        raise ValueError("episodes=[] selects no episode: nothing to stream (None means all)")
    if len(np.unique(sel)) != len(sel):
        raise ValueError("episodes= lists an episode more than once")
    for e in sel:
        meta.episodes.row(int(e))  # raises EpisodeNotFoundError
    return sel
