"""Writing C text from Python values: float literals that round-trip, constant arrays, string literals, and
the check every generated C file passes before it is written.

Generated C takes no text from a model package: identifiers, comments and strings are the generator's own
(`encode_l0_w`, "encode layer 0: 784 -> 32, relu"). A package's name, its graphs' names, tensor names, doc
strings and metadata never reach C, so a comment cannot be closed early (`*/`, or `*` + a line splice +
`/`, where the splice is a backslash or the trigraph `??/` before a newline) and no preprocessor line can be
smuggled in. c_string is the one way to write a string literal from data; check_c_text refuses any generated
file holding a byte that could start such tricks, so a slip in the generator fails loudly instead of shipping."""

from __future__ import annotations

import re

import numpy as np

# bytes a C string literal may hold as themselves: no quote, backslash, '?' (trigraphs), '/' and '*'
# (comment markers), '#', control characters or non-ASCII
PLAIN_STRING_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _.-")
# what a generated .c or .h file may contain: printable ASCII and newlines (no tabs, no other controls)
C_TEXT = re.compile(r"[\x20-\x7e\n]*")


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


def c_string(text: str | bytes) -> str:
    """A C string literal (quotes included) holding exactly these bytes (str: UTF-8, lone surrogates kept as
    their bytes): every byte outside [A-Za-z0-9 _.-] as a three-digit octal escape. Three digits always, so an
    escape never takes in a following digit; no backslash is ever followed by a newline (no line splice), no
    '?' appears (no trigraph), nor '*', '/', '#', '"' or a raw control or non-ASCII byte."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    return '"' + "".join(chr(b) if b in PLAIN_STRING_BYTES else f"\\{b:03o}" for b in data) + '"'


def check_c_text(name: str, text: str) -> str:
    """text, when it is fit to be a generated C file: printable ASCII and newlines only, no trigraph (any "??"),
    no line splice (a backslash before a newline). ValueError otherwise: the generator made a mistake."""
    bad = None
    if not C_TEXT.fullmatch(text):
        bad = "a byte outside printable ASCII"
    elif "??" in text:
        bad = "'??' (a trigraph under -std=c99)"
    elif "\\\n" in text:
        bad = "a backslash before a newline (a line splice)"
    if bad is not None:
        raise ValueError(f"internal error: the generated {name} holds {bad}; please report this")
    return text
