"""Loopback servers for tests and benchmarks: S3 (moto) and HTTP with range requests.

Why: remote reading is only proven against real protocol servers, and its fault handling only
against servers that misbehave on demand. Both servers listen on 127.0.0.1 on a free port,
serve a local dataset folder, and share a :class:`Faults` switchboard: slow answers, HTTP
errors for the next N requests, truncated transfers, objects that shrink or change between
requests, and :meth:`ServerHandle.stop`, which also cuts open keep-alive connections (a
stopped server must look stopped to a client with pooled connections).

    with serve("http", "/path/to/dataset") as srv:
        ds = StreamingLeRobotDataset(srv.url, storage_options=srv.storage_options)

The S3 server runs moto's WSGI application (the one ``moto.server.ThreadedMotoServer`` runs)
in a threaded werkzeug server of our own, so that faults can be injected and connections cut.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

__all__ = ["Faults", "ServerHandle", "serve"]


@dataclass
class Faults:
    """What the server does wrong, changed by a test at any time (thread-safe enough: ints).

    Attributes:
        match: faults apply only to request paths containing this string ("" = all).
        delay_s: sleep this long before answering each matching request.
        errors: answer the next ``errors`` matching requests with ``error_status``.
        error_status: 500, 503...
        truncate_transfer: announce the full length but send half the body, then hang up.
        truncate_object: GET serves the first half of the file (with an honest length)
            while HEAD still announces the full size: an object that shrank.
        change_etag: each response carries a new ETag (an object being rewritten).
        requests: matching requests seen (read it to see that a fault was exercised).
        ignore_range: (HTTP) answer range requests with the whole object and status 200, as
            a server without Range support does.
        latency_s, bandwidth_bps: shape the link for benchmarks: every request (matching or
            not) waits ``latency_s`` before its answer, and bodies are sent at most at
            ``bandwidth_bps`` bytes per second (per connection; 0: unlimited).
        log: ``(method, path, range header, status)`` of every request (HTTP; S3: GET/HEAD),
            for tests that count requests per file.
    """

    match: str = ""
    delay_s: float = 0.0
    errors: int = 0
    error_status: int = 503
    truncate_transfer: bool = False
    truncate_object: bool = False
    change_etag: bool = False
    requests: int = 0
    ignore_range: bool = False
    latency_s: float = 0.0
    bandwidth_bps: float = 0.0
    log: list[tuple[str, str, str, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _etag_seq: int = 0

    def applies(self, path: str) -> bool:
        return self.match in path

    def take_error(self) -> int | None:
        with self._lock:
            self.requests += 1
            if self.errors > 0:
                self.errors -= 1
                return self.error_status
        return None

    def next_etag_suffix(self) -> str:
        with self._lock:
            self._etag_seq += 1
            return f"-{self._etag_seq}" if self.change_etag else ""

    def clear(self) -> None:
        with self._lock:
            self.match, self.delay_s, self.errors = "", 0.0, 0
            self.truncate_transfer = self.truncate_object = self.change_etag = False
            self.ignore_range = False

    def record(self, method: str, path: str, rng: str, status: int) -> None:
        with self._lock:
            self.log.append((method, path, rng, status))

    def send(self, write: Any, data: bytes) -> None:
        """Write ``data`` at no more than ``bandwidth_bps``."""
        if not self.bandwidth_bps:
            write(data)
            return
        step = max(1, int(self.bandwidth_bps / 100))  # 10 ms slices
        t0 = time.monotonic()
        for i in range(0, len(data), step):
            write(data[i : i + step])
            ahead = (i + step) / self.bandwidth_bps - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)


class _ConnectionTracking:
    """Mixin for socketserver servers: remember open connections, cut them all on stop."""

    def _track_init(self) -> None:
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)  # type: ignore[misc]

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)  # type: ignore[misc]

    def cut_connections(self) -> None:
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.close()


# --------------------------------------------------------------------------- HTTP
class _RangeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers
    server: _RangeHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet tests
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def _plain(self, status: int, body: bytes = b"", extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self, head: bool) -> None:
        srv = self.server
        faults = srv.faults
        url_path = unquote(urlsplit(self.path).path)
        if faults.latency_s:
            time.sleep(faults.latency_s)
        faulty = faults.applies(url_path)
        if faulty:
            if faults.delay_s:
                time.sleep(faults.delay_s)
            status = faults.take_error()
            if status is not None:
                self._plain(status, b"injected fault\n")
                return
        rel = url_path.lstrip("/")
        target = (srv.root / rel).resolve()
        if srv.root not in target.parents and target != srv.root or not target.is_file():
            self._plain(404, b"not found\n")
            return
        st = target.stat()
        size = st.st_size
        etag = f'"{size:x}-{st.st_mtime_ns:x}{faults.next_etag_suffix() if faulty else ""}"'
        served = size // 2 if faulty and faults.truncate_object and not head else size
        start, end = 0, served  # [start, end)
        status = 200
        rng = self.headers.get("Range")
        if faulty and faults.ignore_range:
            rng = None
        if rng and rng.startswith("bytes=") and "," not in rng:
            a, _, b = rng[6:].strip().partition("-")
            try:
                if a == "":
                    start, end = max(0, served - int(b)), served
                else:
                    start = int(a)
                    end = min(served, int(b) + 1) if b else served
            except ValueError:
                start, end = 0, served
            else:
                if start >= served or end <= start:
                    self._plain(416, extra={"Content-Range": f"bytes */{served}"})
                    return
                status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{served}")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        faults.record(self.command, url_path, self.headers.get("Range") or "", status)
        if head:
            return
        send = end - start
        if faulty and faults.truncate_transfer:
            send //= 2
        with open(target, "rb") as f:
            f.seek(start)
            left = send
            while left > 0:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    break
                try:
                    faults.send(self.wfile.write, chunk)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client stopped reading (a 200 refused)
                    return
                left -= len(chunk)
        if send != end - start:
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


class _RangeHTTPServer(_ConnectionTracking, ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, root: Path, faults: Faults) -> None:
        self.root, self.faults = root.resolve(), faults
        self._track_init()
        super().__init__(("127.0.0.1", 0), _RangeHandler)


# --------------------------------------------------------------------------- S3
def _s3_app(faults: Faults) -> Any:
    """moto's S3 WSGI app behind a fault-injecting middleware."""
    from moto.server import DomainDispatcherApplication, create_backend_app

    app = DomainDispatcherApplication(create_backend_app)

    def middleware(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if method in ("GET", "HEAD"):
            faults.record(method, path, environ.get("HTTP_RANGE", ""), 0)
            if faults.latency_s:
                time.sleep(faults.latency_s)
            if faults.bandwidth_bps and method == "GET":
                body = b"".join(app(environ, start_response))
                time.sleep(len(body) / faults.bandwidth_bps)
                return [body]
        if method not in ("GET", "HEAD") or not faults.applies(path):
            return app(environ, start_response)
        if faults.delay_s:
            time.sleep(faults.delay_s)
        status = faults.take_error()
        if status is not None:
            code = "ServiceUnavailable" if status == 503 else "InternalError"
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>injected fault</Message></Error>"
            ).encode()
            start_response(
                f"{status} Injected",
                [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
            )
            return [body] if method == "GET" else []
        if method == "GET" and faults.truncate_transfer:
            body = b"".join(app(environ, start_response))

            def cut() -> Iterator[bytes]:
                yield body[: len(body) // 2]
                raise ConnectionAbortedError("injected truncated transfer")

            return cut()
        return app(environ, start_response)

    return middleware


def _s3_server(faults: Faults) -> Any:
    from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

    class Quiet(WSGIRequestHandler):
        protocol_version = "HTTP/1.1"

        def log(self, *args: Any) -> None:
            pass

    class Server(_ConnectionTracking, ThreadedWSGIServer):
        def __init__(self) -> None:
            self._track_init()
            super().__init__("127.0.0.1", 0, _s3_app(faults), handler=Quiet)

    return Server()


def _upload(endpoint: str, bucket: str, prefix: str, root: Path) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=bucket)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(root).as_posix()}"
            client.upload_file(str(path), bucket, key)


