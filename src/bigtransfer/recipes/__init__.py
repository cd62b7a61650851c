"""Training recipes as data: YAML files in this folder, each a set of overrides of the engine defaults."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from ..engine.config import DEFAULTS, merge
from ..errors import BitError, UnknownNameError

HERE = Path(__file__).parent


def list_recipes() -> dict[str, str]:
    """Recipe name -> its one-line description (the YAML file's first comment line)."""
    out = {}
    for path in sorted(HERE.glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        out[path.stem] = first.lstrip("# ").strip()
    return out


def recipe_path(name: str) -> Path:
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        path = Path(name)
        if not path.is_file():
            raise BitError(f"recipe file {name} not found; check the path or run 'bit recipes'")
        return path
    path = HERE / f"{name}.yaml"
    if not path.is_file():
        raise UnknownNameError("recipe", name, list_recipes())
    return path


def recipe_settings(name: str) -> dict:
    """Only the settings recipe ``name`` (a registered name or a YAML path) writes, each key checked."""
    path = recipe_path(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise BitError(f"recipe {path}: not valid YAML ({e}); fix the file") from None
    if not isinstance(data, dict):
        raise BitError(f"recipe {path}: expected a mapping of settings")
    return merge({}, data, f"recipe {path.name}")


def load_recipe(name: str) -> dict:
    """The engine defaults with recipe ``name`` (a registered name or a YAML path) on top."""
    return merge(DEFAULTS, recipe_settings(name), f"recipe {recipe_path(name).name}")
