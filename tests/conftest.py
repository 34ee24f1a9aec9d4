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
    return needs(shutil.which(name) is not None, f"{name} from Debian's {package} (make system-deps)")


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
