"""Recipe YAML files shared by the command-line tools (glue, upstream, vision).

A recipe is a mapping of a tool's field names to values (a ``description:`` key is allowed and ignored); it
fills the same dataclasses as the command-line flags, which override it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import yaml


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
