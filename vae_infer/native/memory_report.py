"""The memory report of an exported build (memory.json), from the built objects themselves: section sizes
from the target's `size`, each function's stack frame from GCC's -fstack-usage (.su files), and the worst
case per entry point along the call graph from -fcallgraph-info=su (.ci files).

export-c copies this file into the export folder as memory.py (it needs only Python's standard library);
the exported Makefile runs it after linking:

    python3 memory.py --size arm-none-eabi-size --library vae.o --program vae_example.elf \\
        --stack vae.ci main.ci startup.ci --entry vae_encode vae_decode main --flash 1048576 --ram 65536 \\
        --reserved-stack 16384 --out memory.json

flash_bytes: code, constants and .data's initial values (the whole firmware for a bare-metal program, the
library object otherwise); ram_bytes: .data, .bss and the reserved stack (bare metal), or the library's
.data and .bss. A build over --flash or --ram, or whose worst-case stack exceeds --reserved-stack, is
refused: one line on stderr and exit status 1 (memory.json is still written, with "fits": false)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

FLASH_SECTIONS = (".text", ".rodata", ".ARM.exidx", ".ARM.extab", ".isr_vector", ".init", ".fini")
RAM_SECTIONS = (".data", ".bss", ".stack", ".heap")


def sections(size_tool: str, path: str) -> dict[str, int]:
    """{section: bytes} from `size -A -d` of an object or program."""
    out = subprocess.run([size_tool, "-A", "-d", path], capture_output=True, text=True, check=True).stdout
    found: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            found[parts[0]] = found.get(parts[0], 0) + int(parts[1])
    return found


def _sum(found: dict[str, int], names: tuple[str, ...]) -> int:
    return sum(v for k, v in found.items() if any(k == n or k.startswith(n + ".") for n in names))


def read_stack_usage(paths: list[str]) -> dict[str, dict]:
    """{function: {"bytes", "kind"}} from .su files ("file:line:col:name<TAB>bytes<TAB>static|dynamic|bounded")."""
    frames: dict[str, dict] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1].isdigit():
                name = parts[0].rsplit(":", 1)[-1]
                frames[name] = {"bytes": int(parts[1]), "kind": parts[2].strip()}
    return frames


NODE = re.compile(r'node:\s*\{\s*title:\s*"([^"]+)"\s*label:\s*"([^"]*)"')
EDGE = re.compile(r'edge:\s*\{\s*sourcename:\s*"([^"]+)"\s*targetname:\s*"([^"]+)"')
FRAME = re.compile(r"\\n(\d+) bytes \((\w+)\)")


def read_call_graph(paths: list[str]) -> tuple[dict[str, int], dict[str, set[str]], dict[str, str]]:
    """(frame bytes, callees, kind) per function from GCC's .ci files (VCG); external functions have no frame."""
    frames: dict[str, int] = {}
    kinds: dict[str, str] = {}
    calls: dict[str, set[str]] = {}
    for path in paths:
        text = Path(path).read_text()
        for title, label in NODE.findall(text):
            name = title.rsplit(":", 1)[-1]
            m = FRAME.search(label)
            if m:
                frames[name] = int(m.group(1))
                kinds[name] = m.group(2)
        for src, dst in EDGE.findall(text):
            calls.setdefault(src.rsplit(":", 1)[-1], set()).add(dst.rsplit(":", 1)[-1])
    return frames, calls, kinds


def worst_case(entry: str, frames: dict[str, int], calls: dict[str, set[str]]) -> tuple[int, list[str]]:
    """The deepest stack from entry along the call graph: (bytes, the path). Library functions that have no
    frame record (memset, the C library) count as 0; the generated code does not recurse."""
    best: dict[str, tuple[int, list[str]]] = {}

    def visit(name: str, seen: tuple[str, ...]) -> tuple[int, list[str]]:
        if name in best:
            return best[name]
        deepest: tuple[int, list[str]] = (0, [])
        for callee in sorted(calls.get(name, ())):
            if callee in seen:
                raise ValueError(f"recursion through {callee}: no static worst-case stack")
            depth = visit(callee, (*seen, callee))
            if depth[0] > deepest[0]:
                deepest = depth
        best[name] = (frames.get(name, 0) + deepest[0], [name, *deepest[1]])
        return best[name]

    return visit(entry, (entry,))


