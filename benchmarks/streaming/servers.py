"""Loopback S3 and HTTP servers for ``benchmark_streaming.py --source s3|http``.

The servers themselves live in :mod:`framestream.testing.servers` (the tests use them too);
this file is the benchmark's entry point: ``serve(source, local_root) -> handle`` with
``handle.url``, ``handle.storage_options`` and ``handle.stop()``.

- ``"s3"``: moto's S3 application on 127.0.0.1 (a free port); the dataset folder is uploaded
  to a fresh bucket and served as ``s3://<bucket>/dataset``.
- ``"http"``: a threaded HTTP/1.1 server on 127.0.0.1 that serves the folder with Range
  (206), HEAD, ``Accept-Ranges``, ``Content-Length`` and ``ETag``, and no folder listings
  (as a CDN or the Hub's resolve URLs).

Both only ever listen on loopback.
"""

from __future__ import annotations

import os
from typing import Literal

from framestream.testing.servers import Faults, ServerHandle
from framestream.testing.servers import serve as _serve

__all__ = ["Faults", "ServerHandle", "serve"]


def serve(source: Literal["s3", "http"], local_root: str | os.PathLike[str]) -> ServerHandle:
    """Serve the dataset folder ``local_root`` over ``source`` on 127.0.0.1; see the module."""
    return _serve(source, local_root)
