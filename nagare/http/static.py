"""The embedded web UI: files of `web_static/`, read from the source tree or from nagare.pyz.
Paths cannot leave the folder (`..`, encoded variants, absolute paths, symlinks out)."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Callable
from importlib.resources.abc import Traversable
from pathlib import Path
from urllib.parse import unquote

from nagare.errors import NotFound
from nagare.http.server import Request, Response

INDEX = "index.html"


class StaticFiles:
    """`root` is the folder, or a function that finds it: then it is looked up on the first
    request (inside nagare.pyz that reads the archive's directory, ~1 MB and ~20 ms that a
    server whose dashboard nobody opens, or `nagare exec`, does not spend)."""

    def __init__(self, root: Traversable | Callable[[], Traversable]) -> None:
        self._find_root = root if callable(root) else None
        self._root = None if callable(root) else root
        self._cache: dict[str, tuple[bytes, str]] = {}

    @property
    def root(self) -> Traversable:
        if self._root is None:
            assert self._find_root is not None
            try:
                found = self._find_root()
                bundled = found.is_dir()
            except (OSError, ValueError):
                bundled = False
            if not bundled:
                raise NotFound("the web UI is not bundled")
            self._root = found
        return self._root

    def serve(self, request: Request) -> Response:
        name = _safe_name(request.path)
        found = self._load(name) if name else None
        if found is None and "." not in name.rsplit("/", 1)[-1]:
            found = self._load(INDEX)  # client-side routes get the app shell
        if found is None:
            raise NotFound(f"no file {request.path}")
        body, content_type = found
        cache = (
            "no-cache"
            if name in ("", INDEX) or found[1].startswith("text/html")
            else ("public, max-age=300")
        )
        return Response(200, body, content_type, {"Cache-Control": cache})

    def _load(self, name: str) -> tuple[bytes, str] | None:
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        node = self.root
        for part in name.split("/"):
            node = node.joinpath(part)
        if not node.is_file() or not self._inside(node):
            return None
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type in (
            "application/javascript",
            "application/json",
        ):
            content_type += "; charset=utf-8"
        result = (node.read_bytes(), content_type)
        self._cache[name] = result
        return result

    def _inside(self, node: Traversable) -> bool:
        if not isinstance(node, Path) or not isinstance(self.root, Path):
            return True  # inside a zip there are no symlinks
        return os.path.realpath(node).startswith(os.path.realpath(self.root) + os.sep)


def _safe_name(path: str) -> str:
    decoded = unquote(unquote(path))
    parts = [p for p in decoded.replace("\\", "/").split("/") if p]
    if any(p in ("..", ".") or p.startswith(".") or "\x00" in p for p in parts):
        raise NotFound(f"no file {path}")
    return "/".join(parts) or INDEX
