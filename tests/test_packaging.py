"""A non-editable install ships the recipes: the wheel holds them and the commands find them by name."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_wheel_ships_the_recipes_and_an_installed_copy_finds_them(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", REPO, "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = glob.glob(str(wheels / "*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for source in glob.glob(os.path.join(REPO, "recipes", "*", "*.yaml")):
        relative = os.path.relpath(source, REPO)
        assert f"sparse_transfer/{relative}" in names, relative
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), wheel],
                   check=True, capture_output=True)
    code = (
        "import sparse_transfer, sparse_transfer.glue.config as c; "
        "print(sparse_transfer.__file__); print(c.recipe_path('dense_transfer'))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(target)}).stdout.split()
    assert out[0].startswith(str(target)) and out[1].startswith(str(target))  # the installed copy, not the checkout
    assert out[1].endswith(os.path.join("recipes", "glue", "dense_transfer.yaml"))
