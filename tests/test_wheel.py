"""The runtime as users get it: the wheel built from this checkout, installed into a fresh virtual environment
without torch, runs the command line (`vae-infer` and `python -m vae_infer`), encodes with the shipped model
exactly as the checkout does, and compiles the C backend once its extra is installed.

The wheel is built from the files a fresh clone would hold (tracked and not ignored), so that build outputs
and node_modules lying in this checkout cannot hide a packaging mistake. pip reads the one lock file
(constraints.txt) and its cache, so the install takes seconds after the first run."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import vae_infer
from tests.conftest import needs, needs_binary

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "fashion-mnist"
CONSTRAINTS = ROOT / "constraints.txt"
# What the wheel must hold besides Python modules: the package-data patterns of pyproject.toml.
DATA_PATTERNS = ("vae_infer/py.typed", "vae_infer/serve/web/*.html", "vae_infer/serve/web/*.css",
                 "vae_infer/serve/web/js/*.js", "vae_infer/serve/web/package*.json")
TOLERANCE = 1e-6  # the same graphs and the same onnxruntime: only float rounding may differ
C_TOLERANCE = 1e-5  # the generated C against onnxruntime (as in test_native)
PIP_TIMEOUT = 300

pytestmark = [pytest.mark.slow, needs(shutil.which("git") is not None and (ROOT / ".git").exists(),
                                      "a git checkout (the wheel is built from the files git tracks)")]


def clone_files() -> list[str]:
    """The files a fresh clone would have for the wheel: tracked or new, never ignored."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "pyproject.toml",
         "README.md", "vae_infer"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode()
    return sorted(p for p in out.split("\0") if p and (ROOT / p).is_file() and "__pycache__" not in p)


def clean_env(tmp: Path) -> dict[str, str]:
    """No trace of the development environment: no PYTHONPATH, no active venv, a private cache folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["XDG_CACHE_HOME"] = str(tmp / "cache")  # the C backend builds from scratch, not from our cache
    return env


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def pip_install(venv: Path, requirement: str, env: dict[str, str]) -> None:
    # The development environment's pip installs into the new environment (pip --python): the new one needs
    # no pip of its own, which saves the seconds ensurepip takes.
    r = run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet",
             "--disable-pip-version-check", "-c", CONSTRAINTS, requirement], venv.parent, env, PIP_TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    for name in clone_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    r = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
             "--disable-pip-version-check", "-w", root / "dist", src], root, clean_env(root), PIP_TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    (built,) = (root / "dist").glob("vae_infer-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment (no system site-packages) with only the wheel and its dependencies."""
    root = tmp_path_factory.mktemp("user")
    env = clean_env(root)
    r = run([sys.executable, "-m", "venv", "--without-pip", root / "venv"], root, env)
    assert r.returncode == 0, r.stderr
    pip_install(root / "venv", str(wheel), env)
    return root / "venv"


@pytest.fixture(scope="module")
def user(venv):
    """Run a command of the installed environment from a folder outside the checkout (so that `import
    vae_infer` cannot find the checkout's copy)."""
    work, env = venv.parent, clean_env(venv.parent)

    def call(program: str, *args, ok: bool = True) -> subprocess.CompletedProcess:
        r = run([venv / "bin" / program, *args], work, env)
        if ok:
            assert r.returncode == 0, r.stdout + r.stderr
        return r

    call.work = work
    return call


@pytest.fixture(scope="module")
def images(user, tiny_images) -> tuple[Path, np.ndarray]:
    path = user.work / "images.npy"
    np.save(path, tiny_images[:16])
    return path, tiny_images[:16]


@pytest.fixture(scope="module")
def expected(images) -> tuple[np.ndarray, np.ndarray]:
    """The checkout's encode of the same images."""
    return vae_infer.load(SHIPPED, threads=1).encode(images[1])


