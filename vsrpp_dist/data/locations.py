"""Where shards live: a local folder, `s3://bucket/prefix`, `gs://bucket/prefix`, `http(s)://host/prefix`
or a `pipe:` command template; `manifest.json` is read from the same place as the shards.

Reading goes through well-kept libraries, never a client of our own: fsspec for http(s) (aiohttp),
s3:// (s3fs, `pip install 'vsrpp-dist[s3]'`) and gs:// (gcsfs, `[gcs]`), webdataset's `gopen` for
`pipe:` commands. Credentials come from those libraries' usual places (AWS_* variables and ~/.aws for
S3, AWS_ENDPOINT_URL_S3 for an S3-compatible store, Application Default Credentials for GCS, ~/.netrc
for HTTP): a location with credentials in it is refused, because the location is written into
RUN/config.yaml and every checkpoint; every message masks what looks like a secret anyway.

Faults. A transient error (connection reset or refused, 5xx, a read that gets nothing for
`timeout_s`) is retried after `backoff_s`, doubling, at most `retries` times per file; then, or at once
for a 403/404, the read fails with one line naming the (masked) URL. The training stream turns that
into a skipped, counted shard (stream.py); at start-up (the manifest) it is the one line the run stops
with. A retry continues where the read stopped: at the byte for local files and object stores, and for
http(s) and pipe: by reading the file again and dropping the bytes already delivered (every server can
do that; Range support is not assumed), so the bytes a reader sees never depend on the faults it met.

Read-ahead. A remote shard is read by a background thread into a buffer bounded in bytes
(`data.read_ahead_mb` per worker), so the network overlaps with decoding in the same worker.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import select
import shlex
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ShardFormatError
from ..masking import mask

# Blocks read per call: a stream (local, http, pipe) is read in small blocks; each read of an object
# store is one ranged GET, so larger blocks there keep the request count and its latency down.
STREAM_BLOCK = 1 << 20
OBJECT_BLOCK = 8 << 20

# scheme -> (fsspec protocol, the package that implements it, the extra that installs it)
FSSPEC_SCHEMES = {"s3": ("s3", "s3fs", "s3"), "gs": ("gcs", "gcsfs", "gcs"), "gcs": ("gcs", "gcsfs", "gcs"),
                  "http": ("http", "aiohttp", None), "https": ("https", "aiohttp", None)}
OBJECT_STORES = ("s3", "gs", "gcs")
PIPE_PREFIX = "pipe:"
NAME_FIELD = "{name}"


class LocationError(ShardFormatError):
    """A location that cannot be used: an unknown form, a missing library, denied, missing, unreachable.
    The message names the masked URL."""


class RemoteReadError(OSError):
    """A file could not be read from a remote location (after the retries, or at once for 403/404);
    `message` is one line naming the masked URL, `kind` tells 403/404 from a transient fault."""

    def __init__(self, message: str, *, kind: str = "transient") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind  # "missing" (404), "denied" (401, 403), "transient" (retries used up), "other"

    @property
    def missing(self) -> bool:
        """Retrying cannot help: the file is not there, or not for us."""
        return self.kind in ("missing", "denied")

    def __str__(self) -> str:
        return self.message


# -- secrets never reach a message: masking.mask, re-exported here for the data layer's callers ------

# -- the retry policy --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3  # per file, after the first attempt
    backoff_s: float = 1.0  # before the first retry; doubles each time
    timeout_s: float = 30.0  # a connection or read that gets nothing for this long fails
    read_ahead_bytes: int = 32 << 20  # per open remote file; 0: read in the caller's thread
    min_bytes_per_s: float = 0.25 * 2**20  # slower on average is a fault: bytes trickling in never time out

    @classmethod
    def from_data_config(cls, data_cfg) -> RetryPolicy:
        return cls(retries=data_cfg.remote_retries, backoff_s=data_cfg.remote_backoff_s,
                   timeout_s=data_cfg.remote_timeout_s, read_ahead_bytes=data_cfg.read_ahead_mb << 20,
                   min_bytes_per_s=data_cfg.remote_min_mb_per_s * 2**20)

    def delay(self, attempt: int) -> float:
        return self.backoff_s * 2 ** attempt

    def attempt_deadline_s(self, size: int | None) -> float:
        """How long one attempt at reading a file of `size` bytes may spend waiting on the source in all
        (time a consumer leaves it waiting does not count): the timeout, plus the size at the slowest
        acceptable rate (unknown size: a shard-sized 1 GiB)."""
        return self.timeout_s + (size if size is not None else 1 << 30) / self.min_bytes_per_s

    def longest_silence_s(self) -> float:
        """The longest a reader can legitimately wait for its next block: every attempt timing out, plus
        every backoff. Waiting longer means a library did not honour its timeout."""
        return (self.retries + 1) * self.timeout_s + sum(self.delay(i) for i in range(self.retries)) + 5.0


def classify(err: BaseException) -> str:
    """'missing' (404), 'denied' (401, 403), 'transient' (worth a retry) or 'other'."""
    chain = list(_causes(err))
    for cause in chain:
        status = _http_status(cause)
        if status is not None and 400 <= status < 600:
            if status >= 500 or status in (408, 429):
                return "transient"
            return "denied" if status in (401, 403) else "missing"
    # fsspec's http info() reports every failure as FileNotFoundError, the real one as its cause
    if any(_is_network_error(cause) for cause in chain[1:]):
        return "transient"
    for cause in chain:
        if isinstance(cause, (FileNotFoundError, IsADirectoryError)):
            return "missing"
        if isinstance(cause, PermissionError):
            return "denied"
    return "transient" if any(_is_network_error(cause) for cause in chain) else "other"


def _is_network_error(err: BaseException) -> bool:
    """Connection reset or refused, timeouts, a payload cut short, a pipe command's failure."""
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    if isinstance(err, (OSError, TimeoutError, EOFError)):
        return True
    return type(err).__module__.split(".")[0] in ("aiohttp", "botocore", "aiobotocore", "urllib3", "http")


