"""Every code block in README.md and the docs pages runs as pasted.

A ```python block runs in a fresh interpreter, a ```bash block in `bash -eu`, each in an empty temporary folder
holding what a reader has after the quickstart: the checkout's `models/` linked in, `vae-infer` and `python` of
the project's environment on PATH, and the checkout importable (so `python -m train` works as in the checkout).
Blocks are written to work alone: each makes the files it reads.

A block that needs a long run (training, a server that stays up, a cluster) is preceded by a comment
`<!-- docs-test: parse-only (why) -->`: it is still parsed (`compile` for Python, `bash -n` for shell) and
every `vae-infer ...` / `python -m train ...` line in it has its options checked against the real click
commands. ```text blocks (diagrams, usage synopses, output) are not code and are not run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = {"python", "bash"}
KNOWN = RUNNABLE | {"text", "json", "c", "make", "yaml", "toml", "console"}
BLOCK = re.compile(r"(?:<!--\s*docs-test:\s*(?P<mark>[^>]*?)\s*-->\s*\n)?^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```",
                   re.S | re.M)
BLOCK_TIMEOUT_S = 180


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    body: str
    parse_only: bool

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in BLOCK.finditer(text):
            mark = (m.group("mark") or "").strip()
            if mark and not mark.startswith("parse-only"):
                raise ValueError(f"{page.name}: unknown docs-test mark {mark!r}")
            found.append(Block(page.relative_to(ROOT).as_posix(), text.count("\n", 0, m.start("body")),
                               m.group("lang"), m.group("body"), bool(mark)))
    return found


ALL = blocks()
CODE = [b for b in ALL if b.lang in RUNNABLE]


def test_every_block_says_what_it_is():
    """A bare ``` block cannot be checked: say python or bash (code), or text (a diagram or output)."""
    unlabelled = [f"{b} ```{b.lang}" for b in ALL if b.lang not in KNOWN]
    assert unlabelled == []


def _commands(body: str) -> list[list[str]]:
    """The `vae-infer ...` and `python -m train ...` command lines of a shell block (continuations joined)."""
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip()
        for piece in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
            try:
                words = shlex.split(piece)
            except ValueError:
                continue
            while words and "=" in words[0] and not words[0].startswith("-"):
                words = words[1:]  # VAR=value prefixes
            if words[:1] == ["vae-infer"] or words[:3] == ["python", "-m", "vae_infer"]:
                out.append(["vae-infer", *words[1 if words[0] == "vae-infer" else 3:]])
            elif words[:3] == ["python", "-m", "train"]:
                out.append(["train", *words[3:]])
    return out


def _root_command(name: str) -> click.Command:
    if name == "vae-infer":
        from vae_infer.cli import main
        return main
    from train.cli import main
    return main


def check_options(argv: list[str]) -> list[str]:
    """Problems with a command line's subcommands and options, found by walking the real click commands."""
    command = _root_command(argv[0])
    words = argv[1:]
    path = [argv[0]]
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):
        sub = command.commands.get(words[0])
        if sub is None:
            return [f"{' '.join(path)} has no command {words[0]!r}"]
        command, path, words = sub, [*path, words[0]], words[1:]
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"-h", "--help"}
    return [f"{' '.join(path)} has no option {w.split('=', 1)[0]!r}" for w in words
            if w.startswith("-") and len(w) > 1 and not _is_number(w) and w.split("=", 1)[0] not in known]


def _is_number(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("block", CODE, ids=str)
def test_block_parses_and_its_options_exist(block: Block):
    if block.lang == "python":
        compile(block.body, str(block), "exec")
        return
    done = subprocess.run(["bash", "-n"], input=block.body, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr
    problems = [p for argv in _commands(block.body) for p in check_options(argv)]
    assert problems == []


def reader_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """An empty folder with the checkout's models/ linked in, and the environment a reader's shell has."""
    (tmp_path / "models").symlink_to(ROOT / "models")
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    return tmp_path, env


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in CODE if not b.parse_only], ids=str)
def test_block_runs_as_pasted(block: Block, tmp_path: Path):
    folder, env = reader_folder(tmp_path)
    argv = [sys.executable, "-c", block.body] if block.lang == "python" else ["bash", "-euo", "pipefail", "-c",
                                                                            block.body]
    done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    assert done.returncode == 0, f"{block} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


# -- the checks themselves can fail ----------------------------------------------------------------------


def test_option_check_finds_a_wrong_option_and_a_wrong_command():
    assert check_options(["vae-infer", "encode", "m", "x.npy", "--out", "o.npz"]) == []
    assert check_options(["vae-infer", "encode", "m", "x.npy", "--outt", "o.npz"]) == [
        "vae-infer encode has no option '--outt'"]
    assert check_options(["vae-infer", "index", "buidl"]) == ["vae-infer index has no command 'buidl'"]
    assert check_options(["train", "fit", "--epochs", "1", "--bogus=3"]) == ["train fit has no option '--bogus'"]


def test_command_lines_are_found_in_a_shell_block():
    body = "X=1 vae-infer info models/m --json  # a comment --nope\npython -m train fit \\\n  --epochs 2 | head"
    assert _commands(body) == [["vae-infer", "info", "models/m", "--json"], ["train", "fit", "--epochs", "2"]]
