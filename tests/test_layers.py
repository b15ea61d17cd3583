"""Imports flow one way: core ← data, calibrate, scoring, backends ← train, evaluate, serve ← cli.

``scoring`` (the shared scorer) sits at the backends' level, under the transformers backend."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).parents[1] / "guardcal"

# package → guardcal subpackages/modules it must not import
COMMANDS = {"train", "evaluate", "calibration_run", "serve", "cli"}
FORBIDDEN = {
    "core": {"data", "calibrate", "scoring", "backends", "models"} | COMMANDS,
    "data": {"calibrate", "scoring", "backends", "models"} | COMMANDS,
    "calibrate": {"data", "scoring", "backends", "models"} | COMMANDS,
    "scoring": {"data", "calibrate", "backends", "models"} | COMMANDS,
    "models": {"scoring", "backends"} | COMMANDS,
    "backends": COMMANDS,
    "train": {"serve", "cli", "evaluate", "calibration_run"},
    "serve": {"train", "evaluate", "calibration_run", "cli"},
}
# third-party modules a layer must not import (calibrate stays light: no torch at all)
FORBIDDEN_THIRD_PARTY = {
    "core": {"torch", "transformers"},
    "calibrate": {"torch", "transformers", "fastapi"},
    "scoring": {"fastapi", "vllm"},
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(k for k in FORBIDDEN if (PKG / k).is_dir()))
def test_layer_imports_only_downward(layer):
    folder = PKG / layer
    bad = []
    for path in folder.rglob("*.py"):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "guardcal" and len(parts) > 1 and parts[1] in FORBIDDEN[layer]:
                bad.append(f"{path.relative_to(PKG)} imports {name}")
            if parts[0] in FORBIDDEN_THIRD_PARTY.get(layer, set()):
                bad.append(f"{path.relative_to(PKG)} imports {name}")
    assert not bad, bad
