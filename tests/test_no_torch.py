"""The runtime must work where torch is not installed: importing and using vae_infer loads no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
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


def test_using_vae_infer_imports_no_torch(tiny_package):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_package)], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "HEAVY []" in out, out


def test_runtime_source_never_imports_torch_or_train():
    for path in (ROOT / "vae_infer").glob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("import torch", "from torch", "import train", "from train")), (
                f"{path.name}: {stripped}"
            )
