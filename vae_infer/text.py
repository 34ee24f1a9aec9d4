"""Text from outside (a package's names and notes, file names, request fields) as data: the rules a name or a
free text must meet where it comes in (check_name, check_text), and the one escape for where text leaves to a
terminal (terminal_text). Other media have their own escape where they are written: the page sets textContent,
generated C holds no package text.

    check_name("model.json: .name", value)          # valid Unicode, at most MAX_NAME_CHARS characters
    check_text("model.json: .training.note", value) # valid Unicode, at most MAX_TEXT_BYTES bytes of UTF-8
    terminal_text("a\\x1b]0;x\\x07")                   # 'a\\\\x1b]0;x\\\\x07': controls shown, never obeyed

HTML and shell metacharacters are allowed in names: they are data, and every output escapes them for its medium.
"""

from __future__ import annotations

import unicodedata

from .errors import ModelPackageError

MAX_NAME_CHARS = 256  # a model, class, tensor or file name, or a key: what a person reads in one line
MAX_TEXT_BYTES = 4 << 10  # free text (a description, a source, a command) in UTF-8 bytes
PREVIEW_CHARS = 40  # characters of a refused value quoted in the error

# Unicode categories a terminal may obey instead of showing: controls (C0, DEL, C1: escapes, bells, carriage
# returns), format characters (bidi overrides and isolates, zero-width characters, the BOM), lone surrogates
# (not text at all), and the line and paragraph separators (a second line that was never printed as one).
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _preview(value: str) -> str:
    """A short, printable quotation of a value: repr escapes controls, format characters and surrogates."""
    head = repr(value[:PREVIEW_CHARS])
    return head + ("..." if len(value) > PREVIEW_CHARS else "")


def _check_unicode(where: str, value: object, what: str, error: type[Exception]) -> str:
    if not isinstance(value, str):
        raise error(f"{where}: expected {what} (a string), found {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = value[e.start]
        raise error(f"{where}: expected {what} in valid Unicode, found a lone surrogate \\u{ord(bad):04x} at "
                    f"character {e.start} of {_preview(value)}; the text is damaged: write it again as UTF-8") from None
    return value


def check_name(where: str, value: object, error: type[Exception] = ModelPackageError) -> str:
    """value, if it is a name: a string of valid Unicode (no lone surrogates), at most MAX_NAME_CHARS characters.
    `where` names the field in the error (`model.json: .latent_map.class_names[3]`); `error` is the named
    exception of the door (ModelPackageError for a package, InputError for a request or a file)."""
    name = _check_unicode(where, value, "a name", error)
    if len(name) > MAX_NAME_CHARS:
        raise error(f"{where}: expected a name of at most {MAX_NAME_CHARS} characters, found {len(name)} "
                    f"characters ({_preview(name)}); shorten it")
    return name


def check_text(where: str, value: object, error: type[Exception] = ModelPackageError) -> str:
    """value, if it is free text (a description, a note, a source): a string of valid Unicode, at most
    MAX_TEXT_BYTES bytes as UTF-8. `where` and `error` as for check_name."""
    text = _check_unicode(where, value, "text", error)
    size = len(text.encode("utf-8"))
    if size > MAX_TEXT_BYTES:
        raise error(f"{where}: expected text of at most {MAX_TEXT_BYTES} bytes (UTF-8), found {size} bytes "
                    f"({_preview(text)}); shorten it")
    return text


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def terminal_text(text: str) -> str:
    """text with everything a terminal could obey instead of show written as an escape: the categories Cc and
    Cf (C0 controls, DEL, C1 controls, bidi overrides and isolates, zero-width characters, the BOM) as \\xNN or
    \\uNNNN, lone surrogates (a file name that is not UTF-8) as \\udcNN, line and paragraph separators as
    \\u2028/\\u2029. Everything else, accents and other scripts included, is kept. Escaping twice changes
    nothing more (backslashes are kept as they are), so layers may each escape."""
    if text.isprintable():  # the common case, in one C pass: printable text has none of these categories
        return text
    return "".join(_escape(ch) if unicodedata.category(ch) in _ESCAPED_CATEGORIES else ch for ch in text)


def terminal_lines(text: str) -> str:
    """terminal_text for text of several lines that this program laid out: its newlines are kept."""
    return "\n".join(terminal_text(line) for line in text.split("\n"))
