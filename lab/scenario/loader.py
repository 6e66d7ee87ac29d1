"""Strict YAML configuration: a pydantic model loaded from a file, errors located in the file.

Every problem is reported with the file, the YAML line, the field path as the user wrote it,
the bad value and what the schema allows, all in ONE `ConfigError` (one line per problem; the
wording comes from `lab.strict`, shared with the mocks' specs).

A file is input from anyone, so reading it is bounded before any value is built: its size
(`SCENARIO_BYTES_MAX`), its nesting depth and its node count after alias expansion (checked on
the parser's event stream, which never recurses, so a "billion laughs" file or a 10,000-deep
list is refused in milliseconds). Plain YAML silently keeps the last of two equal keys, also
when one arrives through a merge key (`<<`); here both are errors. Whatever the YAML library
raises while building a value (a 5,000-digit integer, 2024-02-30) becomes the same one-line
`ConfigError`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from lab.errors import ConfigError
from lab.limits import SCENARIO_BYTES_MAX, YAML_DEPTH_MAX, YAML_NODES_MAX
from lab.strict import Loc, dotted, problems_of, required_keys, show

M = TypeVar("M", bound=BaseModel)

# libyaml's parser when installed: the same events and marks, twenty times faster.
_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE = "tag:yaml.org,2002:merge"


def load_yaml_model(
    path: str | Path, model: type[M], *, what: str = "configuration"
) -> tuple[M, yaml.Node | None]:
    """Read, parse safely and validate `path` as `model`; returns the model and the YAML node
    tree (for `line_of`). Raises one ConfigError listing every problem, located."""
    where = str(path)
    node, data = parse_yaml(read_text(path, what=what), where)
    if data is None:
        raise ConfigError(
            f"{where}:1: the file is empty; expected {', '.join(required_keys(model))}"
        )
    try:
        return model.model_validate(data), node
    except ValidationError as exc:
        problems = problems_of(exc, model, data)
        lines = [(rank, line_of(node, loc), f"{dotted(loc)}: {msg}") for rank, loc, msg in problems]
        lines.sort(key=lambda x: x[:2])  # stable: pydantic's order within a line
        raise ConfigError("\n".join(f"{where}:{line}: {msg}" for _, line, msg in lines)) from None


def read_text(path: str | Path, *, what: str) -> str:
    """A regular file of at most SCENARIO_BYTES_MAX bytes of UTF-8; ConfigError otherwise.

    Opened non-blocking, so a FIFO planted in place of the file cannot hang the lab.
    """
    where = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such {what} file") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the {what}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"{where}: is a directory, not a {what} file")
        raise ConfigError(f"{where}: not a regular file; give the {what} file itself")
    with os.fdopen(fd, "rb") as f:
        try:
            raw = f.read(SCENARIO_BYTES_MAX + 1)
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read the {what}: {exc.strerror}") from None
    if len(raw) > SCENARIO_BYTES_MAX:
        raise ConfigError(
            f"{where}: the {what} file is larger than {SCENARIO_BYTES_MAX // 1024} KiB; "
            "a scenario is a few KiB of YAML"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{where}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
        ) from None


class _ValueProblem(Exception):
    """A scalar the YAML library could not turn into a value, with its node for the line."""

    def __init__(self, node: yaml.Node, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.node, self.exc = node, exc


class _Loader(_Base):
    """The safe loader, with every error of building one value tied to that value's node."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, _ValueProblem):
            raise
        except (ValueError, TypeError, OverflowError, ArithmeticError, RecursionError) as exc:
            raise _ValueProblem(node, exc) from None