def _http_status(err: BaseException) -> int | None:
    """The status of a server's reply (aiohttp's ClientResponseError, botocore's ClientError), not of a
    protocol error (aiohttp calls a payload cut short a 400 of its own)."""
    status = getattr(err, "status", None)
    if isinstance(status, int) and hasattr(err, "request_info"):
        return status
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status if isinstance(status, int) else None
    return None


def _causes(err: BaseException) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def describe_error(err: BaseException) -> str:
    """A library's error as one short masked phrase (no tracebacks, no multi-line server replies)."""
    for cause in _causes(err):  # the most telling part: a server's status, else the top error
        status = _http_status(cause)
        if status is not None and hasattr(cause, "request_info"):
            return f"HTTP {status} {getattr(cause, 'message', '') or ''}".strip()
    kind = classify(err)
    if isinstance(err, FileNotFoundError) and kind == "missing":
        return "not found (404)"
    if isinstance(err, PermissionError) or kind == "denied":
        return "access denied (403)"
    if isinstance(err, FileNotFoundError) and err.__cause__ is not None:
        err = err.__cause__  # fsspec's http wrapper around a network error
    text = str(err).strip()
    text = text.splitlines()[0] if text else ""
    return mask(f"{type(err).__name__}: {text}" if text else type(err).__name__)


# -- a location --------------------------------------------------------------------------------------


