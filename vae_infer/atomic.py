"""Files written atomically: a temporary file beside the destination, fsynced, then renamed over it, so
an existing file is never left half-written and a crash leaves the old file or the complete new one.

Leftovers of killed writes (hidden `.NAME.PID-TOKEN.tmp` files) are removed by a later write to the same
place, but only those whose writing process is gone or that are over an hour old: parallel writers may
still be using the others."""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (see write_atomically)."""
    return write_atomically(path, lambda f: f.write(data))


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call write(file) on a temporary file beside `path`, then rename it over `path` (os.replace), so a
    crash never leaves a half-written file: `path` is the old file or the complete new one. Creates
    missing parent folders; a replaced file keeps its permissions. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 applies the umask, so a new file gets the permissions a plain open() would give it.
    f = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")
    try:
        with f:
            if path.exists():  # replacing a file keeps its permissions, as overwriting it in place would
                os.chmod(f.fileno(), stat.S_IMODE(path.stat().st_mode))
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path
