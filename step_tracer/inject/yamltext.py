"""Surgical edits of YAML text, located with the composed node tree (PyYAML/LibYAML marks).

Re-dumping a round-tripped document re-wraps long plain scalars and normalises mixed indentation, so a
reviewer's diff would show far more than the injection. Instead, each operation becomes an insertion (or,
rarely, a replacement) at a position computed from the nodes' marks; every other byte is kept. New blocks
follow the local layout where there is one (the items of the list they join) and the file's prevailing
indentation otherwise. documents.py re-parses the result and compares it with the expected data, so a
layout this module gets wrong fails loudly instead of producing a different document.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from step_tracer.inject.model import (
    AppendItems,
    InsertItems,
    Op,
    Path,
    PrefixScript,
    Replace,
    ReplaceFirstLine,
    ReplaceItems,
    SetKey,
)

_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"
_RESOLVER_1_1 = Resolver()
# YAML 1.2 core schema scalars that are not strings (https://yaml.org/spec/1.2.2/#1032-tag-resolution); together
# with 1.1's list this covers what any Kubernetes YAML reader may take for a non-string.
_CORE_1_2 = re.compile(
    r"null|Null|NULL|~|true|True|TRUE|false|False|FALSE"
    r"|[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+"
    r"|[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?"
    r"|[-+]?(\.inf|\.Inf|\.INF)|\.nan|\.NaN|\.NAN"
)
_PLAIN_CHARS = re.compile(r"[A-Za-z0-9_./$()=+@:~-]+")
_BLOCK_HEADER = re.compile(r"[|>]([1-9]?)[+-]?([1-9]?)")


class EditError(Exception):
    """The text cannot be edited at this place (unusual layout, aliases, merge keys)."""


@dataclass(frozen=True)
class Style:
    map_indent: int = 2
    seq_indent: int = 4  # item content column, relative to the owning key's column
    seq_offset: int = 2  # dash column, relative to the owning key's column
    nl: str = "\n"


def tag_of(node: Node) -> str:
    tag = node.tag
    return str(getattr(tag, "value", tag))


def _walk(node: Node, seen: set[int]) -> Iterator[Node]:
    if id(node) in seen:
        return
    seen.add(id(node))
    yield node
    if isinstance(node, MappingNode):
        for k, v in node.value:
            yield from _walk(k, seen)
            yield from _walk(v, seen)
    elif isinstance(node, SequenceNode):
        for v in node.value:
            yield from _walk(v, seen)


def detect_style(roots: Sequence[Node | None], text: str) -> Style:
    """The file's prevailing indentation: mapping indent, and where dashes and item content sit."""
    maps: Counter[int] = Counter()
    seqs: Counter[tuple[int, int]] = Counter()
    seen: set[int] = set()
    for root in roots:
        if root is None:
            continue
        for node in _walk(root, seen):
            if not isinstance(node, MappingNode) or node.flow_style:
                continue
            for k, v in node.value:
                kcol, kline = k.start_mark.column, k.start_mark.line
                if isinstance(v, MappingNode) and not v.flow_style and v.value and v.start_mark.line > kline:
                    maps[v.start_mark.column - kcol] += 1
                elif isinstance(v, SequenceNode) and not v.flow_style and v.value:
                    first = v.value[0]
                    if first.start_mark.line == v.start_mark.line:
                        seqs[(first.start_mark.column - kcol, v.start_mark.column - kcol)] += 1
    nl = "\r\n" if "\r\n" in text else "\n"
    map_indent = maps.most_common(1)[0][0] if maps else 2
    seq_indent, seq_offset = seqs.most_common(1)[0][0] if seqs else (map_indent + 2, map_indent)
    return Style(map_indent, seq_indent, seq_offset, nl)