class Location:
    """One place that holds manifest.json and the shards it lists. Cheap to copy into DataLoader
    workers: the filesystem client is made lazily, once per process (a forked one gets its own)."""

    def __init__(self, text: str | Path, policy: RetryPolicy = RetryPolicy()) -> None:
        self.text = str(text).strip()
        self.policy = policy
        self._fs = None
        self._fs_pid = -1
        if self.text.startswith(PIPE_PREFIX):
            self.kind = "pipe"
            self.command = self.text[len(PIPE_PREFIX):].strip()
            if NAME_FIELD not in self.command:
                raise LocationError(f"{mask(self.text)}: a pipe: location is a command template that writes one "
                                    f"file to stdout, with {NAME_FIELD} where the file name goes (e.g. "
                                    f"pipe:aws s3 cp s3://bucket/shards/{NAME_FIELD} -)")
            return
        parts = urlsplit(self.text)
        scheme = parts.scheme.lower()
        if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
            self.kind = "local"
            self.path = Path(parts.path if scheme == "file" else self.text)
            return
        if scheme not in FSSPEC_SCHEMES:
            raise LocationError(f"{mask(self.text)}: unknown kind of location {scheme}:// (known: a folder, "
                                "s3://, gs://, http://, https://, pipe:COMMAND)")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise LocationError(f"{mask(self.text)}: credentials or query strings do not belong in a location "
                                "(it is written into RUN/config.yaml and every checkpoint); use the library's "
                                "usual environment or config (AWS_* or ~/.aws for S3, Application Default "
                                "Credentials for GCS, ~/.netrc for HTTP)")
        if not parts.netloc:
            raise LocationError(f"{mask(self.text)}: no {'bucket' if scheme in OBJECT_STORES else 'host'} named")
        protocol, package, extra = FSSPEC_SCHEMES[scheme]
        if importlib.util.find_spec(package) is None:
            install = f"pip install 'vsrpp-dist[{extra}]'" if extra else f"pip install {package}"
            raise LocationError(f"{mask(self.text)}: reading {scheme}:// needs the {package} package ({install})")
        self.kind = "object" if scheme in OBJECT_STORES else "http"
        self.scheme, self.protocol = scheme, protocol
        self.root = self.text.rstrip("/")

    # -- names and messages

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    def url(self, name: str = "") -> str:
        """The full address of `name` here (unmasked: for the libraries, never for messages)."""
        if self.kind == "local":
            return str(self.path / name) if name else str(self.path)
        if self.kind == "pipe":
            return PIPE_PREFIX + self.command.replace(NAME_FIELD, shlex.quote(name or "."))
        return f"{self.root}/{name}" if name else self.root

    def display(self, name: str = "") -> str:
        """The address for messages: masked; for a pipe, the template and the name."""
        if self.kind == "pipe":
            return mask(self.text) + (f" ({name})" if name else "")
        return mask(self.url(name))

    def __str__(self) -> str:
        return self.display()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fs"], state["_fs_pid"] = None, -1  # a client never travels into another process
        return state

    # -- reading

    def read_bytes(self, name: str) -> bytes:
        """A small file whole (the manifest), with retries; raises RemoteReadError (one line)."""
        return b"".join(self.blocks(name))

    def exists(self, name: str) -> bool:
        if self.kind == "local":
            return (self.path / name).is_file()
        if self.kind == "pipe":
            return True  # a command can only be tried; reading says whether it works
        fs = self.filesystem()
        if self.kind == "http":  # fsspec's http exists() GETs the file; info() asks with HEAD first
            try:
                self._retrying(name, lambda: fs.info(self.url(name)))
                return True
            except RemoteReadError as err:
                if err.kind == "missing":
                    return False
                raise
        return bool(self._retrying(name, lambda: fs.exists(self.url(name))))

    def blocks(self, name: str, size: int | None = None) -> Iterator[bytes]:
        """The bytes of `name` in order, in blocks. Transient faults are retried (resuming after the last
        byte delivered, see the module docstring); `size`, when known (the manifest's), turns a stream
        that ends early into a fault instead of a short file, and ends the read at that size: a server
        that sends the file and then never ends the body is not waited for. Each remote attempt has a
        deadline (RetryPolicy.attempt_deadline_s): a server trickling bytes is a transient fault too."""
        policy = self.policy
        delivered = 0
        attempt = 0
        while True:
            try:
                opened = time.monotonic()
                stream, start = self._open(name, delivered)
                # time spent waiting on the source (opening, reading), not on whoever consumes the blocks
                waited, budget = time.monotonic() - opened, policy.attempt_deadline_s(size)
                try:
                    drop = delivered - start
                    while size is None or delivered < size:
                        asked = time.monotonic()
                        block = stream.read(OBJECT_BLOCK if self.kind == "object" else STREAM_BLOCK)
                        waited += time.monotonic() - asked
                        if not block:
                            break
                        if drop:
                            cut = min(drop, len(block))
                            block, drop = block[cut:], drop - cut
                            if not block:
                                continue
                        if size is not None and delivered + len(block) > size:
                            block = block[:size - delivered]  # the manifest's size is the file; the rest is not ours
                        delivered += len(block)
                        yield block
                        if self.kind != "local" and waited > budget and (size is None or delivered < size):
                            raise TimeoutError(f"{delivered} of {size if size is not None else '?'} bytes in "
                                               f"{waited:.0f} s (slower than {policy.min_bytes_per_s / 2**20:g} MB/s "
                                               "on average, data.remote_min_mb_per_s)")
                    if size is not None and delivered < size:
                        raise ConnectionError(f"the connection ended after {delivered} of {size} bytes")
                    return
                finally:
                    _close_quietly(stream)
            except RemoteReadError:
                raise
            except Exception as err:
                if self.kind == "local":
                    raise  # a disk error is not a network's: nothing to wait for
                kind = classify(err)
                if kind != "transient" or attempt >= policy.retries:
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise RemoteReadError(f"{self.display(name)}: {describe_error(err)}{tries}",
                                          kind=kind) from None
                time.sleep(policy.delay(attempt))
                attempt += 1

    def open_reader(self, name: str, size: int | None = None, hashing: bool = True):
        """A read-only binary file of `name`. With `hashing` it counts and hashes what passes (`.sha256`,
        `.bytes`: a manifest's checksum is checked in the same pass); remote files are read ahead in a
        background thread. A local file without hashing is the plain file."""
        if self.kind == "local" and not hashing:
            return open(self.path / name, "rb")
        blocks = self.blocks(name, size)
        if self.kind != "local" and self.policy.read_ahead_bytes > 0:
            blocks = ReadAhead(blocks, self.policy.read_ahead_bytes, self.policy.longest_silence_s(),
                               self.display(name))
        return HashingReader(blocks, self.display(name), hashing)

    def _open(self, name: str, offset: int):
        """(stream, the offset it starts at): the offset asked for where the source can seek, else 0."""
        if self.kind == "local":
            handle = open(self.path / name, "rb")
            handle.seek(offset)
            return handle, offset
        if self.kind == "pipe":
            return PipeStream(self.url(name), self.policy.timeout_s), 0
        fs = self.filesystem()
        if self.kind == "http":
            return fs.open(self.url(name), "rb", block_size=0), 0  # one streamed GET
        handle = fs.open(self.url(name), "rb", block_size=OBJECT_BLOCK, cache_type="none")
        handle.seek(offset)
        return handle, offset

    def _retrying(self, name: str, call: Callable):
        for attempt in range(self.policy.retries + 1):
            try:
                return call()
            except Exception as err:
                kind = classify(err)
                if kind != "transient" or attempt >= self.policy.retries:
                    raise RemoteReadError(f"{self.display(name)}: {describe_error(err)}", kind=kind) from None
                time.sleep(self.policy.delay(attempt))

    def filesystem(self):
        """The fsspec filesystem, one per process, with our timeouts and without the library's own
        retry loops (the policy above decides how often to try)."""
        if self._fs is None or self._fs_pid != os.getpid():
            self._fs = make_filesystem(self.protocol, self.policy.timeout_s)
            self._fs_pid = os.getpid()
        return self._fs

    # -- writing (pack to a bucket)

    def names(self) -> list[str]:
        """The file names directly under this location (object stores and folders only)."""
        if self.kind == "local":
            return sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
        fs = self.filesystem()
        try:
            entries = self._retrying("", lambda: fs.ls(self.root, detail=False, refresh=True))
        except RemoteReadError as err:
            if err.missing and not self._bucket_exists():
                raise LocationError(f"{self.display()}: no such bucket (create it first)") from None
            if err.missing:
                return []
            raise LocationError(str(err)) from None
        if not entries and not self._bucket_exists():
            raise LocationError(f"{self.display()}: no such bucket (create it first)")
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def _bucket_exists(self) -> bool:
        bucket = urlsplit(self.text).netloc
        try:
            return bool(self._retrying("", lambda: self.filesystem().exists(f"{self.scheme}://{bucket}")))
        except RemoteReadError:
            return False

    def upload(self, local: Path, name: str) -> None:
        """Put a local file here under `name` (one object, whole or not at all), with retries."""
        if self.kind != "object":
            raise LocationError(f"{self.display()}: cannot write here (pack writes to a folder, s3:// or gs://)")
        try:
            self._retrying(name, lambda: self.filesystem().put_file(str(local), self.url(name)))
        except RemoteReadError as err:
            raise RemoteWriteError(f"uploading failed: {err}") from None


