"""The two rules tests/conftest.py applies to every run: what the fast loop leaves out (slow, by fixture), and that a
test run leaves the checkout as it found it (a listing before and after the session; any difference fails it)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import SLOW_FIXTURES, TOOL_CACHES, checkout_changes, checkout_state


def test_a_new_changed_or_removed_path_is_reported_and_the_tool_caches_are_not(tmp_path):
    root = tmp_path / "checkout"
    (root / "models" / "m").mkdir(parents=True)
    (root / "models" / "m" / "model.json").write_text("{}")
    (root / "README.md").write_text("readme")
    (root / "site").mkdir()  # built before the run (make docs): there at the start, so never reported
    (root / "site" / "index.html").write_text("<html>")
    (root / ".venv").mkdir()
    (root / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin")
    before = checkout_state(root)
    assert "models/m/model.json" in before and "site/index.html" in before and "models/" in before
    assert not any(p.startswith(".venv") for p in before)

    (root / "runs" / "model").mkdir(parents=True)  # an empty folder: git status would not show it
    (root / "README.md").write_text("readme, rewritten")
    (root / "models" / "m" / "model.json").unlink()
    for cache in TOOL_CACHES:
        (root / "models" / cache).mkdir()
        (root / "models" / cache / "x").write_text("cached")
    (root / ".venv" / "lib").mkdir()  # a package installed meanwhile: not the tests' doing
    (root / ".venv" / "lib" / "x.py").write_text("")
    assert checkout_changes(before, checkout_state(root)) == [
        "changed: README.md", "gone: models/m/model.json", "new: runs/", "new: runs/model/"]
    assert checkout_changes(before, before) == []


def test_every_fixture_the_slow_rule_names_exists():
    """A renamed fixture would leave the rule naming nothing, and its tests would slip into the fast loop."""
    defined = set()
    for path in Path(__file__).parent.glob("*.py"):
        defined |= set(re.findall(r"^def (\w+)\(", path.read_text(), flags=re.MULTILINE))
    assert set(SLOW_FIXTURES) - defined == set()

