"""Recipe YAML files shared by the command-line tools (glue, upstream, vision).

A recipe is a mapping of a tool's field names to values (a ``description:`` key is allowed and ignored); it
fills the same dataclasses as the command-line flags, which override it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import yaml


def find_recipe(name_or_path: str | os.PathLike, folder: str) -> str:
    """A recipe file: ``name_or_path`` itself if it is a file, else ``<name>.yaml`` among the recipes shipped in
    ``sparse_transfer/recipes/<folder>/`` (``glue``, ``upstream``, ``imagenet``), found through ``importlib.resources``
    so that a wheel install finds them too. Raises ``FileNotFoundError`` listing the shipped names."""
    from importlib.resources import files

    if os.path.isfile(name_or_path):
        return os.fspath(name_or_path)
    shipped = files("sparse_transfer") / "recipes" / folder
    name = os.fspath(name_or_path)
    candidate = shipped / (name if name.endswith(".yaml") else f"{name}.yaml")
    if candidate.is_file():
        return str(candidate)
    known = sorted(p.name.removesuffix(".yaml") for p in shipped.iterdir() if p.name.endswith(".yaml")) if shipped.is_dir() else []
    raise FileNotFoundError(f"No recipe file at {name}, and no shipped recipe of that name (known: {', '.join(known) or 'none'}).")


def read_recipe(path: str | os.PathLike, known_fields: Iterable[str], command: str) -> dict[str, Any]:
    """Reads a recipe YAML and checks that every key is a field of the tool.

    Args:
        path: The recipe file.
        known_fields: The field names the tool accepts.
        command: The tool's command (e.g. ``"python -m sparse_transfer.vision"``), named in the error for an
            unknown field so the user knows where to look the fields up.

    Raises:
        FileNotFoundError: If there is no file at ``path``.
        ValueError: If the file is not valid YAML, not a mapping, or has unknown fields.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No recipe file at {path}.")
    with open(path, encoding="utf-8") as f:
        try:
            recipe = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"Recipe {path} is not valid YAML: {err}") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"Recipe {path} must be a mapping of field: value.")
    recipe.pop("description", None)
    unknown = sorted(set(recipe) - set(known_fields))
    if unknown:
        raise ValueError(f"Recipe {path} has unknown field(s) {unknown}; the fields are those of `{command} --help`.")
    return recipe