def double_quoted(s: str) -> str:
    out = []
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20 or 0x7F <= o <= 0x9F or o in (0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF) or 0xD800 <= o <= 0xDFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _plain_ok(s: str, flow: bool) -> bool:
    if not _PLAIN_CHARS.fullmatch(s) or s[0] == "@" or s[-1] == ":":
        return False
    if s[0] in "-:" and len(s) == 1:
        return False
    if flow and ":" in s:
        return False
    # Quote what YAML 1.1 (Go's yaml.v2, used by kubectl) or 1.2 would read as a number, bool, null...
    tag = _RESOLVER_1_1.resolve(ScalarNode, s, (True, False))  # type: ignore[no-untyped-call]
    return tag == _STR_TAG and not _CORE_1_2.fullmatch(s)


def scalar(value: Any, *, flow: bool = False, quote: str | None = None) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if not isinstance(value, str):
        raise TypeError(f"cannot render {type(value).__name__}")
    if quote == "'" and all(c.isprintable() for c in value):
        return "'" + value.replace("'", "''") + "'"
    if quote is None and _plain_ok(value, flow):
        return value
    if quote is None and '"' in value and "'" not in value and value.isprintable():
        return "'" + value + "'"  # JSON in a value reads better without backslashes
    return double_quoted(value)


def literal_block(value: str, indent: int) -> list[str] | None:
    """`value` as a literal block scalar: its header (`|`, `|-` or `|+`) then its lines at `indent`, or None when
    a literal block cannot hold it (control characters, a leading blank, nothing but line breaks)."""
    body = value.rstrip("\n")
    if not body or body[0] in " \t\n" or any(not (c.isprintable() or c in "\t\n") for c in value):
        return None
    trailing = len(value) - len(body)
    header = "|-" if trailing == 0 else "|" if trailing == 1 else "|+"
    lines = [" " * indent + line if line else "" for line in body.split("\n")]
    return [header, *lines, *[""] * max(0, trailing - 1)]


def flow(value: Any, quote: str | None = None) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{scalar(k, flow=True)}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(flow(v, quote) for v in value) + "]"
    return scalar(value, flow=True, quote=quote)


def _inline(value: Any) -> bool:
    return not isinstance(value, dict | list | tuple) or not value


