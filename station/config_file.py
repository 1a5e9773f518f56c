"""Read a YAML file defensively: whatever the bytes, a Refused with a reason or the data.

`config check` runs on anything, and before every start of the daemon, so reading never
hangs, recurses without bound or expands without bound: the file must be a regular file
under 1 MB, UTF-8 (a UTF-16 file with a byte-order mark is read too), one YAML document
nested at most 32 levels and at most 100,000 values once aliases are expanded (a "billion
laughs" file is refused, not expanded), with no number longer than 64 characters (Python
refuses to convert longer integers). Duplicate keys, which YAML would silently resolve to
the last one, come back as problems with the line of the second.
"""
from __future__ import annotations

import codecs
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 32
MAX_VALUES = 100_000  # nodes once aliases are expanded
MAX_NUMBER_CHARS = 64


@dataclass(frozen=True)
class Problem:
    loc: tuple  # key path in the file, e.g. ("windowing", "hop_seconds")
    message: str
    line: int | None = None  # when the key path alone would find another line (a duplicate key)


@dataclass(frozen=True)
class Document:
    data: Any  # None for an empty file
    root: yaml.Node | None  # for the line of a key path
    problems: list[Problem]  # duplicate keys, numbers too long
    built: bool = True  # False: a problem (a number too long) kept the data from being built


class Refused(Exception):
    def __init__(self, reason: str, line: int | None = None, unreadable: bool = False):
        super().__init__(reason)
        self.reason, self.line, self.unreadable = reason, line, unreadable


def read_yaml(path: Path) -> Document:
    """The YAML document in `path`; raises Refused when it cannot be read or is not YAML within the limits."""
    text = _decode(_read_bytes(path))
    _check_nesting(text)
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return Document(None, None, [])
        scan = _Scan()
        scan.visit(root, ())
        if scan.unbuildable:
            return Document(None, root, scan.problems, built=False)
        return Document(loader.construct_document(root), root, scan.problems)
    except yaml.YAMLError as exc:
        raise Refused(f"not valid YAML: {_yaml_problem(exc)}", _yaml_line(exc, text)) from None
    finally:
        loader.dispose()


def _read_bytes(path: Path) -> bytes:
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise Refused("is a folder, not a file", unreadable=True)
        if not stat.S_ISREG(mode):  # a FIFO or a device would block or never end
            raise Refused("not a regular file", unreadable=True)
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise Refused(getattr(exc, "strerror", None) or str(exc), unreadable=True) from None
    if len(data) > MAX_FILE_BYTES:
        raise Refused(f"larger than {MAX_FILE_BYTES // 1_000_000} MB", unreadable=True)
    return data


def _decode(data: bytes) -> str:
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise Refused("is UTF-32; save it as UTF-8")
    encoding = "utf-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1 if encoding != "utf-16" else None
        name = "UTF-16" if encoding == "utf-16" else "UTF-8"
        raise Refused(f"not {name} text (byte 0x{data[exc.start]:02x}); save it as UTF-8", line) from None
    if "\x00" in text:
        raise Refused("contains NUL characters (UTF-16 without a byte-order mark? save it as UTF-8)",
                       text[:text.index("\x00")].count("\n") + 1)
    return text


def _check_nesting(text: str) -> None:
    """Refuse deep nesting from the event stream, before anything recurses over it."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    line = event.start_mark.line + 1 if event.start_mark is not None else None
                    raise Refused(f"nested more than {MAX_DEPTH} levels deep", line)
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError as exc:
        raise Refused(f"not valid YAML: {_yaml_problem(exc)}", _yaml_line(exc, text)) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """libyaml's message in one line: "while scanning a quoted scalar, found unexpected end of stream"."""
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    return ", ".join(p for p in parts if p) or (str(exc).splitlines() or ["unknown error"])[0]


def _yaml_line(exc: yaml.YAMLError, text: str) -> int | None:
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return mark.line + 1
    position = getattr(exc, "position", None)  # a ReaderError (a forbidden character) has only an offset
    return text.count("\n", 0, position) + 1 if isinstance(position, int) else None


if TYPE_CHECKING:
    _SafeLoader = yaml.SafeLoader
else:  # libyaml's, where PyYAML was built with it: the same documents, faster
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):
    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # e.g. a timestamp 2026-13-45
            raise yaml.constructor.ConstructorError(None, None, f"bad value: {exc}", node.start_mark) from None


NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
MERGE_TAG = "tag:yaml.org,2002:merge"


class _Scan:
    """One walk over the node graph: expanded size and depth (aliases share nodes), duplicate
    keys, and numbers too long to convert. Memoised, so an alias is walked once."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[int, int]] = {}
        self.open: set[int] = set()
        self.problems: list[Problem] = []
        self.unbuildable = False

    def visit(self, node: yaml.Node, loc: tuple) -> tuple[int, int]:
        key = id(node)
        if key in self.seen:
            return self.seen[key]
        if key in self.open:
            raise Refused("an alias refers to a node that contains it", node.start_mark.line + 1)
        self.open.add(key)
        size, depth = 1, 0
        for child, child_loc in self._children(node, loc):
            child_size, child_depth = self.visit(child, child_loc)
            size, depth = size + child_size, max(depth, child_depth)
        self.open.discard(key)
        if size > MAX_VALUES:
            raise Refused(f"more than {MAX_VALUES} values once aliases are expanded (a YAML bomb?)",
                           node.start_mark.line + 1)
        if depth + 1 > MAX_DEPTH:
            raise Refused(f"nested more than {MAX_DEPTH} levels deep once aliases are expanded",
                           node.start_mark.line + 1)
        self.seen[key] = (size, depth + 1)
        return size, depth + 1

    def _children(self, node: yaml.Node, loc: tuple):
        if isinstance(node, yaml.MappingNode):
            self._duplicates(node, loc)
            for k, v in node.value:
                yield k, loc
                yield v, (*loc, _key_text(k))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                yield item, (*loc, i)
        elif node.tag in NUMBER_TAGS and len(node.value) > MAX_NUMBER_CHARS:
            self.problems.append(Problem(loc, f"number too long ({len(node.value)} characters)",
                                         node.start_mark.line + 1))
            self.unbuildable = True

    def _duplicates(self, node: yaml.MappingNode, loc: tuple) -> None:
        first: dict[tuple[str, str], int] = {}
        for k, _ in node.value:
            if not isinstance(k, yaml.ScalarNode) or k.tag == MERGE_TAG:
                continue
            line = k.start_mark.line + 1
            if (k.tag, k.value) in first:
                self.problems.append(Problem((*loc, k.value), f"duplicate key (first at line "
                                                               f"{first[(k.tag, k.value)]}); remove one", line))
            else:
                first[(k.tag, k.value)] = line


def _key_text(node: yaml.Node) -> str:
    return node.value if isinstance(node, yaml.ScalarNode) else "?"


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based YAML line of the deepest node on `loc` that exists in the file."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
