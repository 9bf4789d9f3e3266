"""The package's layers import only downwards: the import-linter contract in pyproject.toml holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: folders of the package that hold no code to layer
NOT_LAYERED = {"data"}


def test_layers_contract_is_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.is_file(), "import-linter is not installed: pip install -e '.[dev]'"
    result = subprocess.run([str(lint_imports), "--no-logo"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_part_of_the_package_is_in_a_layer() -> None:
    from importlinter import api

    layers = {
        name.strip()
        for contract in api.read_configuration(str(ROOT / "pyproject.toml"))["contracts_options"]
        if contract["type"] == "layers"
        for layer in contract["layers"]
        for name in layer.replace(":", "|").split("|")
    }
    package = ROOT / "moetrace"
    parts = {f"moetrace.{p.stem}" for p in package.iterdir() if p.suffix == ".py" and p.stem != "__init__"}
    parts |= {f"moetrace.{p.name}" for p in package.iterdir() if (p / "__init__.py").is_file()}
    missing = parts - layers - {f"moetrace.{name}" for name in NOT_LAYERED}
    assert not missing, f"not in the layers contract of pyproject.toml: {sorted(missing)}"
