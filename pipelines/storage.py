"""Where files are kept: a local folder, or object storage (S3, GCS, any fsspec URL).

Every artifact goes through a ``Storage``: speech, pictures, clips, composed scenes, the
episode, its poster and scripts, and cached media. Parts name files by *key*, a ``/``-joined
name under the storage's root (``ep1/media/scene001/line01.wav``), never by a path: on a
cluster no two nodes share a path. Work happens in node-local scratch (``scratch``); a finished
file is uploaded (``upload``) and the next step, wherever it runs, fetches it into its own
scratch (``fetch``).

A local folder is the same interface without copies: ``fetch`` hands back the file in place and
``upload`` renames from a scratch folder inside the storage folder, so an episode on one machine
costs what it did before object storage.

Object storage is reached over a network that fails for a while, and a store answers that it
is busy or failing (a 503, a 500) now and then. Each operation waits such faults out, after its
client's own retries, for up to ``patience_s`` (a minute by default): a file of a call already
paid for is not lost to a blip, and a blip costs a wait, not the episode. An answer that will not
change (no such bucket, access denied) fails at once.

A ``Storage`` pickles as its URL, options and patience (it travels to Ray tasks and replicas);
its filesystem is made again where it is used. Its options hold credentials: they are never in
its ``repr``, its messages or a report.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

from pipelines.files import publish, sync_folder, write_atomic

LOCAL_SCHEME = "file://"
SCRATCH_FOLDER = ".scratch"  # a local storage's scratch: inside it, so that uploads are renames
# A node's own scratch folder for object storage, read on the node (each node may set its own).
SCRATCH_VARIABLE = "SHOWRUNNER_SCRATCH"
PROBE_KEY = ".showrunner-probe"
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
PATIENCE_S = 60.0  # how long an operation on object storage waits out faults that may pass
FIRST_PAUSE_S, LONGEST_PAUSE_S = 0.2, 5.0  # between its tries: doubling, up to this
# Faults that may pass: the line to the store (refused, reset, timed out, no route), or the
# store failing or busy (s3fs maps a 500 to EREMOTEIO, a 503 "SlowDown" to EBUSY).
PASSING = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE,
                     errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN,
                     errno.EREMOTEIO, errno.EBUSY})
# The clients' errors, not OSErrors, that say the line to the store failed: (module, class),
# matched by name so that no backend need be installed to tell them.
_LINE_FAULTS = frozenset({("botocore.exceptions", "ConnectionError"),  # refused, DNS, timeout
                          ("botocore.exceptions", "HTTPClientError"),  # closed, read timeout
                          ("aiohttp.client_exceptions", "ClientConnectionError")})
T = TypeVar("T")


class StorageUnavailable(Exception):
    """The storage cannot be used: an unknown scheme, a backend not installed, a bucket that
    cannot be reached. The message is one line and names no credential."""


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith(LOCAL_SCHEME)


def check_url(url: str) -> None:
    """Refuse a URL no fsspec backend takes, naming the scheme (raises ``ValueError``)."""
    if is_local(url):
        if not url.removeprefix(LOCAL_SCHEME):
            raise ValueError("file:// names no folder")
        return
    import fsspec

    scheme = url.split("://", 1)[0]
    if scheme not in fsspec.available_protocols():
        raise ValueError(f"no storage backend takes {scheme}:// (use a folder, file://, s3://, "
                         "gs:// or another fsspec protocol)")
    if not url.split("://", 1)[1].strip("/"):
        raise ValueError(f"{scheme}:// names no bucket")


class Storage:
    """Files under one root URL. Methods block: async callers run them in a thread."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None, *,
                 patience_s: float = PATIENCE_S) -> None:
        check_url(url)
        if is_local(url):
            url = str(Path(url.removeprefix(LOCAL_SCHEME)).resolve())
        self.url = url.rstrip("/") if not is_local(url) else url
        self.options = dict(options or {})
        self.patience_s = patience_s
        self._fs: Any = None

    # -- what travels between processes: the URL, options and patience, never a filesystem -------

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "options": self.options, "patience_s": self.patience_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url, self.options, self._fs = state["url"], state["options"], None
        self.patience_s = state["patience_s"]

    def __repr__(self) -> str:  # the options hold credentials
        return f"Storage({self.url!r})"

    @property
    def local(self) -> bool:
        return is_local(self.url)

    def where(self, key: str = "") -> str:
        """How messages and reports name a key: a path on this machine, or the object's URL."""
        return str(self.path(key)) if self.local else f"{self.url}/{key}".rstrip("/")

    def path(self, key: str) -> Path:
        """A local storage's file for ``key``."""
        if not self.local:
            raise ValueError(f"{self.url} is object storage: its files have no local path")
        return Path(self.url, *key.split("/")) if key else Path(self.url)

    # -- reading and writing ---------------------------------------------------------------------

    def write(self, key: str, data: bytes | str) -> None:
        """Write a whole file at once: a reader never sees half of it (a local file is renamed
        into place; an object is one PUT)."""
        if self.local:
            write_atomic(self.path(key), data)
            return
        body = data.encode("utf-8") if isinstance(data, str) else data
        self._object(key, lambda: self.fs.pipe_file(self._full(key), body))

    def read(self, key: str) -> bytes:
        if self.local:
            return self.path(key).read_bytes()
        return self._object(key, lambda: self.fs.cat_file(self._full(key)))

    def exists(self, key: str) -> bool:
        if self.local:
            return self.path(key).is_file()
        try:  # not fsspec's isfile, which says False for any error, a store out of reach too
            info = self._object(key, lambda: self.fs.info(self._full(key)))
        except FileNotFoundError:
            return False
        return bool(info["type"] == "file")

    def size(self, key: str) -> int:
        if self.local:
            return self.path(key).stat().st_size
        return self._object(key, lambda: int(self.fs.size(self._full(key))))

    def open(self, key: str) -> IO[bytes]:
        """A file to read, seekable (ranges of a video are read from where they start)."""
        if self.local:
            return self.path(key).open("rb")
        return self._object(key, lambda: self.fs.open(self._full(key), "rb"))

    def copy(self, source: str, target: str) -> None:
        """Copy within the storage (on S3, a copy made by the server: no bytes come here)."""
        if self.local:
            self.write(target, self.path(source).read_bytes())
            return
        self._object(source, lambda: self.fs.copy(self._full(source), self._full(target)))

    def remove(self, prefix: str) -> None:
        """Remove a key's whole tree (an episode's folder); none there is no error."""
        if not prefix.strip("/"):
            raise ValueError("refusing to remove the storage's root")
        if self.local:
            shutil.rmtree(self.path(prefix), ignore_errors=True)
            return
        with contextlib.suppress(FileNotFoundError):
            self._object(prefix, lambda: self.fs.rm(self._full(prefix), recursive=True))

    def sign(self, key: str, expires_s: int) -> str | None:
        """A URL that reads ``key`` for ``expires_s`` seconds without credentials, where the
        backend makes them (S3 and GCS do); None elsewhere."""
        if self.local:
            return None
        try:
            return str(self.fs.sign(self._full(key), expiration=expires_s))
        except NotImplementedError:
            return None

    def probe(self) -> None:
        """Check, before anything runs, that files can be written here: a local folder is made
        (``OSError`` if it cannot be, or is not writable); in object storage a small object is
        written and removed (``OSError`` naming the bucket if it cannot be, at once: a store out
        of reach before the start is more likely a wrong address than a blip)."""
        if self.local:
            folder = self.path("")
            folder.mkdir(parents=True, exist_ok=True)
            if not os.access(folder, os.W_OK):
                raise PermissionError(errno.EACCES, "not writable", str(folder))
            return
        self._object(PROBE_KEY, lambda: self.fs.pipe_file(self._full(PROBE_KEY), b""),
                     patience_s=0)
        self._object(PROBE_KEY, lambda: self.fs.rm_file(self._full(PROBE_KEY)), patience_s=0)

    # -- moving files between scratch and storage -------------------------------------------

    @contextlib.contextmanager
    def scratch(self, target: str, purpose: str) -> Iterator[Path]:
        """A scratch folder on this node for the work (``compose``, ``stitch``…) that makes
        ``target``, removed after. Left-overs of an earlier attempt at the same target (a
        killed worker cleans nothing up) are removed first: one attempt of a node runs at a
        time. Its name says what it is for (``.compose-ep1_media_scene001_scene.mp4-…``)."""
        root = self._scratch_root()
        root.mkdir(parents=True, exist_ok=True)
        prefix = f".{purpose}-{_SAFE.sub('_', target)}-"
        for stale in root.glob(f"{prefix}*"):
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=prefix) as work:
            yield Path(work)

    def fetch(self, key: str, into: Path) -> Path:
        """A local file holding ``key``: in place for a local storage, else downloaded into the
        scratch folder ``into``."""
        if self.local:
            return self.path(key)
        local = into / key.replace("/", "_")
        self._object(key, lambda: self.fs.get_file(self._full(key), str(local)))
        return local

    def upload(self, file: Path, key: str) -> None:
        """Put a finished scratch file under ``key``: renamed into place in a local storage (a
        copy when the scratch is on another filesystem), uploaded to object storage."""
        if not self.local:
            self._object(key, lambda: self.fs.put_file(str(file), self._full(key)))
            return
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            publish(file, target)
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
            partial = target.with_name(f".{target.name}.partial")
            try:
                shutil.copyfile(file, partial)
                publish(partial, target)
            finally:
                partial.unlink(missing_ok=True)
            sync_folder(target.parent)

    # -- inside -------------------------------------------------------------------------------

    @property
    def fs(self) -> Any:
        if self._fs is None:
            from fsspec.core import url_to_fs

            try:
                # No listings cache: other processes write here, and a cached listing of a
                # folder would hide their files from this one.
                self._fs, _ = url_to_fs(self.url, **{"use_listings_cache": False,
                                                     **self.options})
            except ImportError as err:
                scheme = self.url.split("://", 1)[0]
                raise StorageUnavailable(
                    f"{scheme}:// storage needs its fsspec backend: {err}") from None
        return self._fs

    def _full(self, key: str) -> str:
        return f"{self.url.split('://', 1)[1]}/{key}"

    def _scratch_root(self) -> Path:
        if self.local:
            return self.path(SCRATCH_FOLDER)
        return Path(os.environ.get(SCRATCH_VARIABLE) or
                    Path(tempfile.gettempdir()) / "showrunner-scratch")

    def _object(self, key: str, action: Callable[[], T], *, patience_s: float | None = None
                ) -> T:
        """``action`` on object storage, tried again while it fails with a fault that may pass
        (``PASSING``), after pauses that double, for up to ``patience_s`` (the storage's); then,
        or on any other fault, its failure as an ``OSError`` naming ``key``."""
        patience = self.patience_s if patience_s is None else patience_s
        deadline = time.monotonic() + patience
        pause = FIRST_PAUSE_S
        while True:
            try:
                with self._errors(key):
                    return action()
            except OSError as err:
                if err.errno not in PASSING or patience <= 0:
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OSError(err.errno, f"{err.strerror} (still failing after {patience:g} s"
                                  " of trying)", err.filename) from err
                time.sleep(min(pause, left))
                pause = min(pause * 2, LONGEST_PAUSE_S)

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Object storage's failures as ``OSError``s that name the object (as a local file's
        do), so callers handle one kind of error; a missing object (or bucket) stays a
        ``FileNotFoundError``, a failed line to the store is ``ECONNABORTED``."""
        try:
            yield
        except StorageUnavailable:
            raise
        except OSError as err:
            if err.filename is not None:
                raise
            number = err.errno if err.errno is not None else _number(err)
            raise OSError(number, err.strerror or str(err), self.where(key)) from err
        except Exception as err:  # botocore's and aiohttp's own errors
            raise OSError(_number(err), f"{type(err).__name__}: {err}", self.where(key)) from err


def _number(err: Exception) -> int:
    """An errno for an error that has none."""
    if any((kind.__module__, kind.__name__) in _LINE_FAULTS for kind in type(err).__mro__):
        return errno.ECONNABORTED
    for kind, number in _ERRNO.items():
        if isinstance(err, kind):
            return number
    return errno.EIO


_ERRNO = {FileNotFoundError: errno.ENOENT, PermissionError: errno.EACCES,
          TimeoutError: errno.ETIMEDOUT}
