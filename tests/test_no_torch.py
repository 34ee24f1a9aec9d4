"""The runtime must work where torch is not installed: importing any module of vae_infer, and using it, loads
neither torch nor train. Each module is imported alone in a fresh interpreter, so that no module can hide
behind another that happened to be imported first (tests/test_imports.py reads the same rule from the source)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_imports import module_names

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "train")

# One clean interpreter that has never imported vae_infer loads the runtime's third-party dependencies once,
# then forks a child per module: each child imports its module alone and reports what is in sys.modules.
# A fork is as fresh as a new interpreter for this purpose (no vae_infer module is loaded before it) and
# saves the half second each new interpreter spends importing numpy and onnxruntime again.
IMPORT_EACH = """
import ast, importlib, importlib.util, os, sys, traceback
modules, forbidden = ast.literal_eval(sys.argv[1]), tuple(sys.argv[2:])
for dep in ("numpy", "onnxruntime", "networkx", "click", "fastapi", "pydantic", "starlette"):
    if importlib.util.find_spec(dep) is not None:
        importlib.import_module(dep)
def loaded():
    return sorted(k for k in sys.modules if k.split('.')[0] in forbidden)
results = {"<dependencies>": loaded()}
for name in modules:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(name)
            out = repr(loaded())
        except BaseException:
            out = repr("import failed: " + traceback.format_exc().strip().splitlines()[-1])
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read().decode()
    os.waitpid(pid, 0)
    results[name] = ast.literal_eval(data) if data else "the child died without a word"
print(repr(results))
"""

USE = """
import sys
import numpy as np
import vae_infer
import vae_infer.cli
m = vae_infer.load(sys.argv[1], threads=1)
x = m.sample(4, seed=0)
mu, logvar = m.encode(x)
m.reconstruct(x); m.score(x)
heavy = sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'train', 'onnx', 'matplotlib'))
print('HEAVY', heavy)
"""


def loaded_by_each(modules: list[str], forbidden=FORBIDDEN) -> dict[str, list[str] | str]:
    """For each module, the forbidden modules in sys.modules after it alone is imported (or why it failed);
    the key "<dependencies>" holds what the third-party dependencies loaded before any of them."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}  # no threads before fork
    r = subprocess.run([sys.executable, "-c", IMPORT_EACH, repr(list(modules)), *forbidden], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return ast.literal_eval(r.stdout.strip().splitlines()[-1])


def test_using_vae_infer_imports_no_torch(tiny_package):
    out = subprocess.run(
        [sys.executable, "-c", USE, str(tiny_package)], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "HEAVY []" in out, out


@pytest.mark.slow
def test_every_module_of_the_runtime_imports_alone_without_torch_or_train():
    modules = sorted(module_names(ROOT / "vae_infer"))
    # the subpackages are scanned too (the first version of this test globbed only the top folder)
    assert {"vae_infer.cli.model_commands", "vae_infer.native.build", "vae_infer.__main__"} <= set(modules)
    loaded = loaded_by_each(modules)
    assert set(loaded) == {"<dependencies>", *modules}
    assert {m: heavy for m, heavy in loaded.items() if heavy} == {}


@pytest.mark.slow
def test_the_check_sees_what_a_module_loads_and_a_module_that_fails():
    """The probe reports what a module really loads (tomllib here, asked for as if it were forbidden),
    and says so when a module cannot be imported alone."""
    loaded = loaded_by_each(["tomllib", "json", "vae_infer.no_such_module"], forbidden=("tomllib",))
    assert loaded["tomllib"] == ["tomllib", "tomllib._parser", "tomllib._re", "tomllib._types"]
    assert loaded["json"] == [] and loaded["<dependencies>"] == []
    assert loaded["vae_infer.no_such_module"] == "import failed: ModuleNotFoundError: No module named " \
                                                 "'vae_infer.no_such_module'"