def report(size_tool: str, library: str, program: str | None, stack_files: list[str], entries: list[str],
           flash: int | None, ram: int | None, reserved_stack: int | None, target: str = "") -> dict:
    lib = sections(size_tool, library)
    su = [p for p in stack_files if p.endswith(".su")]
    ci = [p for p in stack_files if p.endswith(".ci")]
    per_function = read_stack_usage(su)
    frames, calls, kinds = read_call_graph(ci)
    for name, size in frames.items():
        per_function.setdefault(name, {"bytes": size, "kind": kinds.get(name, "static")})
    frames = {**{k: v["bytes"] for k, v in per_function.items()}, **frames}
    worst: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry in frames or entry in calls:
            depth, path = worst_case(entry, frames, calls)
            worst[entry] = {"bytes": depth, "path": path}
    result: dict = {
        "target": target,
        "library": {"object": library, "sections": lib, "code_and_constants_bytes": _sum(lib, FLASH_SECTIONS),
                    "data_bss_bytes": _sum(lib, (".data", ".bss"))},
        "stack_bytes": {"per_function": dict(sorted(per_function.items())), "worst_case": worst,
                        "worst_case_bytes": max((w["bytes"] for w in worst.values()), default=0),
                        "source": "gcc -fstack-usage (frames) and -fcallgraph-info=su (call graph)"},
    }
    if program is not None and reserved_stack is not None:  # a bare-metal image: the whole memory map
        prog = sections(size_tool, program)
        result["program"] = {"file": program, "sections": prog}
        result["flash_bytes"] = _sum(prog, FLASH_SECTIONS) + prog.get(".data", 0)
        result["ram_bytes"] = _sum(prog, RAM_SECTIONS)
        result["reserved_stack_bytes"] = reserved_stack
    else:
        result["flash_bytes"] = result["library"]["code_and_constants_bytes"]
        result["ram_bytes"] = result["library"]["data_bss_bytes"]
    result["budget"] = {"flash_bytes": flash, "ram_bytes": ram}
    problems = []
    if flash is not None and result["flash_bytes"] > flash:
        problems.append(f"flash: {result['flash_bytes']:,} bytes used, {flash:,} available")
    if ram is not None and result["ram_bytes"] > ram:
        problems.append(f"RAM: {result['ram_bytes']:,} bytes used, {ram:,} available")
    if reserved_stack is not None and result["stack_bytes"]["worst_case_bytes"] > reserved_stack:
        problems.append(f"stack: worst case {result['stack_bytes']['worst_case_bytes']:,} bytes, "
                        f"{reserved_stack:,} reserved (make STACK=...)")
    result["fits"] = not problems
    result["problems"] = problems
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="memory.json from the built objects")
    p.add_argument("--size", default="size", help="the target's size tool")
    p.add_argument("--library", required=True, help="the library's object file")
    p.add_argument("--program", default=None, help="the linked program (bare metal: the firmware image)")
    p.add_argument("--stack", nargs="*", default=[], help=".su and .ci files")
    p.add_argument("--entry", nargs="*", default=[], help="entry points for the worst-case stack")
    p.add_argument("--flash", type=int, default=None)
    p.add_argument("--ram", type=int, default=None)
    p.add_argument("--reserved-stack", type=int, default=None)
    p.add_argument("--target", default="")
    p.add_argument("--out", default="memory.json")
    a = p.parse_args(argv)
    try:
        result = report(a.size, a.library, a.program, a.stack, a.entry, a.flash, a.ram, a.reserved_stack, a.target)
    except (OSError, subprocess.CalledProcessError, ValueError) as e:
        print(f"memory report: {e}", file=sys.stderr)
        return 1
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    if not result["fits"]:
        print(f"the {a.target or 'build'} does not fit its budget: {'; '.join(result['problems'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
