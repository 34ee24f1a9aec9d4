"""One writer per results folder: `_lock`, an OS lock (fcntl.flock) held for the whole job, with the holder's
PID written in it. The kernel releases the lock when its holder ends, however it ends (kill -9 included), so a
stale `_lock` file never blocks a later job; a second job on the same folder fails at once, naming the PID.

flock protects a local folder (and NFS v4, where flock is a lock of the server); it does not reach object
stores: a remote --out (s3://, gs://, Ray's write_parquet) has no lock, see docs/batch.md."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError

LOCK_FILE = "_lock"
PID_BYTES = 64  # more than any PID and newline: what is read back of the lock file


@contextlib.contextmanager
def folder_lock(out_dir: str | Path) -> Iterator[Path]:
    """Hold the folder's lock for the length of the `with` block (the folder is created if missing)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, PID_BYTES, 0).decode(errors="replace").strip() or "unknown"
            raise InputError(f"{out} is being written by another batch job (PID {holder}, which holds {path}); "
                             f"wait for it to end, or give this job another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        yield path
    finally:
        os.close(fd)  # closing the only descriptor releases the lock