class RemoteWriteError(OSError):
    """An upload failed after its retries; one line naming the masked URL."""

    def __str__(self) -> str:
        return str(self.args[0])


def make_filesystem(protocol: str, timeout_s: float):
    import fsspec

    if protocol in ("http", "https"):
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        # trust_env: proxies and ~/.netrc from the environment, as curl and requests do
        return fsspec.filesystem(protocol, skip_instance_cache=True,
                                 client_kwargs={"timeout": timeout, "trust_env": True})
    if protocol == "s3":
        fs = fsspec.filesystem("s3", skip_instance_cache=True, config_kwargs={
            "connect_timeout": timeout_s, "read_timeout": timeout_s, "retries": {"max_attempts": 1}})
        fs.retries = 1  # s3fs's own loop retries up to 5 times with its own backoff
        return fs
    if protocol == "gcs":
        fs = fsspec.filesystem("gcs", skip_instance_cache=True, requests_timeout=timeout_s)
        fs.retries = 1
        return fs
    raise ValueError(protocol)


def _close_quietly(stream) -> None:
    try:
        stream.close()
    except Exception:  # closing a broken connection or a failed command says nothing new
        pass


# -- readers -----------------------------------------------------------------------------------------


class PipeStream:
    """A `pipe:` command's stdout (webdataset's gopen, which raises when the command exits non-zero)
    with a read timeout: a command that writes nothing for `timeout_s` is killed."""

    def __init__(self, url: str, timeout_s: float) -> None:
        from webdataset.gopen import gopen

        self.pipe = gopen(url, "rb", bufsize=0)  # unbuffered: select() sees exactly what is unread
        self.timeout_s = timeout_s

    def read(self, size: int) -> bytes:
        ready, _, _ = select.select([self.pipe.stream], [], [], self.timeout_s)
        if not ready:
            self.pipe.proc.kill()
            raise TimeoutError(f"the command wrote nothing for {self.timeout_s:g} s")
        try:
            block = self.pipe.read(size)
            if not block:  # the end: did the command succeed? (gopen's Pipe raises when it did not)
                try:
                    self.pipe.proc.wait(self.timeout_s)
                except subprocess.TimeoutExpired:
                    self.pipe.proc.kill()
                    raise TimeoutError(f"the command closed its output but did not end within "
                                       f"{self.timeout_s:g} s") from None
                self.pipe.wait_for_child()
        except OSError:
            if self.pipe.proc.returncode in (None, 0):
                raise
            # gopen's message repeats the whole command with its arguments; the status is what is new
            raise OSError(f"the command ended with exit status {self.pipe.proc.returncode}") from None
        return block

    def close(self) -> None:
        if self.pipe.proc.poll() is None:
            self.pipe.proc.kill()  # else Pipe.close waits for a command that may never end
        self.pipe.close()


