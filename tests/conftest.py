from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result

FIXTURES = Path(__file__).parent / "fixtures"
TINY_PACKAGE = FIXTURES / "tiny-model"
TINY_IMAGES = FIXTURES / "tiny-images.npz"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
CHECKOUT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_package() -> Path:
    return TINY_PACKAGE


@pytest.fixture
def tiny_copy(tmp_path) -> Path:
    """A writable copy of the tiny model package, for tests that damage it."""
    dest = tmp_path / "tiny-model"
    shutil.copytree(TINY_PACKAGE, dest)
    return dest


@pytest.fixture(scope="session")
def tiny_images() -> np.ndarray:
    with np.load(TINY_IMAGES) as z:
        return z["images"]


@pytest.fixture(scope="session")
def tiny_model(tiny_package):
    import vae_infer

    return vae_infer.load(tiny_package, threads=1)


def real_data_available() -> bool:
    return (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file()


# -- parts the tests need: skipped where missing, a failure in CI ------------------------------------------
#
# A test that needs a part this machine may lack (a Debian package, an extra) is skipped with a reason that
# starts with MISSING_PREFIX and names what brings the part. Under CI=true such a skip is a failure: CI installs
# everything (`make test`), so a skip there means a missing install step, and a feature would go untested.
MISSING_PREFIX = "needs "
IN_CI = os.environ.get("CI", "").lower() == "true"


def needs(available: bool, what: str) -> pytest.MarkDecorator:
    """Skip unless `available`; `what` names the part and how to get it ("Debian's chromium: apt-get ...")."""
    return pytest.mark.skipif(not available, reason=MISSING_PREFIX + what)


def needs_binary(name: str, package: str) -> pytest.MarkDecorator:
    """Skip unless the program `name` is on PATH. The mark names the program, so the fast loop's rule (below) can
    tell that the test runs it."""
    return pytest.mark.skipif(shutil.which(name) is None, reason=f"{MISSING_PREFIX}{name} from Debian's {package} "
                              "(make system-deps)", program=name)


def needs_module(module: str, extra: str) -> pytest.MarkDecorator:
    import importlib.util

    return needs(importlib.util.find_spec(module) is not None,
                 f"the Python package {module} (pip install -c constraints.txt -e '.[{extra}]')")


needs_real_data = needs(real_data_available(), "Fashion-MNIST: apt-get install dataset-fashion-mnist")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        if reason.startswith(MISSING_PREFIX) or reason.startswith("could not import"):
            report.outcome = "failed"
            report.longrepr = f"CI=true and a part is missing, so this test cannot be skipped: {reason}"


# -- command-line results, shared by the CLI tests -------------------------------------------------------


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def fails(result: Result, *fragments: str, code: int = 1) -> str:
    """The run failed cleanly: exit code, no traceback, and (for errors from the work) exactly one line."""
    assert result.exit_code == code, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), f"unhandled {result.exception!r}"
    assert "Traceback" not in result.output
    err = result.stderr
    if code == 1:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


# -- what onnxruntime reports about CUDA, on any machine ---------------------------------------------------

CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"
# What onnxruntime-gpu raises when its CUDA provider library cannot load (no driver, a missing CUDA library).
MISSING_CUDA_LIBRARY = ("[ONNXRuntimeError] : 1 : FAIL : Failed to load library libonnxruntime_providers_cuda.so "
                        "with error: libcublasLt.so.12: cannot open shared object file: No such file or directory")


@pytest.fixture
def onnxruntime_offers(monkeypatch):
    """offer(cuda, session): make onnxruntime report CUDA as offered or not, whatever this machine has.
    Sessions stay real CPU sessions; when one is asked for CUDA, session says what happens: "cpu" (made without
    it, as onnxruntime-gpu does when its CUDA provider fails to register), "raises" (creation fails with
    MISSING_CUDA_LIBRARY) or "cuda" (the session reports CUDA as its provider)."""
    import onnxruntime as ort

    real = ort.InferenceSession

    def offer(cuda: bool, session: str = "cpu") -> None:
        monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER] if cuda
                            else [CPU_PROVIDER])

        class Session(real):
            def __init__(self, model, sess_options=None, providers=None, *args, **kwargs):
                self.asked_cuda = CUDA_PROVIDER in (providers or [])
                if self.asked_cuda and session == "raises":
                    raise RuntimeError(MISSING_CUDA_LIBRARY)
                cpu_only = [p for p in providers or [CPU_PROVIDER] if p != CUDA_PROVIDER]
                super().__init__(model, sess_options, cpu_only, *args, **kwargs)

            def get_providers(self):
                got = super().get_providers()
                return [CUDA_PROVIDER, *got] if self.asked_cuda and session == "cuda" else got

        monkeypatch.setattr(ort, "InferenceSession", Session)

    return offer