class TextEditor:
    """Collects edits against one text and applies them at the end, so marks stay valid meanwhile."""

    def __init__(self, text: str, style: Style) -> None:
        self.text = text
        self.style = style
        # (start, end, order, sequence, replacement); see insert() for `order`.
        self._edits: list[tuple[int, int, int, int, str]] = []
        self._at_open_end = False
        # Empty flow collections (`volumes: []`, `spec: {}`) being filled, by node: written once, in block style.
        self._fill: dict[int, tuple[Node, str | int, Any]] = {}

    # -- rendering ---------------------------------------------------------------------------------

    def key_lines(self, key: str, value: Any, col: int) -> list[str]:
        head = " " * col + scalar(key) + ":"
        if isinstance(value, dict | list | tuple) and not value:
            return [head + " " + flow(value)]
        if _inline(value):
            return [head + " " + scalar(value)]
        return [head, *self.block_lines(value, col)]

    def block_lines(self, value: Any, col: int) -> list[str]:
        """`value` laid out in block style under a key at column `col`."""
        if isinstance(value, dict):
            return [line for k, v in value.items() for line in self.key_lines(k, v, col + self.style.map_indent)]
        dash, content = col + self.style.seq_offset, col + self.style.seq_indent
        return [line for item in value for line in self.item_lines(item, dash, content)]

    def item_lines(self, item: Any, dash: int, content: int, quote: str | None = None) -> list[str]:
        prefix = " " * dash + "-" + " " * (content - dash - 1)
        if _inline(item):
            return [prefix + (scalar(item, quote=quote) if not isinstance(item, dict | list) else flow(item))]
        if isinstance(item, dict):
            lines = [line for k, v in item.items() for line in self.key_lines(k, v, content)]
            return [prefix + lines[0][content:], *lines[1:]]
        return [prefix + flow(item)]

    # -- positions ---------------------------------------------------------------------------------

    def line_start(self, i: int) -> int:
        return self.text.rfind("\n", 0, i) + 1

    def line_after(self, i: int) -> int:
        if i > 0 and self.text[i - 1] == "\n":
            return i
        j = self.text.find("\n", i)
        return len(self.text) if j < 0 else j + 1

    def content_end(self, node: Node) -> int:
        """End of the node's last character of content (before trailing comments on later lines)."""
        if isinstance(node, MappingNode) and not node.flow_style and node.value:
            return self.content_end(node.value[-1][1])
        if isinstance(node, SequenceNode) and not node.flow_style and node.value:
            return self.content_end(node.value[-1])
        return int(node.end_mark.index)

    def _clean_line_start(self, node: Node) -> int | None:
        """Start of the node's line when only spaces precede it there, else None."""
        i = node.start_mark.index
        start = self.line_start(i)
        return start if self.text[start:i].strip(" ") == "" else None

    def _lines(self, lines: list[str]) -> str:
        return "".join(line + self.style.nl for line in lines)

    def insert(self, pos: int, text: str, *, trailing: bool = False, col: int = 0) -> None:
        """Insert at `pos`. Several insertions can share a position (the end of one block is where the
        next key starts): `trailing` ones continue what precedes `pos` and come first, the innermost
        (largest `col`) first; the others lead into what follows, in the order they were made."""
        if pos == len(self.text) and self.text and not self.text.endswith("\n"):
            text = self.style.nl + text
            self._at_open_end = True
        self._add(pos, pos, -1 - col if trailing else 0, text)

    def close_last_scalar(self, root: Node) -> None:
        """After appending to a text without a final newline, keep its last block scalar's value.

        A clipped `|` or `>` scalar that ends the file has no final line break; once lines follow it, it
        would gain one. Strip chomping (`|-`) restores the original value.
        """
        if not self._at_open_end:
            return
        last = root
        while True:
            if isinstance(last, MappingNode) and not last.flow_style and last.value:
                last = last.value[-1][1]
            elif isinstance(last, SequenceNode) and not last.flow_style and last.value:
                last = last.value[-1]
            else:
                break
        if isinstance(last, ScalarNode) and last.style in ("|", ">") and not last.value.endswith("\n"):
            header = _BLOCK_HEADER.match(self.text, last.start_mark.index)
            if header is not None and not any(c in "+-" for c in header.group(0)):
                self.insert(last.start_mark.index + 1, "-")

    def replace(self, start: int, end: int, text: str) -> None:
        self._add(start, end, 0, text)

    def _add(self, start: int, end: int, order: int, text: str) -> None:
        self._edits.append((start, end, order, len(self._edits), text))

    def result(self) -> str:
        for parent, last, value in self._fill.values():
            self._replace(parent, last, value)
        self._fill.clear()
        out, prev = [], 0
        for start, end, _, _, text in sorted(self._edits):
            if start < prev:
                raise EditError("overlapping edits")
            out += [self.text[prev:start], text]
            prev = end
        out.append(self.text[prev:])
        return "".join(out)

    # -- operations --------------------------------------------------------------------------------

    def apply(self, root: Node, op: Op) -> None:
        if isinstance(op, Replace):
            self._replace(resolve(root, op.path[:-1]), op.path[-1], op.value)
            return
        node = resolve(root, op.path)
        empty_flow = isinstance(node, MappingNode | SequenceNode) and node.flow_style and not node.value
        if empty_flow and op.path and isinstance(op, AppendItems | SetKey):
            parent = resolve(root, op.path[:-1])
            if isinstance(parent, MappingNode | SequenceNode) and not parent.flow_style:
                # `volumes: []` or `stepTemplate: {}` in a block mapping: write what we add in block style too,
                # all of it at once (several edits may fill the same `spec: {}`).
                empty: Any = [] if isinstance(op, AppendItems) else {}
                value = self._fill.setdefault(id(node), (parent, op.path[-1], empty))[2]
                if isinstance(op, AppendItems):
                    value.extend(op.items)
                else:
                    value[op.key] = op.value
                return
        if isinstance(op, ReplaceItems):
            self._replace_items(_expect(node, SequenceNode, op.path), op)
        elif isinstance(op, ReplaceFirstLine):
            self._replace_first_line(_expect(node, MappingNode, op.path), op)
        elif isinstance(op, InsertItems):
            self._insert_items(_expect(node, SequenceNode, op.path), op)
        elif isinstance(op, AppendItems):
            self._append_items(_expect(node, SequenceNode, op.path), op.items)
        elif isinstance(op, SetKey):
            self._set_key(_expect(node, MappingNode, op.path), op)
        else:
            self._prefix_script(_expect(node, MappingNode, op.path), op)

    def _insert_items(self, seq: SequenceNode, op: InsertItems) -> None:
        if op.index != 0:
            raise EditError("only insertion at the front is supported")
        first = seq.value[0] if seq.value else None
        quote = first.style if isinstance(first, ScalarNode) and first.style in ('"', "'") else None
        if seq.flow_style:
            pos = seq.start_mark.index + 1
            if self.text[pos - 1] != "[":
                raise EditError("flow sequence does not start with [")
            items = ", ".join(flow(v, quote) for v in op.items)
            self.insert(pos, items + (", " if seq.value else ""))
            return
        pos = self._clean_line_start(seq)
        if pos is None or first is None:
            raise EditError("block sequence shares its first line with other content")
        dash, content = self._item_columns(seq)
        self.insert(pos, self._lines([ln for v in op.items for ln in self.item_lines(v, dash, content, quote)]))

    def _item_columns(self, seq: SequenceNode) -> tuple[int, int]:
        dash = seq.start_mark.column
        first = seq.value[0]
        if first.start_mark.line == seq.start_mark.line:
            return dash, first.start_mark.column
        return dash, dash + self.style.seq_indent - self.style.seq_offset

    def _append_items(self, seq: SequenceNode, items: tuple[Any, ...]) -> None:
        if seq.flow_style or not seq.value:
            self._flow_append(seq, "]", ", ".join(flow(v) for v in items))
            return
        dash, content = self._item_columns(seq)
        pos = self.line_after(self.content_end(seq.value[-1]))
        lines = [ln for v in items for ln in self.item_lines(v, dash, content)]
        self.insert(pos, self._lines(lines), trailing=True, col=dash)

    def _flow_append(self, node: Node, closer: str, items: str) -> None:
        pos = node.end_mark.index - 1
        if self.text[pos] != closer:
            raise EditError(f"flow collection does not end with {closer}")
        back = pos - 1
        while back >= 0 and self.text[back].isspace():
            back -= 1
        lead = "" if self.text[back] in "[{" else (" " if self.text[back] == "," else ", ")
        self.insert(back + 1, lead + items, trailing=True, col=node.start_mark.column + 1)

    def _set_key(self, mapping: MappingNode, op: SetKey) -> None:
        existing = pair(mapping, op.key)
        if existing is not None:
            self._replace_null(mapping, existing, op)
            return
        if mapping.flow_style or not mapping.value:
            self._flow_append(mapping, "}", f"{scalar(op.key, flow=True)}: {flow(op.value)}")
            return
        col = mapping.value[0][0].start_mark.column
        lines = self.key_lines(op.key, op.value, col)
        for key in op.before:
            found = pair(mapping, key)
            if found is not None and (pos := self._before_key(found[0], col)) is not None:
                self.insert(pos, self._lines(lines))
                return
        anchor = next((p for key in op.after if (p := pair(mapping, key)) is not None), None)
        last = anchor[1] if anchor is not None else mapping.value[-1][1]
        self.insert(self.line_after(self.content_end(last)), self._lines(lines), trailing=True, col=col)

    def _before_key(self, key: Node, col: int) -> int | None:
        """Where to insert a key before `key`: above the comment lines that introduce it."""
        pos = self._clean_line_start(key)
        if pos is None:
            return None
        while pos > 0:
            prev = self.line_start(pos - 1)
            line = self.text[prev:pos]
            body = line.lstrip(" ")
            if not body.startswith("#") or len(line) - len(body) != col:
                break
            pos = prev
        return pos

    def _replace_null(self, mapping: MappingNode, found: tuple[Node, Node], op: SetKey) -> None:
        key, value = found
        if not (isinstance(value, ScalarNode) and tag_of(value) == _NULL_TAG):
            raise EditError(f"{op.key} already has a value")
        start, end = value.start_mark.index, value.end_mark.index
        if mapping.flow_style or _inline(op.value):
            if start == end:
                # An empty value's mark sits where the next token starts, possibly lines below.
                start = end = key.end_mark.index + 1
            self.replace(start, end, (" " if start == end else "") + flow(op.value))
            return
        block = self.block_lines(op.value, key.start_mark.column)
        if start == end:
            self.insert(
                self.line_after(key.end_mark.index), self._lines(block), trailing=True, col=key.start_mark.column + 1
            )
            return
        while start > 0 and self.text[start - 1] == " ":
            start -= 1
        self.replace(start, end, self.style.nl + self.style.nl.join(block))

    def _script(self, mapping: MappingNode, key_name: str) -> tuple[Node, ScalarNode]:
        found = pair(mapping, key_name)
        if found is None or not isinstance(found[1], ScalarNode):
            raise EditError(f"{key_name} is not a scalar")
        return found[0], found[1]

    def _literal_content(self, key: Node, value: ScalarNode) -> tuple[int, int]:
        """Where a literal block scalar's content starts, and its indentation."""
        start = value.start_mark.index
        header_end = self.text.find("\n", start)
        header = _BLOCK_HEADER.match(self.text, start)
        if header_end < 0 or header is None:
            raise EditError("unexpected literal block header")
        digit = header.group(1) or header.group(2)
        content = header_end + 1
        indent = key.start_mark.column + int(digit) if digit else self._first_content_indent(content)
        return content, indent

    def _rewrite_script(self, key: Node, value: ScalarNode, new: str) -> None:
        """Replace a script that is not a literal block with `new`: as a literal block when the text after it on its
        line is blank (a reviewer reads a script as lines, not as one string full of \\n), else double-quoted."""
        start, end = value.start_mark.index, value.end_mark.index
        tail = self.style.nl if self.text[start:end].endswith("\n") else ""
        rest = self.text[end : self.line_after(end)]
        block = literal_block(new, key.start_mark.column + self.style.map_indent)
        if block is not None and value.start_mark.line == key.start_mark.line and rest.strip() == "":
            self.replace(start, end, self.style.nl.join(block) + tail)
        else:
            self.replace(start, end, double_quoted(new) + tail)

    def _prefix_script(self, mapping: MappingNode, op: PrefixScript) -> None:
        key, value = self._script(mapping, op.key)
        if value.style != "|":
            self._rewrite_script(key, value, op.prefix + value.value)
            return
        content, indent = self._literal_content(key, value)
        lines = op.prefix.split("\n")[:-1]
        self.insert(content, self._lines([" " * indent + line for line in lines]))

    def _replace_first_line(self, mapping: MappingNode, op: ReplaceFirstLine) -> None:
        key, value = self._script(mapping, op.key)
        if value.style != "|":
            _, nl, rest = value.value.partition("\n")
            self._rewrite_script(key, value, op.line + nl + rest)
            return
        content, indent = self._literal_content(key, value)
        first = content + indent
        end = self.text.find("\n", first)
        end = len(self.text) if end < 0 else end
        if self.text[end - 1 : end] == "\r":
            end -= 1
        if not self.text.startswith("#!", first):
            raise EditError("the script's first line is not a #! line")
        self.replace(first, end, op.line)

    def _replace(self, parent: Node, last: str | int, value: Any) -> None:
        """Replace one value of a mapping or item of a sequence, keeping the layout around it."""
        if isinstance(parent, MappingNode) and isinstance(last, str) and (found := pair(parent, last)) is not None:
            key, node = found
        elif isinstance(parent, SequenceNode) and isinstance(last, int) and 0 <= last < len(parent.value):
            key, node = None, parent.value[last]
        else:
            raise EditError(f"cannot find {last!r}")
        start, end = node.start_mark.index, node.end_mark.index
        if isinstance(node, ScalarNode) and node.style in (None, '"', "'") and _inline(value):
            quote = node.style if node.style in ('"', "'") and isinstance(value, str) else None
            text = flow(value, quote) if isinstance(value, dict | list) else scalar(value, quote=quote)
            self.replace(start, end, text)
            return
        if parent.flow_style or (isinstance(node, MappingNode | SequenceNode) and node.flow_style and node.value):
            self.replace(start, end, flow(value))
            return
        # A block value (or a block scalar, or an empty flow one): rewrite the whole entry from its key or item.
        if key is not None:
            col = key.start_mark.column
            lines = self.key_lines(str(getattr(key, "value", last)), value, col)
            begin = key.start_mark.index
        else:
            assert isinstance(parent, SequenceNode)
            dash, col = self._item_columns(parent)
            if node.start_mark.column != col or node.start_mark.line != self._dash_line(node):
                raise EditError("sequence item does not start on its dash's line")
            lines = self.item_lines(value, dash, col)
            begin = start
        stop = self.line_after(self.content_end(node))
        text = self._lines(lines)[col:]
        if not self.text[begin:stop].endswith("\n"):  # the last line of a text without a final line break
            text = text[: -len(self.style.nl)]
        self.replace(begin, stop, text)

    def _dash_line(self, node: Node) -> int:
        """The line of the `-` that introduces a block sequence item."""
        i = node.start_mark.index - 1
        while i >= 0 and self.text[i] == " ":
            i -= 1
        return int(node.start_mark.line) if i >= 0 and self.text[i] == "-" else -1

    def _replace_items(self, seq: SequenceNode, op: ReplaceItems) -> None:
        if not 0 <= op.start < op.stop < len(seq.value):
            raise EditError("items to replace out of range")
        first, after = seq.value[op.start], seq.value[op.stop]
        quote = first.style if isinstance(first, ScalarNode) and first.style in ('"', "'") else None
        if seq.flow_style:
            items = "".join(flow(v, quote) + ", " for v in op.items)
            self.replace(first.start_mark.index, after.start_mark.index, items)
            return
        begin, end = self.line_start(first.start_mark.index), self.line_start(after.start_mark.index)
        for node, pos in ((first, begin), (after, end)):
            if self.text[pos : node.start_mark.index].strip(" ") != "-":
                raise EditError("sequence items do not each start a line")
        dash, content = self._item_columns(seq)
        self.replace(begin, end, self._lines([ln for v in op.items for ln in self.item_lines(v, dash, content, quote)]))

    def _first_content_indent(self, pos: int) -> int:
        while pos < len(self.text):
            end = self.text.find("\n", pos)
            end = len(self.text) if end < 0 else end
            line = self.text[pos:end].rstrip("\r")
            if line.strip(" "):
                return len(line) - len(line.lstrip(" "))
            pos = end + 1
        raise EditError("literal block has no content")


def pair(mapping: MappingNode, key: str) -> tuple[Node, Node] | None:
    for k, v in mapping.value:
        if isinstance(k, ScalarNode) and k.value == key:
            return k, v
    return None


def resolve(root: Node, path: Path) -> Node:
    node = root
    for key in path:
        if isinstance(key, int) and isinstance(node, SequenceNode) and 0 <= key < len(node.value):
            node = node.value[key]
            continue
        if isinstance(key, str) and isinstance(node, MappingNode):
            found = pair(node, key)
            if found is not None:
                node = found[1]
                continue
            if pair(node, "<<") is not None:
                raise EditError(f"{key} comes from a YAML merge key (<<); expand it first")
        raise EditError(f"cannot find {key!r}")
    return node


def _expect(node: Node, cls: type[Any], path: Path) -> Any:
    if not isinstance(node, cls):
        raise EditError(f"{'.'.join(map(str, path))} is not a {cls.__name__}")
    return node
