"""Hostile text: strings a stranger may put in any text field of a model package, a file name or a request.

Each entry is (label, text). The corpus is shared by the tests of every door (loader, CLI, C generator, server,
page): a door passes when the text comes out as inert data or is refused with a clear error, never when it runs.
CANARY is the marker a payload would create (a file, a DOM attribute) if it ever ran."""

from __future__ import annotations

CANARY = "vae_infer_canary_pwned"

_RUN = "__attribute__((constructor)) static void p(void){system(\"touch " + CANARY + "\");}"

HOSTILE_TEXT: tuple[tuple[str, str], ...] = (
    # C: comments closed through line splices (backslash and trigraph forms), closers, preprocessor lines
    ("c-splice-backslash", "x *\\\n/ " + _RUN + " /*"),
    ("c-splice-trigraph", "x *??/\n/ " + _RUN + " /*"),
    ("c-comment-close", "*/ int " + CANARY + " = 1; /*"),
    ("c-line-comment", "// \\\nint " + CANARY + ";"),
    ("c-preprocessor", "\n#include \"/etc/passwd\"\n#define float double\n"),
    ("c-string-break", "\"; system(\"touch " + CANARY + "\"); char *s = \""),
    ("c-nul", "before\x00after"),
    ("format-string", "%s%s%s%n%x%p{0}{__class__}"),
    # HTML and script in several contexts (element, attribute, URL)
    ("html-element", "<img src=x onerror=\"document.documentElement.setAttribute('data-" + CANARY + "','1')\">"),
    ("html-script", "<script>document.documentElement.setAttribute('data-" + CANARY + "','1')</script>"),
    ("html-attribute", "\" onmouseover=\"document.documentElement.setAttribute('data-" + CANARY + "','1')\" x=\""),
    ("html-url", "javascript:document.documentElement.setAttribute('data-" + CANARY + "','1')"),
    ("html-svg", "<svg onload=alert(1)></svg>"),
    # terminals: OSC retitle + clear screen, CSI colour, C1 controls, bidi overrides, zero-width characters
    ("terminal-osc", "\x1b]0;" + CANARY + "\x07\x1b[2J"),
    ("terminal-csi", "\x1b[31mred\x1b[0m\x9b2J"),
    ("bidi-override", "model\u202egnp.exe\u2066x\u2069"),
    ("zero-width", "mo\u200bdel\u200d\ufeff"),
    ("del-and-c0", "a\x7fb\x01c\rd"),
    # not valid Unicode, and sizes
    ("lone-surrogate", "name\udc80"),
    ("long-name", "n" * 300),
    ("long-text", "t" * 5000),
    ("non-ascii", "Modèle ✓ 模型 𝔘"),
)

# One string holding the worst of each family, for the slow end-to-end checks (one compile per target).
COMBINED = "".join(text for label, text in HOSTILE_TEXT if label not in ("long-name", "long-text", "lone-surrogate"))
