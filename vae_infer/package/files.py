"""Model packages on disk: read and verify (sha256 of every file), and write atomically."""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..atomic import remove_stale_leftovers, temp_folder_prefix
from ..errors import ModelPackageError
from .manifest import MANIFEST_NAME, Manifest


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


MAX_MANIFEST_BYTES = 16 << 20  # model.json is a few KB; a larger one is refused before it is parsed
MAX_FILE_BYTES = 1 << 30  # any one package file (the course model's graphs are 1.6 MB each)


def read_package_file(package_dir: str | Path, name: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of one file of a package, read safely: it must resolve to a regular file inside the
    package folder (no symlink out of it, no FIFO or device, which would hang or never end) and hold at
    most `limit` bytes; it is opened without blocking and read up to its size as fstat gave it."""
    package_dir = Path(package_dir)
    path = package_dir / name
    try:
        root = package_dir.resolve(strict=True)
        real = path.resolve(strict=True)
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
        raise ModelPackageError(f"cannot read {path}: {e}; the model package is incomplete") from e
    if real != root and root not in real.parents:
        raise ModelPackageError(f"{path} leads outside the package folder (to {real}); package files must lie "
                                f"inside {root}")
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise ModelPackageError(f"cannot read {path}: {e}; the model package is incomplete") from e
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ModelPackageError(f"{path} is not a regular file (a FIFO, device or folder); the package is "
                                    f"damaged or was tampered with")
        if info.st_size > limit:
            raise ModelPackageError(f"{path} holds {info.st_size} bytes, more than the {limit} a package file may "
                                    f"have; the package is damaged or was tampered with")
        chunks, left = [], info.st_size
        while left > 0:
            block = os.read(fd, min(left, 1 << 24))
            if not block:
                break
            chunks.append(block)
            left -= len(block)
        return b"".join(chunks)
    except OSError as e:
        raise ModelPackageError(f"cannot read {path}: {e}") from e
    finally:
        os.close(fd)


def read_manifest(package_dir: str | Path) -> Manifest:
    package_dir = Path(package_dir)
    path = package_dir / MANIFEST_NAME
    if not package_dir.is_dir():
        raise ModelPackageError(f"no model package at {package_dir}: expected a folder holding {MANIFEST_NAME}")
    if not path.exists():
        raise ModelPackageError(f"{package_dir} is not a model package: {MANIFEST_NAME} is missing")
    raw = read_package_file(package_dir, MANIFEST_NAME, MAX_MANIFEST_BYTES)
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise ModelPackageError(f"{path} is not valid JSON ({e}); the file is corrupt or truncated") from e
    except RecursionError as e:
        raise ModelPackageError(f"{path} is nested too deeply to be a manifest; the file is corrupt") from e
    return Manifest.from_dict(data)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number (model.json holds only finite numbers)")


def read_verified(package_dir: str | Path, manifest: Manifest, file_name: str) -> bytes:
    """The bytes of one package file, after checking them against the manifest's sha256.
    The checked bytes are what gets used, so the file cannot change between check and use."""
    path = Path(package_dir) / file_name
    if file_name not in manifest.files:
        raise ModelPackageError(f"{path}: model.json lists no sha256 for {file_name!r}")
    data = read_package_file(package_dir, file_name)
    digest = sha256_bytes(data)
    if digest != manifest.files[file_name]:
        raise ModelPackageError(
            f"{path} does not match model.json: sha256 {digest[:16]}..., expected "
            f"{manifest.files[file_name][:16]}...; the file is corrupt, truncated or was changed. Re-export the model"
        )
    return data


def verify_all(package_dir: str | Path, manifest: Manifest, skip: tuple[str, ...] = (),
               checks: dict[str, list[Callable[[bytes], object]]] | None = None) -> None:
    """Check every file model.json lists against its sha256 (load() does, so a damaged calibration, index or
    variant is found when the package loads, not at first use), then run `checks` (file name -> functions of
    its verified bytes: the optional sections' own checks, vae_infer.package.sections) on the same bytes. `skip`: files
    already checked (the graphs a load has just read), unless a check names one."""
    checks = checks or {}
    for name in manifest.files:
        if name in skip and name not in checks:
            continue
        data = read_verified(package_dir, manifest, name)
        for check in checks.get(name, ()):
            check(data)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE) where the kernel offers it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def write_package(dest: str | Path, files: dict[str, bytes], manifest: Manifest) -> Path:
    """Write a complete model package to dest, atomically.

    Everything goes into a temporary sibling folder first (fsynced), which then takes dest's place in
    one rename (or an atomic exchange with the old package). A crash at any moment leaves either the
    old package or the complete new one at dest, never a mixture."""
    dest = Path(dest)
    for name, data in files.items():
        if manifest.files.get(name) != sha256_bytes(data):
            raise ModelPackageError(f"write_package: manifest sha256 for {name!r} does not match its bytes")
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_leftovers(dest)  # folders of killed writes whose process is gone (or over an hour old)
    tmp = Path(tempfile.mkdtemp(prefix=temp_folder_prefix(dest, "new"), dir=dest.parent))
    try:
        payload = {**files, MANIFEST_NAME: (json.dumps(manifest.to_dict(), indent=2) + "\n").encode()}
        for name, data in payload.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        if not dest.exists():
            os.rename(tmp, dest)
        elif _exchange(tmp, dest):
            shutil.rmtree(tmp)  # tmp now holds the old package
        else:
            # No atomic exchange here: move the old package aside, then the new one in.
            old = Path(tempfile.mkdtemp(prefix=temp_folder_prefix(dest, "old"), dir=dest.parent))
            os.rmdir(old)
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old)
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest


def update_package(package_dir: str | Path, new_files: dict[str, bytes], drop: tuple[str, ...] = (),
                   **manifest_changes) -> Manifest:
    """Add or replace files and manifest sections of an existing package, atomically: every existing file
    is verified first, and the whole package is rewritten with write_package. `drop`: files to leave out (a
    section removed with them, e.g. check_images=None). Returns the new manifest.

    Example: update_package(path, {"latent_index.npz": data}, latent_index={"file": "latent_index.npz", ...})"""
    package_dir = Path(package_dir)
    manifest = read_manifest(package_dir)
    files = {name: read_verified(package_dir, manifest, name) for name in manifest.files if name not in drop}
    files.update(new_files)
    new = dataclasses.replace(
        manifest, files={name: sha256_bytes(data) for name, data in files.items()}, **manifest_changes
    )
    write_package(package_dir, files, new)
    return new
