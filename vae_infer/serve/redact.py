"""No reply shows a path of the server's file system: a model package or a data set is named by its last
component ("/srv/models/fashion-mnist" -> "fashion-mnist"). Package text that holds a path of the machine that
built it (model.json's training.data_source, a section's source) is shown the same way."""

from __future__ import annotations

import re
from typing import Any

# An absolute path (POSIX, or a Windows drive or UNC path) not inside a word or a URL: up to the next blank,
# quote, bracket or separator; this server's own routes (/v1/decode, /healthz...) are left as they are
_PATH = re.compile(r"(?<![\w.:/])(?!/v1/|/healthz|/readyz|/metrics|/docs|/openapi\.json)"
                   r"(?:[A-Za-z]:[\\/]|\\\\|/)[^\s'\"()\[\]{},;<>]*")


def _last(match: re.Match) -> str:
    parts = [p for p in re.split(r"[\\/]+", match.group(0)) if p]
    return parts[-1] if parts else "/"


def redact_paths(text: str) -> str:
    return _PATH.sub(_last, text)


def redact(value: Any) -> Any:
    """Every string in a JSON-like value with its absolute paths cut to their last component."""
    if isinstance(value, str):
        return redact_paths(value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value