def parse_yaml(text: str, where: str) -> tuple[yaml.Node | None, Any]:
    """Safe YAML in bounded work: the node tree (for line numbers) and the data."""
    loader: Any = None
    try:
        _check_shape(text, where)
        loader = _Loader(text)
        node = loader.get_single_node()
        _no_duplicate_keys(node, where)
        return node, (loader.construct_document(node) if node is not None else None)
    except yaml.MarkedYAMLError as exc:
        mark, ctx = exc.problem_mark or exc.context_mark, exc.context_mark
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        context = f" ({exc.context} at line {ctx.line + 1})" if exc.context and ctx else ""
        raise ConfigError(f"{where}{at}: invalid YAML: {exc.problem}{context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML: {_first_line(exc)}") from None
    except _ValueProblem as exc:
        mark, kind = exc.node.start_mark, str(exc.node.tag).rsplit(":", 1)[-1]
        reason = _first_line(exc.exc).split(":")[0]
        raise ConfigError(
            f"{where}:{mark.line + 1}:{mark.column + 1}: cannot read {show(exc.node.value)} "
            f"as {kind}: {reason}"
        ) from None
    except RecursionError:  # _check_shape bounds the depth: this is a last resort
        raise ConfigError(f"{where}: invalid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


@dataclass
class _Open:
    """A collection being parsed: its anchor, the node count when it began (itself included)
    and the depth of what it holds so far."""

    anchor: str | None
    nodes_before: int
    depth: int = 0


@dataclass
class _Shape:
    """Running totals of the event scan, as if every alias were written out in full."""

    where: str
    nodes: int = 0
    stack: list[_Open] = field(default_factory=list)
    anchors: dict[str, tuple[int, int]] = field(default_factory=dict)  # (nodes, depth) each

    def add(self, nodes: int, depth: int, mark: Any) -> None:
        self.nodes += nodes
        if self.stack:
            self.stack[-1].depth = max(self.stack[-1].depth, depth)
        small = "; a scenario is far smaller"
        if self.nodes > YAML_NODES_MAX:
            self.fail(mark, f"more than {YAML_NODES_MAX:,} values once aliases are expanded{small}")
        if len(self.stack) + depth > YAML_DEPTH_MAX:
            self.fail(
                mark, f"nested more than {YAML_DEPTH_MAX} levels deep (aliases included){small}"
            )

    def fail(self, mark: Any, what: str) -> None:
        raise ConfigError(f"{self.where}:{mark.line + 1}: {what}")


def _check_shape(text: str, where: str) -> None:
    """Refuse a document too deep or too large once aliases are expanded, from parser events
    alone (no recursion, no values built, stops at the first excess)."""
    shape = _Shape(where)
    for event in yaml.parse(text, Loader=_Base):
        if isinstance(event, yaml.AliasEvent):
            if any(o.anchor == event.anchor for o in shape.stack):
                shape.fail(
                    event.start_mark,
                    f"alias *{event.anchor} refers to a node that contains it: the value would be "
                    "infinite",
                )
            nodes, depth = shape.anchors.get(
                str(event.anchor), (1, 0)
            )  # unknown: the composer says
            shape.add(nodes, depth, event.start_mark)
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                shape.anchors[event.anchor] = (1, 0)
            shape.add(1, 0, event.start_mark)
        elif isinstance(event, yaml.CollectionStartEvent):
            shape.add(1, 1, event.start_mark)
            shape.stack.append(_Open(event.anchor, shape.nodes - 1))
        elif isinstance(event, yaml.CollectionEndEvent):
            done = shape.stack.pop()
            if shape.stack:
                shape.stack[-1].depth = max(shape.stack[-1].depth, done.depth + 1)
            if done.anchor is not None:
                shape.anchors[done.anchor] = (shape.nodes - done.nodes_before, done.depth + 1)


def _effective_keys(node: yaml.MappingNode) -> Iterator[tuple[str, int, int | None]]:
    """(key, line, line of the `<<` it came through or None) of a mapping, merges included."""
    for key, value in node.value:
        if key.tag == _MERGE:
            yield "<<", key.start_mark.line + 1, None  # two merge keys are two equal keys
            merged = value.value if isinstance(value, yaml.SequenceNode) else [value]
            for sub in merged:
                if isinstance(sub, yaml.MappingNode):
                    for name, line, _ in _effective_keys(sub):
                        yield name, line, key.start_mark.line + 1
            continue
        if isinstance(key, yaml.ScalarNode):
            yield key.value, key.start_mark.line + 1, None


def _no_duplicate_keys(root: yaml.Node | None, where: str) -> None:
    """YAML keeps the last of two equal keys without a word, and a key given beside a merge key
    (`<<`) silently overrides the merged one; a config must not do either."""
    todo, done = [root], set()
    while todo:
        node = todo.pop()
        if id(node) in done or not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            continue
        done.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)
            continue
        first: dict[str, tuple[int, int | None]] = {}
        for name, line, via in _effective_keys(node):
            if name in first:
                line0, via0 = first[name]
                how = "" if via is None and via0 is None else " (merge keys `<<` included)"
                where_first = f"line {line0}" + (f" via the `<<` at line {via0}" if via0 else "")
                at = via if via is not None else line
                raise ConfigError(
                    f"{where}:{at}: duplicate key {show(name)}{how}, first at {where_first}; "
                    "give each key once"
                )
            first[name] = (line, via)
        todo.extend(v for _, v in node.value)


def line_of(node: yaml.Node | None, loc: Loc) -> int:
    """1-based line of the node at `loc`, or of the deepest ancestor the file has."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if pair is None:
                break
            line, node = pair[0].start_mark.line + 1, pair[1]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
