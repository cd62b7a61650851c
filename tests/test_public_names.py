"""Every library name version 0.1 offered still imports from the same module (moved ones through an alias).

``data/public_names_0_1.json`` lists the module-level names 0.1 defined, less the command line's internals (its
contract is the ``bit`` command) and the per-module loggers. Removed on purpose, with their successors:
``models.fast.fast_conv_forward`` and ``models.resnetv2.gn_relu`` (hooks, replaced by modules swapped in by
``use_fast_path``), ``models.registry.create_model`` (``bigtransfer.create_model``; the deprecated alias is
``bigtransfer.models.create_model``) and the demo's constants of its single-task version.
"""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path

import pytest

NAMES = json.loads((Path(__file__).parent / "data" / "public_names_0_1.json").read_text())


@pytest.mark.parametrize("module", sorted(NAMES))
def test_the_names_of_0_1_still_import(module: str) -> None:
    mod = importlib.import_module(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        missing = [name for name in NAMES[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lost {missing}"


def test_the_list_is_not_empty() -> None:
    assert sum(map(len, NAMES.values())) > 300
