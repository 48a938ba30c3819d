"""Remote reads: URL resolution, the retry policy and what counts as transient.

Kept apart from :mod:`framestream.io.source` so that the policy (which errors are worth
another try, how long to wait, what a Hub repo id means) reads on its own.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from framestream._errors import SourceError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9_.\-]+$")
_HF_DATASET = re.compile(r"^hf://datasets/([^/@]+)/([^/@]+)(@[^/]+)?(/.*)?$")


@dataclass(frozen=True)
class RemoteOptions:
    """How remote files are fetched; the defaults suit object stores over a real network.

    Attributes:
        connect_timeout_s, read_timeout_s: per request; a server that stops answering is an
            error after ``read_timeout_s`` of silence, never a hang.
        retries: further attempts after a transient failure (timeouts, connection errors,
            HTTP 5xx/408/429, short reads), each after an exponential backoff starting at
            ``backoff_s`` and capped at ``max_backoff_s`` (with jitter).
        block_size: bytes per range request when a file is fetched into the cache.
        concurrency: range requests in flight per file being fetched.
        read_buffer_size: read size when a file is read in place (no cache).
        metadata_in_place_bytes: ``meta/episodes`` parquet files at least this large are
            read in place, column-selectively, instead of being fetched whole into the cache
            (pyarrow reads a 64 KiB footer first: below a few MiB there is little to save).
        revalidate: check a cached copy's size/ETag against the remote once per process
            (a cached copy is still used when the remote cannot be reached).
        lock_timeout_s: the longest a worker waits for another one's download of a file (a
            last resort: a download itself ends within its timeouts and retries).
    """

    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    retries: int = 4
    backoff_s: float = 0.25
    max_backoff_s: float = 8.0
    block_size: int = 8 * 2**20
    concurrency: int = 4
    read_buffer_size: int = 2**20
    metadata_in_place_bytes: int = 4 * 2**20
    revalidate: bool = True
    lock_timeout_s: float = 1800.0


class RemoteChangedError(SourceError):
    """A remote object's size or ETag changed while it was being read."""


class _ShortReadError(OSError):
    """A byte range came back shorter or longer than asked: truncated object or transfer."""


def is_hub_repo_id(path: str) -> bool:
    """``org/name`` that cannot be a local path: exactly two parts, no leading ``/ . ~``, and
    the first part is not an existing local folder (``data/my_dataset`` beside a ``data/``
    folder is a local dataset, existing or not: never a Hub lookup)."""
    return (
        "://" not in path
        and bool(_HUB_ID.match(path))
        and not os.path.exists(path.split("/", 1)[0])
    )


def resolve_url(url: str, revision: str | None = None) -> str:
    """The fsspec URL for a dataset root: Hub repo ids become ``hf://datasets/ID[@REV]``.

    A bare ``org/name`` that is not an existing local path is a Hub dataset repo id.
    ``revision`` (a branch, tag or commit) is added to ``hf://datasets/...`` URLs; it is an
    error to give one for any other kind of root, or one that disagrees with the URL's.
    """
    url = os.fspath(url)
    if is_hub_repo_id(url):
        url = f"hf://datasets/{url}"
    if revision is None:
        return url
    m = _HF_DATASET.match(url.rstrip("/"))
    if m is None:
        raise ValueError(f"revision={revision!r} applies to Hub datasets only, not {url!r}")
    org, name, rev, rest = m.groups()
    encoded = quote(revision, safe="")
    if rev is not None and rev[1:] not in (revision, encoded):
        raise ValueError(f"{url!r} names revision {rev[1:]!r} but revision={revision!r}")
    return f"hf://datasets/{org}/{name}@{encoded}{rest or ''}"


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (aiohttp, botocore, requests/httpx), if any."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):  # botocore ClientError
        code = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(code) if code else None
    code = getattr(resp, "status_code", None)
    return int(code) if isinstance(code, int) else None


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 8:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


_PERMANENT_BOTO = ("NoCredentialsError", "PartialCredentialsError", "ParamValidationError")


def is_transient(exc: BaseException) -> bool:
    """Whether retrying may help: timeouts, dropped connections, 5xx/408/429, short reads.

    Looks through the exception's causes, because fsspec re-raises a failed HTTP HEAD as
    ``FileNotFoundError`` and s3fs re-raises a 503 as a plain ``OSError``.
    """
    chain = _chain(exc)
    for e in chain:
        status = _status_of(e)
        if status is not None:
            return status >= 500 or status in (408, 429)
    for e in chain:
        if isinstance(e, (_ShortReadError, TimeoutError, ConnectionError)):
            return True
        mod = type(e).__module__
        if mod.startswith(("aiohttp", "httpx", "requests", "urllib3")):
            return True
        if mod.startswith(("botocore", "aiobotocore")):
            return type(e).__name__ not in _PERMANENT_BOTO
    top = chain[0]
    if isinstance(top, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    return isinstance(top, OSError)


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text and isinstance(exc, TimeoutError):
        text = "timed out"
    return f"{type(exc).__name__}: {text}"[:400] if text else type(exc).__name__


def _etag_of(info: dict[str, Any]) -> str | None:
    for k in ("ETag", "etag", "e_tag"):
        if info.get(k):
            return str(info[k]).strip('"')
    lfs = info.get("lfs")
    if isinstance(lfs, dict) and lfs.get("sha256"):
        return str(lfs["sha256"])
    for k in ("blob_id", "checksum", "md5", "Content-MD5"):
        if info.get(k):
            return str(info[k])
    return None
