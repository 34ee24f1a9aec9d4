"""Writing C text from Python values: float literals that round-trip, constant arrays, identifiers that are
safe as C names, and comments that cannot close early."""

from __future__ import annotations

import re

import numpy as np

C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if inline int long "
    "register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while "
    "_Bool _Complex _Imaginary NULL size_t".split()
)
RESERVED_LOCALS = frozenset({"n", "r0", "rows"})


def c_float(v: float) -> str:
    s = f"{v:.9g}"
    if "." not in s and "e" not in s:
        s += ".0"
    return s + "f"


def c_array(ctype: str, name: str, values: list[str], comment: str, per_line: int = 8) -> str:
    lines = [f"/* {comment} */", f"static const {ctype} {name}[{len(values)}] = {{"]
    for i in range(0, len(values), per_line):
        lines.append("    " + ", ".join(values[i : i + per_line]) + ",")
    lines.append("};")
    return "\n".join(lines)


def float_values(a: np.ndarray) -> list[str]:
    return [c_float(v) for v in a.astype(np.float32).astype(np.float64).tolist()]


def c_identifier(name: str, taken: set[str]) -> str:
    ident = re.sub(r"[^0-9A-Za-z_]", "_", name) or "t"
    if ident[0].isdigit():
        ident = "t_" + ident
    while ident in C_KEYWORDS or ident in RESERVED_LOCALS or ident in taken or ident.startswith("vae_"):
        ident += "_"
    taken.add(ident)
    return ident


def comment_text(text: str) -> str:
    return text.replace("*/", "* /").replace("/*", "/ *")
