"""Loading and writing YAML/JSON streams while keeping everything but the injection byte-identical.

YAML: the stream is composed once (nodes with marks, for the text edits) and constructed into plain data
(for planning and validation); edits go into the original text (yamltext.py), so comments, quoting, key
order, block scalars, document separators and each file's own indentation survive. JSON: parsed and
re-dumped with the input's indentation, separators and escaping. Either way the output is re-parsed and
must equal the input data with the operations applied.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import Node

from step_tracer.inject.model import (
    AppendItems,
    InjectError,
    InsertItems,
    Location,
    Op,
    ParseError,
    PrefixScript,
    Problem,
    Replace,
    ReplaceFirstLine,
    ReplaceItems,
    SetKey,
)
from step_tracer.inject.yamltext import EditError, TextEditor, detect_style

Format = Literal["yaml", "json", "auto"]
_BOM = "\ufeff"


@dataclass
class JsonLayout:
    indent: int | str | None
    separators: tuple[str, str]
    ensure_ascii: bool
    newline: str
    trailing_newline: bool


@dataclass
class Stream:
    format: Literal["yaml", "json"]
    text: str  # without BOM
    bom: str
    docs: list[Any]
    nodes: list[Node | None] = field(default_factory=list)
    json_layout: JsonLayout | None = None


# Bounds on what a document may expand to: a YAML alias bomb ("billion laughs": ten aliases of ten aliases of ...)
# is a few hundred bytes that expand to billions of nodes, and every later walk (planning, validation, the
# check of the patched text) would spin on it. Aliases may add MAX_ALIAS_NODES nodes to a document; nesting
# (aliases expanded) may go MAX_DEPTH levels deep, far beyond any Kubernetes object and well inside Python's
# recursion limit for the recursive walks that follow.
MAX_ALIAS_NODES = 100_000
MAX_DEPTH = 200


def parse(text: str, source: str, fmt: Format = "auto") -> Stream:
    bom = _BOM if text.startswith(_BOM) else ""
    body = text[len(bom) :]
    if fmt == "json" or (fmt == "auto" and body.lstrip()[:1] in ("{", "[")):
        try:
            data = json.loads(body)
        except RecursionError:
            raise ParseError([Problem(Location(source), f"JSON nested deeper than {MAX_DEPTH} levels")]) from None
        except json.JSONDecodeError as exc:
            if fmt == "json":
                where = f"line {exc.lineno}, column {exc.colno}"
                raise ParseError([Problem(Location(source), f"invalid JSON at {where}: {exc.msg}")]) from None
        else:
            if _data_depth(data) > MAX_DEPTH:
                raise ParseError([Problem(Location(source), f"JSON nested deeper than {MAX_DEPTH} levels")])
            return Stream("json", body, bom, [data], json_layout=_json_layout(body))
    return _parse_yaml(body, bom, source)


def _data_depth(data: Any) -> int:
    """How deep plain JSON data nests, without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return deepest


def _node_children(node: Node) -> list[Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_expansion(root: Node) -> str:
    """Why the document under `root` is refused (alias bomb, recursive alias, too deep), or "".

    Sizes and depths with every alias expanded, computed once per node (aliases share their node), iteratively.
    """
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded node count, depth)
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            children = [done[id(c)] for c in _node_children(node)]
            size = 1 + sum(c[0] for c in children)
            depth = 1 + max((c[1] for c in children), default=0)
            on_path.discard(key)
            done[key] = (size, depth)
            if size - len(done) > MAX_ALIAS_NODES:
                return f"YAML aliases expand to more than {MAX_ALIAS_NODES} extra nodes (an alias bomb?); refused"
            if depth > MAX_DEPTH:
                return f"YAML nested deeper than {MAX_DEPTH} levels (aliases expanded); refused"
        elif key in done:
            continue
        elif key in on_path:
            return "a YAML alias refers to a node that contains it (a recursive structure); refused"
        else:
            on_path.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in _node_children(node) if id(c) not in done)
    return ""


