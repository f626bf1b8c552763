"""Read-only access to bundled asset folders, from a source checkout or from inside nagare.pyz.

``asset_root("web_static")`` returns a Traversable for the repository's top-level ``web_static``
folder: a ``pathlib.Path`` in a checkout, a ``zipfile.Path`` inside the archive. Use
``.joinpath()``, ``.is_file()``, ``.read_bytes()`` and ``.iterdir()`` on it; never assume a real
file-system path (use ``importlib.resources.as_file`` when one is needed).
"""

from __future__ import annotations

import functools
import zipfile
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = ["archive_path", "asset_root"]


def _checkout_or_archive() -> Path:
    """The folder that holds the ``nagare`` package, or the zip archive that does."""
    return Path(__file__).parent.parent


@functools.cache
def _is_archive(path: Path) -> bool:
    return path.is_file() and zipfile.is_zipfile(path)


@functools.cache
def _archive_root(archive: Path) -> zipfile.Path:
    """The root of ``archive``, opened once per archive and kept for the process's lifetime."""
    return zipfile.Path(archive)


def archive_path() -> Path | None:
    """The nagare.pyz this code runs from, or None when running from a source checkout."""
    parent = _checkout_or_archive()
    return parent if _is_archive(parent) else None


def asset_root(name: str) -> Traversable:
    """The top-level bundled folder ``name`` (e.g. ``"web_static"``) as a Traversable."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"asset folder must be a plain top-level name, not {name!r}")
    archive = archive_path()
    if archive is None:
        return _checkout_or_archive().resolve() / name
    return _archive_root(archive).joinpath(name + "/")
