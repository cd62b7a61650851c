"""Imports point down the layers only.

errors, hyperrule, data < models < weights < hub (build + load pretrained) < engine, export, demo, recipes, hubconf
< cli. Every import statement counts, at module level or inside a function, relative or absolute.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "bigtransfer"
LAYERS = {"errors": 0, "hyperrule": 0, "data": 0, "models": 1, "weights": 2, "hub": 3,
          "engine": 4, "export": 4, "demo": 4, "recipes": 4, "hubconf": 4, "cli": 5}
LAYER_NAMES = ["errors/hyperrule/data", "models", "weights", "hub", "engine", "cli"]
# names the package root hands out lazily, by the part that defines them; the root module itself only imports errors
ROOT_NAMES = {"create_model": "hub", "ModelConfig": "models", "ResNetV2": "models", "get_config": "models",
              "list_models": "models"}
# the one upward import allowed: bigtransfer.models.create_model, a deprecated alias of bigtransfer.hub.create_model
ALLOWED = {("bigtransfer/models/__init__.py", "bigtransfer.hub")}


def module_files() -> list[tuple[Path, str]]:
    """Every module of the package (and the repository's hubconf.py) with its dotted name."""
    found = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        found.append((path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)))
    return [*found, (ROOT / "hubconf.py", "hubconf")]


def imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """``(line, absolute dotted name)`` of every import in ``tree``; ``from x import y`` may name module ``x.y``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            yield from ((node.lineno, f"{target}.{alias.name}") for alias in node.names)


def layer_of(name: str) -> int | None:
    """The layer of a dotted name in the package (None outside it); the root's lazy names by their origin."""
    parts = name.split(".")
    if parts[0] == "hubconf" and len(parts) == 1:
        return LAYERS["hubconf"]
    if parts[0] != PACKAGE:
        return None
    top = parts[1] if len(parts) > 1 else ""
    if top in LAYERS:
        return LAYERS[top]
    return LAYERS[ROOT_NAMES[top]] if top in ROOT_NAMES else 0


def upward_imports(source: str, module: str, filename: str, is_package: bool = False) -> list[str]:
    """``file:line: from -> to`` for each import in ``source`` that points up a layer (ALLOWED aside)."""
    here = layer_of(module)
    found = []
    for line, target in imports(ast.parse(source, filename), module, is_package):
        there = layer_of(target)
        if here is None or there is None or there <= here:
            continue
        if any(filename == file and (target == allowed or target.startswith(allowed + "."))
               for file, allowed in ALLOWED):
            continue
        found.append(f"{filename}:{line}: {module} ({LAYER_NAMES[here]}) -> {target} ({LAYER_NAMES[there]})")
    return found


def _label(path: Path) -> str:
    return str(path.relative_to(SRC if path.is_relative_to(SRC) else ROOT))


def test_every_module_has_a_layer():
    unplaced = [_label(path) for path, module in module_files()
                if module != PACKAGE and module.removeprefix(PACKAGE + ".").split(".")[0] not in LAYERS]
    assert unplaced == [], "modules outside every layer; add them to LAYERS in tests/test_layers.py"


def test_imports_point_down_only():
    problems = [p for path, module in module_files()
                for p in upward_imports(path.read_text(encoding="utf-8"), module, _label(path),
                                        path.name == "__init__.py")]
    assert problems == [], "imports that point up a layer:\n" + "\n".join(problems)


def test_an_upward_import_is_reported_with_file_line_and_arrow():
    source = ("import torch\n"
              "from ..errors import BitError\n\n\n"
              "def f():\n"
              "    from ..cli.main import main\n"
              "    import bigtransfer.engine.trainer\n"
              "    from bigtransfer import create_model\n"
              "    from .. import weights\n")
    found = upward_imports(source, "bigtransfer.models.fake", "bigtransfer/models/fake.py")
    assert found == [
        "bigtransfer/models/fake.py:6: bigtransfer.models.fake (models) -> bigtransfer.cli.main.main (cli)",
        "bigtransfer/models/fake.py:7: bigtransfer.models.fake (models) -> bigtransfer.engine.trainer (engine)",
        "bigtransfer/models/fake.py:8: bigtransfer.models.fake (models) -> bigtransfer.create_model (hub)",
        "bigtransfer/models/fake.py:9: bigtransfer.models.fake (models) -> bigtransfer.weights (weights)",
    ]
    assert upward_imports("from ..weights import load_npz\n", "bigtransfer.hub", "bigtransfer/hub.py") == []


def test_the_alias_exception_holds_for_its_own_file_only():
    source = "def __getattr__(name):\n    from ..hub import create_model\n"
    assert upward_imports(source, "bigtransfer.models", "bigtransfer/models/__init__.py", is_package=True) == []
    assert upward_imports(source, "bigtransfer.models", "bigtransfer/models/other.py", is_package=True) == [
        "bigtransfer/models/other.py:2: bigtransfer.models (models) -> bigtransfer.hub.create_model (hub)"]


def deprecated_alias_uses() -> list[str]:
    """``file:line`` of each import of ``create_model`` from ``bigtransfer.models`` (import it from the hub)."""
    found = []
    for path, module in module_files():
        for line, target in imports(ast.parse(path.read_text(encoding="utf-8")), module, path.name == "__init__.py"):
            if target == "bigtransfer.models.create_model":
                found.append(f"{_label(path)}:{line}")
    return found


def test_nothing_imports_the_deprecated_models_create_model():
    uses = deprecated_alias_uses()
    assert uses == [], ("import create_model from bigtransfer.hub (relative: ..hub), not from models, at:\n"
                        + "\n".join(uses))


def test_the_deprecated_alias_is_the_front_door_and_warns():
    import bigtransfer
    import bigtransfer.models
    from bigtransfer.hub import create_model

    with pytest.warns(DeprecationWarning, match="bigtransfer.models.create_model is deprecated"):
        assert bigtransfer.models.create_model is create_model
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bigtransfer.create_model is create_model
