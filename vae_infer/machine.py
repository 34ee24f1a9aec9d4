"""Facts about the machine this process runs on, computed in one place: the cores it may use, its CPU's
name and features, and the per-user cache folder. Session threads, the native build cache, benchmark
records and the data-set cache all read them from here."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path

CACHE_ENV = "XDG_CACHE_HOME"
CACHE_NAME = "vae-infer"


def available_cores() -> int:
    """The cores this process may run on (its affinity mask), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, feature flags) from /proc/cpuinfo; ("", {}) where it cannot be read."""
    name, flags = "", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not name:
                name = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return name, frozenset(flags)


def cpu_model() -> str:
    """The CPU's marketing name, e.g. 'Intel(R) Xeon(R) ...'."""
    return _cpuinfo()[0] or platform.processor() or "unknown"


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (x86: avx2, fma, avx512f, ...; ARM: asimd, ...)."""
    return _cpuinfo()[1]


@functools.lru_cache(maxsize=1)
def cpu_identity() -> str:
    """A short digest of the architecture, CPU name and features: a cache shared between machines keys
    its builds by it so that they are never mixed."""
    name, flags = _cpuinfo()
    text = "|".join([platform.machine(), name or platform.processor(), " ".join(sorted(flags))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_dir(*parts: str) -> Path:
    """The per-user cache folder of this project ($XDG_CACHE_HOME or ~/.cache, then vae-infer/<parts>)."""
    base = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache")
    return Path(base, CACHE_NAME, *parts)
