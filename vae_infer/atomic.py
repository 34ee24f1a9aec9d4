"""Files written atomically: a temporary file beside the destination, fsynced, then renamed over it, so
an existing file is never left half-written and a crash leaves the old file or the complete new one.

Leftovers of killed writes (hidden `.NAME.PID-TOKEN.tmp` files, and the `.NAME.new-*` / `.NAME.old-*`
folders of vae_infer.package.write_package) are removed by a later write to the same place, but only those
whose writing process is gone or that are over an hour old: parallel writers may still be using the others."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# A leftover older than this is removed even when its PID is alive: the PID may have been reused, and no
# write of one file or one package takes an hour.
STALE_SECONDS = 3600.0
_FILE_TAIL = re.compile(r"(\d+)-[0-9a-f]+\.tmp")  # after ".NAME.": the writer's PID and a random token
_FOLDER_TAIL = re.compile(r"(?:new|old)-(?:(\d+)-)?[A-Za-z0-9_]+")  # write_package's temporary folders


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (see write_atomically)."""
    return write_atomically(path, lambda f: f.write(data))


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call write(file) on a temporary file beside `path`, then rename it over `path` (os.replace), so a
    crash never leaves a half-written file: `path` is the old file or the complete new one. Creates
    missing parent folders; a replaced file keeps its permissions. Stale leftovers of earlier killed writes
    to `path` are removed first (remove_stale_leftovers). Returns the path.

    An OSError names `path`, the file asked for, never the hidden temporary file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _naming(e, path, path.parent) from e
    remove_stale_leftovers(path)
    tmp = path.with_name(temp_name(path))
    try:
        # os.open with 0o666 applies the umask, so a new file gets the permissions a plain open() would give it.
        f = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")
    except OSError as e:
        raise _naming(e, path, tmp) from e
    try:
        with f:
            if path.exists():  # replacing a file keeps its permissions, as overwriting it in place would
                os.chmod(f.fileno(), stat.S_IMODE(path.stat().st_mode))
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _naming(e, path, tmp) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    return path


def temp_name(path: str | Path) -> str:
    """The hidden name of a temporary file for `path`: `.NAME.PID-TOKEN.tmp` (the PID tells later writers
    whether the write may still be going on)."""
    return f".{Path(path).name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def temp_folder_prefix(dest: str | Path, role: str = "new") -> str:
    """The prefix of a temporary folder beside a package folder `dest` (tempfile.mkdtemp(prefix=...)):
    `.NAME.new-PID-` or `.NAME.old-PID-`, so remove_stale_leftovers can tell a live writer's folder."""
    if role not in ("new", "old"):
        raise ValueError(f"role must be 'new' or 'old', got {role!r}")
    return f".{Path(dest).name}.{role}-{os.getpid()}-"


def fsync_folder(folder: str | Path) -> None:
    """Make a rename in `folder` durable, where the file system allows it (best effort)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def remove_stale_leftovers(dest: str | Path, max_age: float = STALE_SECONDS) -> list[Path]:
    """Remove what killed writes to `dest` left beside it: `.NAME.PID-TOKEN.tmp` files and write_package's
    `.NAME.new-*` / `.NAME.old-*` folders, but only those whose writing process is gone (the PID in the
    name no longer exists) or that are over `max_age` seconds old. A leftover without a PID in its name
    (folders made by older versions) is removed only by age. Best effort: never raises for a leftover it
    cannot remove. Returns the removed paths."""
    dest = Path(dest)
    head = f".{dest.name}."
    removed: list[Path] = []
    try:
        entries = list(os.scandir(dest.parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not entry.name.startswith(head):
            continue
        tail = entry.name[len(head):]
        match = _FILE_TAIL.fullmatch(tail) or _FOLDER_TAIL.fullmatch(tail)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        is_folder = stat.S_ISDIR(info.st_mode)
        if is_folder != (match.re is _FOLDER_TAIL):
            continue  # a folder named like a temporary file, or the reverse: not ours
        pid = int(match.group(1)) if match.group(1) else None
        old = now - info.st_mtime > max_age
        if not (old or (pid is not None and not _process_exists(pid))):
            continue
        try:
            if is_folder:
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def _process_exists(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # PermissionError: it exists and belongs to another user
        return True
    return True


def _naming(e: OSError, path: Path, ours: Path) -> OSError:
    """The same error, naming the file asked for instead of the hidden temporary file (or no file): a user
    who wrote OUT.npy should read OUT.npy in the message. Errors about other files pass unchanged."""
    if e.filename is None or str(e.filename) == str(ours):
        e.filename, e.filename2 = str(path), None
    return e