def test_the_wheel_holds_every_module_and_data_file_of_the_checkout(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = [p for p in clone_files() if p.startswith("vae_infer/")
              and (p.endswith(".py") or any(fnmatch.fnmatch(p, pat) for pat in DATA_PATTERNS))]
    missing = [p for p in wanted if p not in names]
    assert not missing, f"the wheel leaves out {missing}"
    assert {"vae_infer/cli/__init__.py", "vae_infer/native/__init__.py", "vae_infer/__main__.py"} <= names
    assert "vae_infer/py.typed" in names  # PEP 561: type checkers of importing projects read our annotations
    # the runtime only: train/ and tests/ stay in the repository
    assert not [n for n in names if n.startswith(("train/", "tests/", "benchmarks/"))]
    assert not [n for n in names if "node_modules" in n]  # installed npm packages never go into the wheel


def test_installed_runtime_is_the_wheel_and_has_no_torch(user, venv):
    code = ("import importlib.util, json, vae_infer; print(json.dumps({'file': vae_infer.__file__, "
            "'torch': importlib.util.find_spec('torch') is not None, 'train': importlib.util.find_spec('train') "
            "is not None, 'onnxruntime': importlib.util.find_spec('onnxruntime') is not None}))")
    found = json.loads(user("python", "-c", code).stdout)
    assert Path(found["file"]).is_relative_to(venv), found["file"]
    assert found == {**found, "torch": False, "train": False, "onnxruntime": True}
    r = user("python", "-c", "import torch", ok=False)
    assert r.returncode == 1 and "No module named 'torch'" in r.stderr


def test_both_command_lines_show_the_same_help(user):
    script = user("vae-infer", "--help").stdout
    module = user("python", "-m", "vae_infer", "--help").stdout
    assert script.startswith("Usage: vae-infer [OPTIONS] COMMAND")
    for command in ("info", "encode", "decode", "reconstruct", "sample", "score", "export-c"):
        assert f"  {command} " in script, (command, script)
    assert module == script


def test_installed_cli_and_python_encode_as_the_checkout_does(user, images, expected):
    path, _ = images
    r = user("vae-infer", "encode", SHIPPED, path, "--out", "codes.npz", "--threads", "1")
    assert "wrote mu and logvar (16 x 2) to codes.npz" in r.stdout
    with np.load(user.work / "codes.npz") as z:
        np.testing.assert_allclose(z["mu"], expected[0], rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(z["logvar"], expected[1], rtol=0, atol=TOLERANCE)
    code = (f"import numpy as np, sys, vae_infer; m = vae_infer.load({str(SHIPPED)!r}, threads=1); "
            f"mu, logvar = m.encode(np.load({str(path)!r})); np.savez('py.npz', mu=mu, logvar=logvar); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'train')))")
    assert user("python", "-c", code).stdout.strip() == "[]"
    with np.load(user.work / "py.npz") as z:
        np.testing.assert_allclose(z["mu"], expected[0], rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(z["logvar"], expected[1], rtol=0, atol=TOLERANCE)


def test_c_backend_without_its_extra_names_the_extra(user):
    code = f"import vae_infer; vae_infer.load({str(SHIPPED)!r}, backend='c')"
    r = user("python", "-c", code, ok=False)
    assert r.returncode == 1
    assert "MissingExtraError" in r.stderr and "pip install 'vae-infer[native]'" in r.stderr, r.stderr


@needs_binary("gcc", "gcc")
def test_c_backend_compiles_and_encodes_once_its_extra_is_installed(user, venv, wheel, images, expected):
    pip_install(venv, f"{wheel}[native]", clean_env(venv.parent))
    path, _ = images
    code = (f"import numpy as np, vae_infer; m = vae_infer.load({str(SHIPPED)!r}, backend='c'); "
            f"mu, logvar = m.encode(np.load({str(path)!r})); np.savez('c.npz', mu=mu, logvar=logvar); "
            "print(m.backend)")
    assert user("python", "-c", code).stdout.strip().splitlines()[-1] == "c"
    with np.load(user.work / "c.npz") as z:
        np.testing.assert_allclose(z["mu"], expected[0], rtol=0, atol=C_TOLERANCE)
        np.testing.assert_allclose(z["logvar"], expected[1], rtol=0, atol=C_TOLERANCE)
    assert any((user.work / "cache" / "vae-infer").rglob("*.so")), "the library was not built in the fresh cache"
