"""The machines export-c writes code for: each target's compiler, flags, emulator and memory budget.

    x86_64         this machine's compiler, code for this CPU (-march=native: AVX2 / AVX-512, VNNI)
    aarch64-linux  Cortex-A class, 64-bit Linux (NEON is part of armv8-a); statically linked, runs under qemu-aarch64
    armv7-linux    32-bit Linux, hard-float with NEON and VFPv4 (fused multiply-add); runs under qemu-arm
    cortex-m4      bare metal with the single-precision FPU: no OS, no heap, no stdio in the library; a firmware
                   image for qemu's mps2-an386 board (code at 0x0, RAM at 0x20000000), I/O through semihosting

Cross compilers and emulators are Debian packages; a target whose compiler is missing is refused with the
package to install."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass

from ..errors import InputError
from .build import CompilerError

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class Target:
    name: str
    summary: str
    cc: str  # the compiler command the exported Makefile uses
    cc_package: str  # the Debian packages that bring it (and its C library)
    arch_flags: tuple[str, ...]  # code generation flags for the target's CPU
    link_flags: tuple[str, ...] = ()
    defines: tuple[str, ...] = ()  # -D flags of the library build
    size_tool: str = "size"
    emulator: tuple[str, ...] = ()  # command prefix that runs a program built for the target on this machine
    emulator_package: str = ""
    block: int = 64  # outputs per weight block (register blocking width)
    rows: int | None = None  # rows per tile; None: chosen by the target's macros
    bare_metal: bool = False
    flash_bytes: int | None = None  # the board's sizes (bare metal): the defaults of --flash and --ram
    ram_bytes: int | None = None
    stack_bytes: int | None = None  # the stack the firmware reserves
    native: bool = False  # runs on this machine without an emulator

    @property
    def program(self) -> str:
        return "vae_example.elf" if self.bare_metal else "vae_example"


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("x86_64", "this x86-64 machine, code for its CPU", "cc", "gcc",
           ("-march=native",), native=True),
    Target("aarch64-linux", "64-bit Arm Linux, Cortex-A class with NEON", "aarch64-linux-gnu-gcc",
           "gcc-aarch64-linux-gnu libc6-dev-arm64-cross", ("-march=armv8-a",), ("-static",),
           size_tool="aarch64-linux-gnu-size", emulator=("qemu-aarch64",), emulator_package="qemu-user"),
    Target("armv7-linux", "32-bit Arm Linux, hard-float with NEON and VFPv4", "arm-linux-gnueabihf-gcc",
           "gcc-arm-linux-gnueabihf libc6-dev-armhf-cross",
           ("-march=armv7-a", "-mfpu=neon-vfpv4", "-mfloat-abi=hard"), ("-static",),
           size_tool="arm-linux-gnueabihf-size", emulator=("qemu-arm",), emulator_package="qemu-user", block=16),
    Target("cortex-m4", "bare-metal Cortex-M4 with FPU (qemu's mps2-an386 board: 4 MiB code, 4 MiB RAM)",
           "arm-none-eabi-gcc", "gcc-arm-none-eabi libnewlib-arm-none-eabi",
           ("-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"),
           ("-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections"),
           defines=("-DVAE_ROWS=1", "-DVAE_STATIC_ACTIVATIONS"), size_tool="arm-none-eabi-size",
           emulator=("qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor", "none"),
           emulator_package="qemu-system-arm", block=1, rows=1, bare_metal=True,
           flash_bytes=4 * MIB, ram_bytes=4 * MIB, stack_bytes=4 * KIB),
)}
DEFAULT_TARGET = "x86_64"


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise InputError(f"unknown target {name!r}: expected one of {', '.join(TARGETS)}") from None


def parse_size(text: str | int | None, what: str) -> int | None:
    """Bytes from 1048576, 1M, 1MiB, 64K, 64k: binary multiples; None stays None."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)(?:i?[bB])?\s*", str(text))
    if not m or int(m.group(1)) <= 0:
        raise InputError(f"{what} must be a positive size in bytes such as 1048576, 1M or 64K; got {text!r}")
    return int(m.group(1)) * {"": 1, "k": KIB, "m": MIB}[m.group(2).lower()]


def missing_compiler_error(target: Target, cc: str | None = None) -> CompilerError:
    return CompilerError(f"the {target.name} target needs the C compiler {cc or target.cc}, which is not on PATH; "
                         f"install it: apt-get install --no-install-recommends {target.cc_package}")


def missing_emulator_error(target: Target) -> CompilerError:
    return CompilerError(f"running {target.name} programs on this machine needs {target.emulator[0]}, which is not "
                         f"on PATH; install it: apt-get install --no-install-recommends {target.emulator_package}")


def require_compiler(target: Target, cc: str | None = None) -> str:
    found = shutil.which(cc or target.cc)
    if found is None:
        raise missing_compiler_error(target, cc)
    return found


def require_emulator(target: Target) -> list[str]:
    if target.native or not target.emulator:
        return []
    if shutil.which(target.emulator[0]) is None:
        raise missing_emulator_error(target)
    return list(target.emulator)
