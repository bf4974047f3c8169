"""Every notebook runs top to bottom (so the examples in notebooks/ cannot rot) and is committed with its outputs."""

import importlib.util
import json
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def _executor():
    spec = importlib.util.spec_from_file_location("notebook_execute", NOTEBOOK_DIR / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path):
    executed = _executor().run_notebook(path, write=False)
    assert all(c.get("execution_count") for c in executed["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_with_its_outputs(path):
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in cells), f"run `python notebooks/execute.py {path.stem}` and commit it"
    assert any(c.get("outputs") for c in cells)


def test_there_is_a_notebook():
    assert NOTEBOOKS
