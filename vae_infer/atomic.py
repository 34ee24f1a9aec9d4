"""Files written atomically: a temporary file beside the destination, fsynced, then renamed over it, so
an existing file is never left half-written and a crash leaves the old file or the complete new one.

Temporary names carry a mark no person would choose and proof that this program made them:
`.NAME.vae-infer~ROLE~PID~TOKEN~TAG` (ROLE tmp for files, new/old for the folders of
vae_infer.package.files.write_package; TOKEN random; TAG a digest of NAME, ROLE, PID and TOKEN). A later write to
the same place removes such leftovers of killed writes, when their writing process is gone or they are over
an hour old (parallel writers may still be using the others). Nothing else is ever removed, whatever its
name or age: a user's `.mymodel.old-backup` folder is not a leftover."""

from __future__ import annotations

import hashlib
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
MARK = "vae-infer~"  # no person names a file like this; the TAG below proves the rest of the name is ours
ROLES = ("tmp", "new", "old")  # a file being written; write_package's new and old package folders
TOKEN_HEX = 16
# after ".NAME.": MARK ROLE~PID~TOKEN~TAG, then ".tmp" (files) or tempfile.mkdtemp's random tail (folders)
_OURS = re.compile(rf"{re.escape(MARK)}(tmp|new|old)~(\d+)~([0-9a-f]{{{TOKEN_HEX}}})~([0-9a-f]{{{TOKEN_HEX}}})"
                   r"(\.tmp|-[A-Za-z0-9_]+)")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (see write_atomically)."""
    return write_atomically(path, lambda f: f.write(data))


def write_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:  # its return is unused
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


def _tag(name: str, role: str, pid: int, token: str) -> str:
    return hashlib.sha256(f"{MARK}{name}\0{role}\0{pid}\0{token}".encode()).hexdigest()[:TOKEN_HEX]


def _marked(dest: str | Path, role: str, pid: int | None = None) -> str:
    """`.NAME.vae-infer~ROLE~PID~TOKEN~TAG` for a temporary beside `dest` (module docstring)."""
    name = Path(dest).name
    pid = os.getpid() if pid is None else pid
    token = secrets.token_hex(TOKEN_HEX // 2)
    return f".{name}.{MARK}{role}~{pid}~{token}~{_tag(name, role, pid, token)}"


def temp_name(path: str | Path, pid: int | None = None) -> str:
    """The hidden name of a temporary file for `path`: `.NAME.vae-infer~tmp~PID~TOKEN~TAG.tmp` (the PID tells
    later writers whether the write may still be going on; pid: for tests, another process's)."""
    return _marked(path, "tmp", pid) + ".tmp"


def temp_folder_prefix(dest: str | Path, role: str = "new", pid: int | None = None) -> str:
    """The prefix of a temporary folder beside a package folder `dest` (tempfile.mkdtemp(prefix=...)):
    `.NAME.vae-infer~new~PID~TOKEN~TAG-` (or ~old~), so remove_stale_leftovers can tell ours, and a live
    writer's."""
    if role not in ("new", "old"):
        raise ValueError(f"role must be 'new' or 'old', got {role!r}")
    return _marked(dest, role, pid) + "-"


def is_leftover_name(dest: str | Path, name: str) -> tuple[str, int] | None:
    """(role, writer PID) when `name` is a temporary this program made for `dest` (mark and TAG check), else
    None."""
    head = f".{Path(dest).name}."
    if not name.startswith(head):
        return None
    match = _OURS.fullmatch(name[len(head):])
    if match is None:
        return None
    role, pid, token, tag, tail = match.groups()
    if tag != _tag(Path(dest).name, role, int(pid), token) or (role == "tmp") != (tail == ".tmp"):
        return None
    return role, int(pid)


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
    """Remove what killed writes to `dest` left beside it: temporary files and write_package's folders with
    this program's mark and a valid TAG (is_leftover_name), and only those whose writing process is gone or
    that are over `max_age` seconds old. Anything else is kept, whatever its name or age. Best effort: never
    raises for a leftover it cannot remove. Returns the removed paths."""
    dest = Path(dest)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(dest.parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        ours = is_leftover_name(dest, entry.name)
        if ours is None:
            continue
        role, pid = ours
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        is_folder = stat.S_ISDIR(info.st_mode)
        if is_folder != (role != "tmp") or stat.S_ISLNK(info.st_mode):
            continue  # a folder named like a temporary file, or the reverse, or a link: not ours
        if not (now - info.st_mtime > max_age or not _process_exists(pid)):
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
