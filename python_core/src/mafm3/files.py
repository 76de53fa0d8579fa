"""Files and folders written so that a failure leaves nothing half-written, and file hashes.

A shared leaf: imports nothing of the project. Every write goes to a hidden name beside its target (same file
system) and one rename puts it in place; a reader sees the old state or the new one, never a mixture.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """A hidden staging folder to fill in the `with` block; renamed to `folder` (absent, or an empty folder,
    which it replaces) when the block ends, deleted when it raises."""
    partial = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    try:
        partial.mkdir(parents=True)
        yield partial
        if folder.exists():
            folder.rmdir()  # refuses a folder that is not empty
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write `path` through `write(temporary)`, a hidden file beside it with the same ending; then rename."""
    temporary = path.with_name(f".{uuid.uuid4().hex[:12]}.{path.name}")  # new files' usual permissions
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8, newlines as given) to `path` through `atomic_write`."""
    atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8", newline=""))