class ReadAhead:
    """Pulls blocks from `blocks` in a background thread into a buffer of at most `limit_bytes` (plus
    the block being added), so reading a remote file overlaps with whatever consumes it. Errors reach
    the consumer in order, after the blocks read before them."""

    def __init__(self, blocks: Iterator[bytes], limit_bytes: int, longest_wait_s: float, label: str) -> None:
        self._blocks = blocks
        self._limit = limit_bytes
        self._longest_wait_s = longest_wait_s
        self._label = label
        self._queue: deque[bytes] = deque()
        self._held = 0
        self._error: BaseException | None = None
        self._done = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._fill, name="vsrpp-read-ahead", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            for block in self._blocks:
                with self._cond:
                    while self._held >= self._limit and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    self._queue.append(block)
                    self._held += len(block)
                    self._cond.notify_all()
        except BaseException as err:  # delivered to the consumer, who decides
            self._error = err
        finally:
            self._blocks.close()
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            with self._cond:
                deadline = time.monotonic() + self._longest_wait_s
                while not self._queue and not self._done:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._closed = True
                        raise RemoteReadError(f"{self._label}: no data for {self._longest_wait_s:.0f} s")
                    self._cond.wait(left)
                if self._queue:
                    block = self._queue.popleft()
                    self._held -= len(block)
                    self._cond.notify_all()
                elif self._error is not None:
                    raise self._error
                else:
                    return
            yield block

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()


class HashingReader:
    """A read-only binary file over a sequence of blocks that counts and hashes every byte read."""

    def __init__(self, blocks, label: str, hashing: bool = True) -> None:
        self._source = blocks
        self._blocks = iter(blocks)
        self._current = memoryview(b"")
        self.label = label
        self.sha256 = hashlib.sha256() if hashing else None
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while part := self.read(STREAM_BLOCK):
                parts.append(part)
            return b"".join(parts)
        while not self._current:
            block = next(self._blocks, None)
            if block is None:
                return b""
            self._current = memoryview(block)
        out = bytes(self._current[:size])
        self._current = self._current[size:]
        if self.sha256 is not None:
            self.sha256.update(out)
        self.bytes += len(out)
        return out

    def drain(self) -> None:
        """Read to the end (tar readers stop at the end-of-archive blocks): the hash covers the file."""
        while self.read(STREAM_BLOCK):
            pass

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()

    def __repr__(self) -> str:
        return self.label
