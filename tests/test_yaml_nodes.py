"""The two ways a DAG file's YAML is read (libyaml's C parser, the pure-Python one) give the same
nodes, marks and error lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from nagare.dagfile import parse_dag, yaml_nodes
from nagare.dagfile.yaml_nodes import MAX_DEPTH, BoundedLoader

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    yaml_nodes._FastLoader is None, reason="PyYAML without libyaml: one path only"
)

BAD_FILES = {
    "unclosed flow sequence": "id: a\ntasks:\n  - id: t\n    command: [echo, hi\n",
    "unclosed quote": 'id: a\ntasks:\n  - id: t\n    command: "echo\n\n\n',
    "bad indentation": "id: a\ntasks:\n  - id: t\n   command: x\n  bad\n",
    "tab": "id: a\ntasks:\n\t- id: t\n",
    "unquoted star": "id: a\nschedule: */5 * * * *\ntasks: []\n",
    "duplicate anchor use": "id: a\ntasks: *nothing\n",
    "two documents": "id: a\n---\nid: b\n",
    "control character": "id: a\ntasks:\n  - id: t\x07\n",
    "too deep": "id: a\nx: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n",
    "mapping in a plain scalar": "id: a\ntasks:\n  - id: t: u\n",
    "non-ASCII before the error": "id: a\n# ñ\ntasks:\n  - id: t\n    command: [ä, \n",
}

INVALID_DAGS = {  # valid YAML, invalid DAGs: the errors name lines of the composed nodes
    "byte order mark": "\ufeffid: a\ntasks:\n  - id: t\n    command: echo é\n    retries: x\n",
    "non-ASCII values": 'id: a\ntasks:\n  - id: t\n    command: "日本語"\n    timeout: 5\n',
}


def _shape(node: Node | None, out: list[Any]) -> list[Any]:
    """Every node's tag, value (scalars) and start/end line and column, depth first."""
    if node is None:
        return out
    start, end = node.start_mark, node.end_mark
    out.append((node.tag, start.line, start.column, end.line, end.column))
    if isinstance(node, MappingNode):
        for key, value in node.value:
            _shape(key, out)
            _shape(value, out)
    elif isinstance(node, SequenceNode):
        for item in node.value:
            _shape(item, out)
    else:
        out.append(node.value)
    return out


def _python_compose(text: str) -> Node | None:
    loader = BoundedLoader(text)
    try:
        node: Node | None = loader.get_single_node()
        return node
    finally:
        loader.dispose()


def _fast_compose(text: str) -> Node | None:
    loader = yaml_nodes._FastLoader(text)
    try:
        node: Node | None = loader.get_single_node()
        return node
    finally:
        loader.dispose()


@pytest.mark.parametrize("path", sorted((ROOT / "dags").glob("*.yaml")), ids=lambda p: p.name)
def test_both_parsers_give_the_same_nodes_and_marks(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert _shape(_fast_compose(text), []) == _shape(_python_compose(text), [])
    assert _shape(yaml_nodes.compose(text), []) == _shape(_python_compose(text), [])


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_an_error_has_the_same_line_and_message_as_the_python_parser(name: str) -> None:
    text = BAD_FILES[name]
    with pytest.raises(yaml.YAMLError) as reference:
        _python_compose(text)
    with pytest.raises(yaml.YAMLError) as got:
        yaml_nodes.compose(text)
    assert type(got.value) is type(reference.value)
    assert str(got.value) == str(reference.value)
    mark = getattr(reference.value, "problem_mark", None)
    if mark is not None:
        assert got.value.problem_mark.line == mark.line  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(BAD_FILES) + sorted(INVALID_DAGS))
def test_a_dag_files_error_lines_match_the_python_parser(name: str) -> None:
    text = BAD_FILES.get(name) or INVALID_DAGS[name]
    fast = parse_dag(text, "f.yaml")
    yaml_nodes_fast = yaml_nodes._FastLoader
    try:
        yaml_nodes._FastLoader = None  # the pure-Python path alone
        slow = parse_dag(text, "f.yaml")
    finally:
        yaml_nodes._FastLoader = yaml_nodes_fast
    assert [(e.line, e.message) for e in fast[1]] == [(e.line, e.message) for e in slow[1]]
    assert fast[1], "each of these files is invalid"


def test_the_c_parser_fails_where_the_python_one_does_so_the_message_is_the_reference() -> None:
    """The fast path only decides that the text is fine; its own errors are never shown."""
    text = BAD_FILES["unclosed flow sequence"]
    with pytest.raises(yaml.YAMLError) as fast:
        _fast_compose(text)
    with pytest.raises(yaml.YAMLError) as shown:
        yaml_nodes.compose(text)
    assert "^" in str(shown.value)  # the Python parser's snippet, which libyaml's marks lack
    assert "^" not in str(fast.value)


def test_scalars_load_as_safe_load_does() -> None:
    for text in ("0x1F", "0o17", "1_000", "yes", "off", "1.5e3", ".inf", "~", "2001-12-14"):
        assert yaml_nodes.scalar(text) == yaml.safe_load(text), text


def test_file_with_validation_errors_names_the_same_lines_on_both_paths() -> None:
    text = "id: a\ntasks:\n  - id: t\n    command: x\n    retries: lots\n  - id: t\n"
    fast = parse_dag(text, "f.yaml")[1]
    saved = yaml_nodes._FastLoader
    try:
        yaml_nodes._FastLoader = None
        slow = parse_dag(text, "f.yaml")[1]
    finally:
        yaml_nodes._FastLoader = saved
    assert [str(e) for e in fast] == [str(e) for e in slow]
    assert {e.line for e in fast} >= {5}
