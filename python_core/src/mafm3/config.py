"""Where mafm3 keeps its state on disk: `MAFM3_HOME` (default `~/.mafm3`)."""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    """The mafm3 home folder: `$MAFM3_HOME`, else `~/.mafm3`. Not created here."""
    configured = os.environ.get("MAFM3_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".mafm3"


def skills_dir() -> Path:
    """Installed skill packs, one folder each: `<home>/skills/<id>-<version>/`."""
    return home_dir() / "skills"


def backbones_dir() -> Path:
    """Imported backbones, one folder each: `<home>/backbones/<id>/`."""
    return home_dir() / "backbones"


BUNDLED_DIR = Path(__file__).parent / "demo" / "assets"


def bundled_backbones_dir() -> Path:
    """Backbones shipped inside the package (the demo backbone), searched after `backbones_dir()`."""
    return BUNDLED_DIR / "backbones"


def bundled_skills_dir() -> Path:
    """Skill packs shipped inside the package (the demo skills), searched after `skills_dir()`."""
    return BUNDLED_DIR / "skills"