# -- the fast loop: what is slow, by rule ------------------------------------------------------------------
#
# `make test-fast` runs `pytest -m "not slow"`; `make test` runs everything. A test is slow when it trains,
# compiles C, starts a server, a Ray cluster, a browser or an emulator, builds a wheel, reads the real data set
# or loops over many generated examples. Two rules mark most of them here, so that tests added later are
# classified too: a test that uses one of SLOW_FIXTURES, and a test that needs a program from Debian
# (needs_binary: a C compiler, make, an emulator, Chromium, wrk), which it needs because it runs it. The others
# carry @pytest.mark.slow (or a module's pytestmark) where they are written.
SLOW_FIXTURES = {
    "browser": "Chromium under Playwright",
    "cluster": "a Ray cluster",
    "open_server": "vae-infer serve in a subprocess",
    "token_server": "vae-infer serve in a subprocess",
    "trained": "trains a model",
    "wheel": "builds the wheel",
    "tiny_c": "compiles the C backend",
    "with_variants": "quantizes a model (int8, fp16, ORT format)",
    "digits": "writes scikit-learn's 1,797 digits as PNG files",
}


def runs_a_program(item: pytest.Item) -> bool:
    return any(mark.kwargs.get("program") for mark in item.iter_markers("skipif"))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES.keys() & set(getattr(item, "fixturenames", ())) or runs_a_program(item):
            item.add_marker(pytest.mark.slow)


# -- a test run leaves the checkout as it found it -----------------------------------------------------------
#
# A listing of the checkout at the start and the end of the session: every folder, and every file's size and
# modification time. Any path that appears, changes or goes away fails the run (exit status 1) with the list:
# tests write into tmp_path, never the checkout (an empty folder counts; git status would not show it). Not
# listed: .git, virtual environments, node_modules, and the caches the test tools make by design (TOOL_CACHES,
# anywhere). What is there before the run (site/ from `make docs`, a run folder of your own) is never reported,
# only what the run changes; a file edited while the tests run is reported too (the message says so).
TOOL_CACHES = frozenset({".pytest_cache", "__pycache__", ".hypothesis", ".ruff_cache", ".mypy_cache"})


def _not_listed(folder: Path) -> bool:
    return (folder.name in TOOL_CACHES or folder.name in {".git", "node_modules"}
            or folder.name.endswith(".egg-info") or (folder / "pyvenv.cfg").is_file())


def checkout_state(root: Path = CHECKOUT) -> dict[str, tuple]:
    """Relative path -> (size, mtime) of every file and symbolic link under root, and "folder/" -> () for every
    folder, less what _not_listed names."""
    state: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here != root:
            state[f"{here.relative_to(root)}/"] = ()
        dirnames[:] = [d for d in dirnames if not _not_listed(here / d)]
        for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
            try:
                st = (here / name).lstat()
            except OSError:  # gone between the listing and the look
                continue
            state[str((here / name).relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return state


def checkout_changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """What a run did to the checkout, one line a path: "new: path", "changed: path" or "gone: path"."""
    lines = []
    for rel in sorted(before.keys() | after.keys()):
        was, now = before.get(rel), after.get(rel)
        if was != now:
            lines.append(f"{'new' if was is None else 'gone' if now is None else 'changed'}: {rel}")
    return lines


_CHECKOUT_KEY = pytest.StashKey[dict]()


def pytest_sessionstart(session):
    session.config.stash[_CHECKOUT_KEY] = checkout_state()


def pytest_sessionfinish(session, exitstatus):
    before = session.config.stash.get(_CHECKOUT_KEY, None)
    if before is None:
        return
    changes = checkout_changes(before, checkout_state())
    if changes:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_sep("=", "the test run changed the checkout", red=True)
            reporter.write_line("a test wrote outside its tmp_path (or a file was edited while the tests ran):")
            for line in changes:
                reporter.write_line("  " + line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium under Playwright, one per test module (tests.test_browser.launched_chromium)."""
    from tests.test_browser import launched_chromium

    with launched_chromium() as b:
        yield b