# --------------------------------------------------------------------------- handle
@dataclass
class ServerHandle:
    """A running loopback server: pass ``url`` and ``storage_options`` to a dataset."""

    url: str
    storage_options: dict[str, Any]
    faults: Faults
    kind: str
    _server: Any = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    stopped: bool = False
    root: Path | None = None

    def replace(self, relative: str, data: bytes) -> None:
        """Replace the object at ``relative`` (a dataset path) with ``data`` on the server."""
        if self.kind == "http":
            assert self.root is not None
            target = self.root / relative
            tmp = target.with_name(target.name + ".replacing")
            tmp.write_bytes(data)
            os.replace(tmp, target)
            return
        import boto3

        ck = self.storage_options["client_kwargs"]
        client = boto3.client(
            "s3",
            endpoint_url=ck["endpoint_url"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        bucket, prefix = self.url[len("s3://") :].split("/", 1)
        client.put_object(Bucket=bucket, Key=f"{prefix}/{relative}", Body=data)

    def stop(self) -> None:
        """Stop listening and cut every open connection (idempotent)."""
        if self.stopped:
            return
        self.stopped = True
        self._server.shutdown()
        self._server.cut_connections()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    source: Literal["s3", "http"],
    local_root: str | os.PathLike[str],
    *,
    faults: Faults | None = None,
) -> ServerHandle:
    """Serve the dataset folder ``local_root`` over ``source`` on 127.0.0.1 (a free port).

    ``"s3"``: a moto S3 server; the folder is uploaded to a fresh bucket (unique name: moto's
    state is per process, shared by every server in it) under the prefix ``dataset``.
    ``"http"``: a threaded HTTP/1.1 server with Range, HEAD and ETag support, no listings.
    """
    root = Path(local_root).resolve()
    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"{root}: not a dataset folder (no meta/info.json)")
    faults = faults or Faults()
    if source == "http":
        server: Any = _RangeHTTPServer(root, faults)
    elif source == "s3":
        server = _s3_server(faults)
    else:
        raise ValueError(f"source must be 's3' or 'http', got {source!r}")
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    host, port = server.server_address[:2]
    endpoint = f"http://{host}:{port}"
    if source == "http":
        return ServerHandle(f"{endpoint}/", {}, faults, "http", server, thread, root=root)
    bucket = f"framestream-{uuid.uuid4().hex[:12]}"
    try:
        _upload(endpoint, bucket, "dataset", root)
    except BaseException:
        server.shutdown()
        server.server_close()
        raise
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    return ServerHandle(f"s3://{bucket}/dataset", options, faults, "s3", server, thread, root=root)
