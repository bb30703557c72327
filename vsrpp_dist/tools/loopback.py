"""Real servers on 127.0.0.1 for the remote-shard benchmark and tests: a folder over HTTP (the standard
library's http.server in a thread) and an S3-compatible store (moto's server mode, `moto[server]`).
Nothing here listens on any other address."""

from __future__ import annotations

import atexit
import contextlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

LOOPBACK = "127.0.0.1"


class QuietFileHandler(http.server.SimpleHTTPRequestHandler):
    """A file server that does not log every request to stderr."""

    def log_message(self, format, *args) -> None:  # noqa: A002 (the standard library's name)
        pass


@contextlib.contextmanager
def http_folder(folder: str | Path, handler: type = QuietFileHandler) -> Iterator[tuple[str, http.server.HTTPServer]]:
    """Serve `folder` at http://127.0.0.1:PORT (a free port); yields (base URL, server)."""
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), partial(handler, directory=str(folder)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="loopback-http", daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


S3_TEST_ENV = {"AWS_ACCESS_KEY_ID": "loopback", "AWS_SECRET_ACCESS_KEY": "loopback",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


class ServerProcess:
    """A server in its own process on 127.0.0.1:port (its work does not compete with the measured
    process for the GIL, and kill() ends it the way a crash does: every connection drops)."""

    def __init__(self, command: list[str], port: int, cwd: str | None = None) -> None:
        self.command, self.port, self.cwd = command, port, cwd
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self, ready_within_s: float = 60.0) -> None:
        self.process = subprocess.Popen(self.command, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        atexit.register(self.kill)  # a caller that dies of an exception leaves no server behind
        deadline = time.monotonic() + ready_within_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{' '.join(self.command)} exited with {self.process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{' '.join(self.command)} did not listen on port {self.port} within {ready_within_s:.0f} s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class S3Server(ServerProcess):
    """moto's S3-compatible server (`moto[server]`); `env` is what points botocore/s3fs at it: the
    endpoint and throw-away credentials, so no credential lookup ever leaves the machine. Its buckets live
    in its process: a restart after kill() starts empty."""

    def __init__(self, port: int | None = None) -> None:
        port = port or free_port()
        super().__init__([sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)], port)
        self.env = {**S3_TEST_ENV, "AWS_ENDPOINT_URL_S3": f"http://{LOOPBACK}:{port}"}

    def stop(self) -> None:
        self.kill()


class HttpServer(ServerProcess):
    """`python -m http.server` over a folder."""

    def __init__(self, folder: str | Path, port: int | None = None) -> None:
        port = port or free_port()
        super().__init__([sys.executable, "-m", "http.server", "--bind", LOOPBACK, str(port)], port, cwd=str(folder))
        self.url = f"http://{LOOPBACK}:{port}"


@contextlib.contextmanager
def s3_environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ with `env` set (the way users point s3fs at a store), restored afterwards."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def upload_folder(folder: str | Path, url: str) -> None:
    """Copy every file of `folder` to s3://bucket/prefix (the bucket is made if missing)."""
    from ..data.locations import Location

    location = Location(url)
    fs = location.filesystem()
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    from ..data.shard_format import MANIFEST_NAME

    for path in sorted(Path(folder).iterdir(), key=lambda p: (p.name == MANIFEST_NAME, p.name)):  # manifest last
        if path.is_file():
            location.upload(path, path.name)
