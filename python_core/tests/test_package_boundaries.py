"""The README's layout rules, read from the source: imports point one way, and only `imaging/` does image I/O.

Every `import` counts, including those inside functions (a lazy import is still a dependency). A unit is a
sub-package or top-level module of `mafm3`; it may import the shared leaves and units of lower layers only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mafm3

SOURCE = Path(mafm3.__file__).resolve().parent

SHARED_LEAVES = ("__init__", "errors", "config", "tasks", "files", "results", "progress", "clinical")
LAYERS = (  # lowest first; the README's "Layout" states the same order
    ("imaging", "model"),
    ("skills", "outputs"),
    ("engine", "demo"),
    ("training",),
    ("cohort", "bench", "environment"),
    ("commands", "worker"),
    ("cli", "train", "improve"),
    ("__main__",),
)
IMAGE_IO = ("ReadImage", "WriteImage", "ImageFileReader", "ImageFileWriter", "ImageSeriesReader")


def unit_of(path: Path) -> str:
    return path.relative_to(SOURCE).parts[0].removesuffix(".py")


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, unit) of every `mafm3` unit that `path` imports, at any depth of the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [
                f"{node.module}.{alias.name}" if node.module == "mafm3" else node.module
                for alias in node.names
            ]
        elif isinstance(node, ast.ImportFrom):
            names = ["mafm3.(relative import)"]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "mafm3":
                unit = parts[1] if len(parts) > 1 else "__init__"
                is_unit = (SOURCE / unit).is_dir() or (SOURCE / f"{unit}.py").is_file()
                found.append((node.lineno, unit if is_unit else "__init__"))
    return found


def allowed_imports(unit: str) -> set[str]:
    if unit in SHARED_LEAVES:
        return set(SHARED_LEAVES)
    layer = next(index for index, units in enumerate(LAYERS) if unit in units)
    return {unit, *SHARED_LEAVES, *(lower for units in LAYERS[:layer] for lower in units)}


def test_every_unit_of_the_package_has_a_place_in_the_layers():
    units = {
        unit_of(path) for path in SOURCE.iterdir() if path.suffix == ".py" or (path / "__init__.py").exists()
    }
    placed = set(SHARED_LEAVES) | {unit for units in LAYERS for unit in units}
    assert units == placed


def test_imports_point_one_way():
    wrong = [
        f"{path.relative_to(SOURCE)}:{line} imports mafm3.{imported}"
        for path in sorted(SOURCE.rglob("*.py"))
        for line, imported in project_imports(path)
        if imported not in allowed_imports(unit_of(path))
    ]
    assert wrong == []


@pytest.mark.parametrize(
    ("source", "unit", "expected"),
    [
        ("from mafm3.skills.presets import PRESETS", "model", False),  # what model/skill_model.py once did
        ("def load():\n    import mafm3.engine.runner", "imaging", False),  # a lazy import counts too
        ("from mafm3 import __version__, tasks", "model", True),
        ("from mafm3.model.ctvit import CTViT", "skills", True),
        ("from mafm3.cli import main", "commands", False),
    ],
)
def test_the_rule_sees_the_imports_it_must_refuse(tmp_path, source, unit, expected):
    (tmp_path / "example.py").write_text(source)  # as if it were a module of `unit`
    imports = [imported for _, imported in project_imports(tmp_path / "example.py")]
    assert imports and all(imported in allowed_imports(unit) for imported in imports) == expected


def test_only_imaging_reads_and_writes_images_with_simpleitk():
    calls = [
        f"{path.relative_to(SOURCE)}:{node.lineno} sitk.{node.attr}"
        for path in sorted(SOURCE.rglob("*.py"))
        if unit_of(path) != "imaging"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in IMAGE_IO
    ]
    assert calls == []
