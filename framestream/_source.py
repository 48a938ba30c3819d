"""Where a dataset's bytes come from: one fsspec filesystem and a root inside it.

Everything downstream asks the :class:`Source` for a relative path (``meta/info.json``,
``videos/cam/chunk-000/file-001.mp4``), so nothing assumes a local folder. Local paths get a
fast path (decoders open them by name, without a Python file object in between).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

from framestream._errors import DatasetFormatError, SourceError


@dataclass
class Source:
    """A dataset root on some filesystem, plus the options used to open it."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.url = os.fspath(self.url)
        fs, root = url_to_fs(self.url, **self.storage_options)
        self.fs: fsspec.AbstractFileSystem = fs
        self.root: str = root.rstrip("/")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.is_local = protocol in ("file", "local")

    def __getstate__(self) -> dict[str, Any]:
        # Filesystems are re-created in each worker process rather than pickled.
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url = state["url"]
        self.storage_options = state["storage_options"]
        self.__post_init__()

    def path(self, relative: str) -> str:
        """The full path of ``relative`` on this source's filesystem."""
        return f"{self.root}/{relative}" if self.root else relative

    def describe(self, relative: str) -> str:
        """A human-readable location for error messages."""
        if self.is_local:
            return self.path(relative)
        return f"{self.url.rstrip('/')}/{relative}"

    def exists(self, relative: str) -> bool:
        return self.fs.exists(self.path(relative))

    def open(self, relative: str, mode: str = "rb") -> IO[bytes]:
        """Open a file; a missing file raises :class:`FileNotFoundError` naming it."""
        try:
            return self.fs.open(self.path(relative), mode)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{self.describe(relative)}: file not found") from exc
        except OSError as exc:
            raise SourceError(f"{self.describe(relative)}: cannot open ({exc})") from exc

    def local_path(self, relative: str) -> str | None:
        """A path a native library can open directly, or None for remote files."""
        return self.path(relative) if self.is_local else None

    def read_json(self, relative: str) -> dict[str, Any]:
        with self.open(relative) as f:
            raw = f.read()
        try:
            value = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetFormatError(f"{self.describe(relative)}: not valid JSON ({exc})") from exc
        if not isinstance(value, dict):
            raise DatasetFormatError(f"{self.describe(relative)}: expected a JSON object")
        return value

    def list(self, relative_dir: str) -> list[str]:
        """Relative paths of the files below ``relative_dir`` (recursively), sorted."""
        base = self.path(relative_dir)
        if not self.fs.exists(base):
            return []
        prefix = self.root + "/" if self.root else ""
        out = []
        for p in self.fs.find(base):
            p = p if not self.is_local else os.path.normpath(p)
            rel = p[len(prefix) :] if p.startswith(prefix) else p
            out.append(rel)
        return sorted(out)
