"""MAFM3: modular adaptation of a frozen CT foundation model (CT-CLIP's CT-ViT) with clinical skills."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mafm3")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
