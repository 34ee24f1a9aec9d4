from __future__ import annotations

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


needs_real_data = pytest.mark.skipif(
    not real_data_available(), reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist"
)


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
