"""YAML text -> nodes, with libyaml's C parser where the vendored PyYAML has it.

Scanning and parsing are most of the cost of reading YAML; PyYAML's C parser (`CParser`, from
libyaml) does them ~10x faster than its pure-Python one. The nodes are still composed in Python
(PyYAML's `Composer` over the C parser's events), so the nesting bound `MAX_DEPTH` holds on both
paths and the nodes carry the same marks (lines). Errors always come from the pure-Python
loader: when the fast path fails, the text is read again by it, so a message and its line are
the same whichever parser PyYAML was built with.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import SafeConstructor
from yaml.nodes import Node
from yaml.reader import Reader
from yaml.resolver import Resolver

MAX_DEPTH = 50  # lists and mappings inside each other; a DAG file needs about 6


class _Bounded(Composer):
    """Composes nodes no deeper than `MAX_DEPTH`: pyyaml composes recursively, so a file of
    100,000 `[` would otherwise end in a RecursionError (in any thread, whatever its stack)."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(
                    None,
                    None,
                    f"nesting deeper than {MAX_DEPTH} levels (lists and mappings inside each "
                    "other)",
                    self.peek_event().start_mark,  # type: ignore[attr-defined]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class BoundedLoader(_Bounded, yaml.SafeLoader):
    """The pure-Python loader: the reference for every error message and line."""


_CParser: Any
try:
    from yaml._yaml import CParser as _CParser
except ImportError:  # PyYAML built without libyaml: the pure-Python loader alone
    _CParser = None
_FastLoader: Any = None
if _CParser is not None:

    class _FastBoundedLoader(_Bounded, _CParser, SafeConstructor, Resolver):  # type: ignore[misc]
        """libyaml scans and parses; the nodes are composed (and bounded) in Python."""

        def __init__(self, stream: str) -> None:
            _CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    _FastLoader = _FastBoundedLoader


def compose(text: str) -> Node | None:
    """The single document of `text` as a node tree (None for an empty document). Raises the
    pure-Python loader's `yaml.YAMLError` (`ReaderError` for a character YAML does not
    allow, `MarkedYAMLError` with the line) when the text is not valid YAML."""
    if _FastLoader is not None and not Reader.NON_PRINTABLE.search(text):
        try:
            return _compose_with(_FastLoader, text)
        except yaml.YAMLError:
            pass  # read it again below, for the reference message
    return _compose_with(BoundedLoader, text)


def _compose_with(loader_class: Any, text: str) -> Node | None:
    loader = loader_class(text)
    try:
        node: Node | None = loader.get_single_node()
        return node
    finally:
        loader.dispose()


_CSafeLoader: Any = getattr(yaml, "CSafeLoader", None)


def scalar(text: str) -> Any:
    """The value of one plain YAML scalar (`"0x1F"` -> 31, `"yes"` -> True), as `yaml.safe_load`
    gives it, through the C loader where there is one."""
    if _CSafeLoader is None:
        return yaml.safe_load(text)
    return yaml.load(text, Loader=_CSafeLoader)
