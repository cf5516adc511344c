"""An object store over a local directory, laid out exactly as S3 keys."""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from consumers.object_keys import check_key

# Directories known to exist. A store over years of hourly partitions would
# otherwise remember every one; past this it forgets them all, and pays one
# stat per directory again.
MAX_KNOWN_DIRS = 10_000

# A backfill puts thousands of objects between two checkpoints; one fsync
# each costs about a millisecond (3 s for 1M sparse rows). Past this many,
# one syncfs(2) of the store's file system makes them all durable at once.
SYNCFS_FROM = 64

# Bodies handed to the background writer and not yet written: beyond this,
# `put` waits (a slow disk slows the pipeline instead of growing memory).
MAX_PENDING_BYTES = 32 << 20


class LocalObjectStore:
    """`put("events/dt=2021-03-01/part-1.jsonl.gz", body)` writes
    `ROOT/events/dt=2021-03-01/part-1.jsonl.gz`.

    Visibility and durability are separate, as on a file system they cost
    differently. A put writes a hidden temp file and renames it into place, so
    a reader (or `list`) never sees half an object and a replay overwrites
    whole. It does not fsync: `sync()` makes every object put since the last
    sync durable, files first, then each directory whose entries changed,
    once each. The sinks call it at every checkpoint, before the source is
    committed, so an object is durable by the checkpoint that covers it, for
    one fsync per object and directory per checkpoint instead of per put.

    With `background=True` a put only hands the body to one writer thread
    (in order, so a later put of a key overwrites an earlier one) and
    returns: the directory, temp file and rename, which hold no lock a
    Python thread needs, then overlap the caller's encoding of the next
    object. `get` and `list` wait for the writes before them; `sync` waits,
    writes again what failed, and raises if something still failed (the
    next sync tries again), so a checkpoint still covers only written
    objects.
    """

    def __init__(self, root: str | os.PathLike[str], background: bool = False,
                 max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        # Paths as strings: pathlib's parsing and hashing cost more per put
        # (2,144 objects for 1M sparse rows) than the system calls they name.
        self._root = str(self.root)
        self._known_dirs: set[str] = {self._root}
        self._temp_ids = itertools.count()
        # Puts may come from several sinks' threads; sync swaps the sets under this.
        self._lock = threading.Lock()
        self._unsynced_files: dict[str, None] = {}  # insertion-ordered set
        self._unsynced_dirs: set[str] = set()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="object-put") if background else None
        self.max_pending_bytes = max_pending_bytes
        self._written = threading.Condition()
        self._pending_bytes = 0
        self._pending_puts = 0
        self._failed: dict[str, tuple[bytes, BaseException]] = {}  # key -> its last failed body, written again by sync

    def _path(self, key: str) -> str:
        # check_key rejects every part that could leave the root ("..", ".",
        # "", an absolute key, a backslash), so joining is enough: resolve()
        # would cost an lstat per path component on every put.
        return f"{self._root}/{check_key(key)}"

    def put(self, key: str, body: bytes) -> None:
        if self._writer is None:
            self._write(key, body)
            return
        self._path(key)  # a bad key is the caller's error, raised here
        with self._written:
            while self._pending_bytes and self._pending_bytes + len(body) > self.max_pending_bytes:
                self._written.wait()
            self._pending_bytes += len(body)
            self._pending_puts += 1
        self._writer.submit(self._write_in_background, key, body)

    def _write_in_background(self, key: str, body: bytes) -> None:
        try:
            self._write(key, body)
        except BaseException as exc:  # noqa: BLE001 - raised by the next sync, on the sinks' thread
            failed: tuple[bytes, BaseException] | None = (body, exc)
        else:
            failed = None
        with self._written:
            if failed is None:
                self._failed.pop(key, None)  # a later put of the key was written: nothing to redo
            else:
                self._failed[key] = failed
            self._pending_bytes -= len(body)
            self._pending_puts -= 1
            self._written.notify_all()

    def _wait_for_writes(self) -> None:
        with self._written:
            while self._pending_puts:
                self._written.wait()

    def _settle(self) -> None:
        """Wait for every put so far, writing the failed ones once more;
        raise if one still fails."""
        if self._writer is None:
            return
        self._wait_for_writes()
        with self._written:
            failed, self._failed = self._failed, {}
        for key, (body, _) in failed.items():
            self.put(key, body)
        self._wait_for_writes()
        with self._written:
            if self._failed:
                raise next(iter(self._failed.values()))[1]

    def _write(self, key: str, body: bytes) -> None:
        path = self._path(key)
        parent, _, name = path.rpartition("/")
        self._make_dirs(parent)
        # Hidden and not ending in the object's extension: neither `list` nor
        # a reader's glob (`**/*.parquet`) takes a temp file for an object.
        temp = f"{parent}/.{name}.{os.getpid()}-{next(self._temp_ids)}.tmp"
        try:
            # A bare descriptor: open()'s buffered file would add an fstat,
            # an ioctl and an lseek to each of thousands of puts.
            fd = os.open(temp, _CREATE, 0o666)
            try:
                _write_all(fd, body)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except BaseException:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            raise
        with self._lock:
            self._unsynced_files[path] = None
            self._unsynced_dirs.add(parent)

    def _make_dirs(self, directory: str) -> None:
        if directory in self._known_dirs:
            return
        # mkdir first, from the deepest level: a new hour's directory (most
        # puts of a backfill) costs one mkdir, not a stat and a mkdir.
        missing = []
        while directory not in self._known_dirs:
            try:
                self._mkdir(directory)
            except FileNotFoundError:  # its parent is missing too
                missing.append(directory)
                directory = os.path.dirname(directory)
                continue
            break
        for new in reversed(missing):
            self._mkdir(new)
        if len(self._known_dirs) >= MAX_KNOWN_DIRS:
            self._known_dirs = {self._root}
        self._known_dirs.update(missing)
        self._known_dirs.add(directory)

    def _mkdir(self, directory: str) -> None:
        """One directory, unless it is there already; FileNotFoundError when
        its parent is missing."""
        try:
            os.mkdir(directory)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            return
        with self._lock:
            # A new directory is durable only once its parent's entry is.
            self._unsynced_dirs.add(os.path.dirname(directory))

    def sync(self) -> None:
        """Make every object put so far durable (fsync of each file, then of
        each directory it or a new directory was added to)."""
        self._settle()
        with self._lock:
            files, self._unsynced_files = self._unsynced_files, {}
            dirs, self._unsynced_dirs = self._unsynced_dirs, set()
        try:
            if len(files) + len(dirs) > SYNCFS_FROM and _syncfs(self.root):
                pass
            else:
                for path in files:
                    _fsync_file(path)
                for directory in dirs:
                    _fsync_dir(directory)
        except BaseException:
            # Keep them pending, so that a retried sync covers them again.
            with self._lock:
                self._unsynced_files = {**files, **self._unsynced_files}
                self._unsynced_dirs |= dirs
            raise

    def get(self, key: str) -> bytes:
        self._wait_for_writes()
        with open(self._path(key), "rb") as file:
            return file.read()

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys that start with `prefix`, in S3's order (by key). Only the
        directory the prefix names is walked (`events/dt=2021-03-01/hour=4/part-`
        walks one hour), not the whole store: the late check lists every hour
        of a run's archive, 713 of them for 1M sparse rows."""
        self._wait_for_writes()
        directory = prefix.rpartition("/")[0]
        if directory:
            try:
                base = self._path(directory)
            except ValueError:  # not a key's directory: no key can start with it
                return
            if not os.path.isdir(base):
                return
            directory += "/"
        else:
            base = self._root
        keys: list[str] = []
        _walk(base, directory, keys)
        yield from sorted(key for key in keys if key.startswith(prefix))

    @property
    def unsynced(self) -> list[Path]:
        """Files put since the last sync (for tests and health checks)."""
        with self._lock:
            return [Path(path) for path in self._unsynced_files]


def _walk(directory: str, key_prefix: str, keys: list[str]) -> None:
    """The keys of the files below `directory` (whose key starts with
    `key_prefix`) into `keys`: hidden files (a put's temp file) are not
    objects, and linked directories are not walked."""
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _walk(entry.path, f"{key_prefix}{entry.name}/", keys)
            elif not entry.name.startswith(".") and entry.is_file():
                keys.append(key_prefix + entry.name)


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def _write_all(fd: int, body: bytes) -> None:
    view = memoryview(body)
    while view:
        view = view[os.write(fd, view):]


def _syncfs(root: Path) -> bool:
    """syncfs(2) on the file system holding `root`; False where there is none
    (not Linux), so the caller falls back to one fsync per file."""
    syncfs = _libc_syncfs()
    if syncfs is None:
        return False
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"syncfs failed: {os.strerror(error)}", str(root))
    finally:
        os.close(fd)
    return True


@functools.cache
def _libc_syncfs():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return None
    syncfs.argtypes = [ctypes.c_int]
    syncfs.restype = ctypes.c_int
    return syncfs


def _fsync_file(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # removed since it was put: nothing left to make durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
