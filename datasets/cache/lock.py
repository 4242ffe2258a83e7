"""One writer per cache: an OS-level exclusive lock on ``<cache>.lock``, and disk-full messages.

The lock is ``fcntl.flock`` on an open file descriptor, so the kernel drops it when the
process exits for any reason (kill -9 included); the lock file's text (host, pid, start time)
only names the holder in the refusal message, it never decides anything. On NFS, Linux
emulates ``flock`` with POSIX byte-range locks through the NFS lock manager (v3: lockd,
v4: in-protocol), so writers on different hosts exclude each other; Lustre does so only when
mounted with ``-o flock`` (with ``-o localflock`` the lock covers one host only, and without
either option ``flock`` fails with ENOSYS, which is reported as an error, not ignored).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from .schema import CacheError

__all__ = ["CacheLockedError", "WriterLock", "lock_path", "disk_full_message", "is_disk_full",
           "discard_writes"]


class CacheLockedError(CacheError):
    """Another process holds the writer lock of this cache."""


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


class WriterLock:
    """Exclusive, non-blocking writer lock of the cache ``path`` (``acquire`` / ``release``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.file = lock_path(self.path)
        self._fd: int | None = None
        self._pid = 0

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise ``CacheLockedError`` naming the holder (host, pid, start)."""
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise CacheLockedError(f"{self.path}: another writer holds {self.file} "
                                           f"({self._holder()}); wait for it to finish or stop "
                                           f"it - two writers on one cache would corrupt it") from None
                raise CacheError(f"{self.path}: cannot lock {self.file} ({e}); on Lustre mount "
                                 f"with -o flock, see docs/cache-format.md") from e
            # The previous holder unlinks the file on release: if we locked an unlinked inode,
            # a third writer may lock the new file, so start again on the current one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"host": socket.gethostname(), "pid": os.getpid(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        self._fd, self._pid = fd, os.getpid()

    def _holder(self) -> str:
        try:
            info = json.loads(self.file.read_text() or "{}")
            return f"host {info['host']}, pid {info['pid']}, started {info['started']}"
        except (OSError, ValueError, KeyError):
            return "holder not recorded yet"

    def release(self) -> None:
        # A forked child (a DataLoader worker) shares the lock with its parent: it must neither
        # remove the file nor touch the descriptor; its copy goes when it exits.
        if self._fd is None or os.getpid() != self._pid:
            return
        try:
            self.file.unlink(missing_ok=True)  # while still locked: nobody else can be inside
        finally:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC, or EFBIG (a file-size limit), or HDF5's wording of them in an OSError."""
    if not isinstance(e, (OSError, RuntimeError)):
        return False
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return True
    # h5py reports failed writes inside HDF5 with the C errno only in the text
    text = str(e)
    return any(w in text for w in ("No space left", "File too large", "Disk quota exceeded",
                                   f"errno = {errno.ENOSPC},", f"errno = {errno.EFBIG},"))


def disk_full_message(path: Path, parts: Path, pending_bytes: int = 0,
                      err: BaseException | None = None) -> str:
    """One line: which cache, how much free space the run needs, what was kept."""
    def size(p: Path) -> int:
        if p.is_file():
            return p.stat().st_size
        return sum(q.stat().st_size for q in p.glob("*") if q.is_file()) if p.is_dir() else 0

    # A resume writes the lost sequence again, then finalize copies the old cache, every
    # part and that sequence into <cache>.tmp before the rename.
    copy = size(path) + size(parts) + pending_bytes
    need = copy + pending_bytes
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = 0
    efbig = err is not None and (getattr(err, "errno", None) == errno.EFBIG or "File too large" in str(err))
    what = "the file-size limit (ulimit -f) was reached" if efbig else "no space left on the device"
    return (f"{path}: {what} ({free / 2**20:.1f} MiB free; finishing needs at least "
            f"{need / 2**20:.1f} MiB: {pending_bytes / 2**20:.1f} MiB for the sequence being written "
            f"and {copy / 2**20:.1f} MiB for the final copy, plus the sequences still to write); "
            f"committed sequences are kept in {parts} - free space and re-run the same command "
            f"to resume")


def discard_writes(f: "h5py.File") -> None:
    """Point the file's descriptor at /dev/null: HDF5's closing flush of a file we are about to
    delete then succeeds instead of failing again on the full disk (HDF5 cannot close a file
    without flushing it)."""
    try:
        fd = f.id.get_vfd_handle()
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, int(fd))
        finally:
            os.close(null)
    except Exception:  # not the sec2 driver: fall back to a plain close
        pass