# LibYAML's parser, when PyYAML was built with it: the pure-Python parsers spend ~40x longer on a Konflux-sized
# corpus, and the marks (character offsets) are the same.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Constructor(SafeConstructor):
    """Plain data from composed nodes; a duplicate key is an error (Kubernetes rejects it too)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                        )
                    seen.add(key_node.value)
        return dict(super().construct_mapping(node, deep=deep))


def _construct(node: Node) -> Any:
    return _Constructor().construct_document(node)


def _parse_yaml(body: str, bom: str, source: str) -> Stream:
    try:
        nodes: list[Node | None] = list(yaml.compose_all(body, Loader=_Loader))
        for node in nodes:
            problem = "" if node is None else check_expansion(node)
            if problem:
                raise ParseError([Problem(Location(source), problem)])
        docs = [None if n is None else _construct(n) for n in nodes]
    except yaml.YAMLError as exc:
        raise ParseError([Problem(Location(source), yaml_problem(exc))]) from None
    return Stream("yaml", body, bom, docs, nodes=nodes)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: where (line and column, 1-based) and what, without PyYAML's "<unicode string>"
    and its multi-line layout."""
    mark = getattr(exc, "problem_mark", None)
    what = "; ".join(str(p) for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p)
    if isinstance(exc, yaml.reader.ReaderError):
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        what = f"character U+{char:04X} is not allowed in YAML"
        return f"invalid YAML at character {exc.position}: {what}"
    if mark is None or not what:
        return "invalid YAML: " + " ".join(str(exc).replace('"<unicode string>", ', "").split())
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {what}"


def load_data(text: str, fmt: Literal["yaml", "json"]) -> list[Any]:
    if fmt == "json":
        return [json.loads(text)]
    return [None if n is None else _construct(n) for n in yaml.compose_all(text, Loader=_Loader)]


def _json_layout(body: str) -> JsonLayout:
    newline = "\r\n" if "\r\n" in body else "\n"
    m = re.search(r"\n([ \t]+)\S", body.strip())
    indent: int | str | None = None
    if m:
        ws = m.group(1)
        indent = len(ws) if set(ws) == {" "} else ws
    separators = (",", ": ")
    if indent is None and not re.search(r'"\s*:\s', body):
        separators = (",", ":")
    elif indent is None:
        separators = (", ", ": ")
    return JsonLayout(indent, separators, "\\u" in body, newline, body.endswith(("\n", "\r")))


def apply_to_data(doc: Any, ops: Sequence[Op]) -> None:
    """Apply operations to plain data (JSON output, and the expectation the YAML text is checked against)."""
    for op in ops:
        target = doc
        for key in op.path[:-1] if isinstance(op, Replace) else op.path:
            target = target[key]
        if isinstance(op, Replace):
            target[op.path[-1]] = copy.deepcopy(op.value)
        elif isinstance(op, ReplaceItems):
            target[op.start : op.stop] = copy.deepcopy(list(op.items))
        elif isinstance(op, ReplaceFirstLine):
            _, nl, rest = target[op.key].partition("\n")
            target[op.key] = op.line + nl + rest
        elif isinstance(op, InsertItems):
            target[op.index : op.index] = copy.deepcopy(list(op.items))
        elif isinstance(op, AppendItems):
            target.extend(copy.deepcopy(list(op.items)))
        elif isinstance(op, SetKey):
            _set_key(target, op)
        elif isinstance(op, PrefixScript):
            target[op.key] = op.prefix + target[op.key]


def _set_key(mapping: dict[str, Any], op: SetKey) -> None:
    value = copy.deepcopy(op.value)
    if op.key in mapping:
        mapping[op.key] = value
        return
    items = list(mapping.items())
    pos = len(items)
    keys = [k for k, _ in items]
    before = next((k for k in op.before if k in mapping), None)
    after = next((k for k in op.after if k in mapping), None)
    if before is not None:
        pos = keys.index(before)
    elif after is not None:
        pos = keys.index(after) + 1
    items.insert(pos, (op.key, value))
    mapping.clear()
    mapping.update(items)


def render(stream: Stream, ops_per_doc: Sequence[Sequence[Op]], source: str) -> str:
    """The patched text. Raises InjectError if the YAML edits cannot be placed."""
    if stream.format == "json":
        assert stream.json_layout is not None
        data = copy.deepcopy(stream.docs[0])
        apply_to_data(data, ops_per_doc[0])
        layout = stream.json_layout
        out = json.dumps(data, indent=layout.indent, separators=layout.separators, ensure_ascii=layout.ensure_ascii)
        if layout.newline != "\n":
            out = out.replace("\n", layout.newline)
        return stream.bom + out + (layout.newline if layout.trailing_newline else "")
    editor = TextEditor(stream.text, detect_style(stream.nodes, stream.text))
    for root, ops in zip(stream.nodes, ops_per_doc, strict=True):
        for op in ops:
            if root is None:
                raise InjectError([Problem(Location(source), "internal error: edit in an empty document")])
            try:
                editor.apply(root, op)
            except EditError as exc:
                where = ".".join(str(k) for k in op.path)
                raise InjectError([Problem(Location(source), f"cannot edit {where}: {exc}")]) from None
    last_root = stream.nodes[-1] if stream.nodes else None
    if last_root is not None:
        editor.close_last_scalar(last_root)
    try:
        return stream.bom + editor.result()
    except EditError as exc:
        raise InjectError([Problem(Location(source), f"internal error: {exc}")]) from None
