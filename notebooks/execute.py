"""Runs every notebook in this folder top to bottom and stores the printed output of each code cell in it.

    python notebooks/execute.py                 # all notebooks
    python notebooks/execute.py sparse_lora     # one

A minimal executor (no Jupyter kernel needed, so the test suite can use it too): each code cell runs in one shared
namespace with stdout and stderr captured; figures shown with matplotlib are stored as PNG. Run from anywhere: cells
run in a temporary folder.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _figures() -> list[dict]:
    """PNG outputs of the matplotlib figures a cell left open (then closed)."""
    if "matplotlib.pyplot" not in sys.modules:
        return []
    import matplotlib.pyplot as plt

    outputs = []
    for number in plt.get_fignums():
        buffer = io.BytesIO()
        plt.figure(number).savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        outputs.append({"output_type": "display_data", "metadata": {},
                        "data": {"image/png": base64.b64encode(buffer.getvalue()).decode(), "text/plain": ["<Figure>"]}})
    plt.close("all")
    return outputs


def run_notebook(path: str | os.PathLike, write: bool = True) -> dict:
    """Executes ``path``; returns the notebook with outputs (and writes it back if ``write``). A failing cell raises,
    naming the cell."""
    import matplotlib

    matplotlib.use("Agg")
    path = Path(path)
    notebook = json.loads(path.read_text())
    namespace: dict = {"__name__": "__main__"}
    count = 0
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        try:
            for index, cell in enumerate(notebook["cells"]):
                if cell["cell_type"] != "code":
                    continue
                count += 1
                stdout, stderr = io.StringIO(), io.StringIO()
                source = "".join(cell["source"])
                try:
                    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                        exec(compile(source, f"{path.name}[cell {index}]", "exec"), namespace)
                except Exception as err:
                    raise RuntimeError(f"{path.name}, cell {index} failed:\n{traceback.format_exc()}") from err
                outputs = []
                if stdout.getvalue():
                    outputs.append({"output_type": "stream", "name": "stdout", "text": stdout.getvalue().splitlines(True)})
                outputs += _figures()
                cell["outputs"], cell["execution_count"] = outputs, count
        finally:
            os.chdir(cwd)
    if write:
        path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    return notebook


def main(argv: list[str] | None = None) -> int:
    names = sys.argv[1:] if argv is None else argv
    paths = [HERE / f"{n.removesuffix('.ipynb')}.ipynb" for n in names] or sorted(HERE.glob("*.ipynb"))
    for path in paths:
        run_notebook(path)
        print(f"executed {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
