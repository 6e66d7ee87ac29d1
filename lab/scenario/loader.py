"""Strict YAML configuration: a pydantic model loaded from a file, errors located in the file.

Every problem is reported with the file, the YAML line, the field path as the user wrote it,
the bad value and what the schema allows, all in ONE `ConfigError` (one line per problem).
Plain YAML silently keeps the last of two equal keys; here that is an error too.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Iterable, Iterator, Sized
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from lab.errors import ConfigError

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


#: Tags of a union routed by the YAML type of its input (`by_input_type`), with the JSON Schema
#: type of each member; they never show in an error's path.
INTEGER, NAME, MAPPING = "integer", "name", "mapping"
_TYPE_TAGS = {INTEGER: "integer", NAME: "string", MAPPING: "object"}


def by_input_type(value: Any) -> str | None:
    """Discriminator of a union of an integer, a string and a mapping member, so that a bad
    value is checked against the one member of its type: one clear error, not one per member."""
    if isinstance(value, dict):
        return MAPPING
    if isinstance(value, str):
        return NAME
    if isinstance(value, int) and not isinstance(value, bool):
        return INTEGER
    return None


class Problems(ValueError):
    """Cross-field problems, each at a path relative to the model that found them."""

    def __init__(self, *problems: tuple[Loc, str]) -> None:
        super().__init__("; ".join(f"{dotted(loc)}: {msg}" for loc, msg in problems))
        self.problems = problems


def load_yaml_model(
    path: str | Path, model: type[M], *, what: str = "configuration"
) -> tuple[M, yaml.Node | None]:
    """Read, parse safely and validate `path` as `model`; returns the model and the YAML node
    tree (for `line_of`). Raises one ConfigError listing every problem, located."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read the {what}: {exc}") from None
    node, data = _parse_yaml(text, where)
    if data is None:
        required = ", ".join(_schema(model).get("required", []))
        raise ConfigError(f"{where}:1: the file is empty; expected {required}")
    try:
        return model.model_validate(data), node
    except ValidationError as exc:
        schema = _schema(model)
        issues = [(rank, _clean(loc, data), msg) for rank, loc, msg in _issues(exc, schema)]
        lines = [(rank, line_of(node, loc), f"{dotted(loc)}: {msg}") for rank, loc, msg in issues]
        lines.sort(key=lambda x: x[:2])  # stable: pydantic's order within a line
        raise ConfigError("\n".join(f"{where}:{line}: {msg}" for _, line, msg in lines)) from None


@functools.cache
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema, read only: it words the error messages."""
    return model.model_json_schema()


def _parse_yaml(text: str, where: str) -> tuple[yaml.Node | None, Any]:
    """Safe YAML (SafeLoader) in one parse: the node tree for line numbers, and the data."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        _no_duplicate_keys(node, where)
        return node, (loader.construct_document(node) if node is not None else None)
    except yaml.MarkedYAMLError as exc:
        mark, ctx = exc.problem_mark or exc.context_mark, exc.context_mark
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        context = f" ({exc.context} at line {ctx.line + 1})" if exc.context and ctx else ""
        raise ConfigError(f"{where}{at}: invalid YAML: {exc.problem}{context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()


def _no_duplicate_keys(root: yaml.Node | None, where: str) -> None:
    """YAML keeps the last of two equal keys without a word; a config must not."""
    todo, done = [root], set()
    while todo:
        node = todo.pop()
        if id(node) in done or not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            continue
        done.add(id(node))
        pairs = (
            node.value if isinstance(node, yaml.MappingNode) else [(None, v) for v in node.value]
        )
        first: dict[str, int] = {}
        for key, value in pairs:
            if isinstance(key, yaml.ScalarNode):
                line = key.start_mark.line + 1
                if key.value in first:
                    msg = f"duplicate key {key.value!r} (first at line {first[key.value]})"
                    raise ConfigError(f"{where}:{line}: {msg}")
                first[key.value] = line
            todo.append(value)


def _issues(exc: ValidationError, schema: dict[str, Any]) -> Iterator[tuple[int, Loc, str]]:
    """(rank, loc, message) per problem; rank 0 first: a misspelt key explains a missing one."""
    for e in exc.errors():
        loc, kind, value, ctx = tuple(e["loc"]), e["type"], e.get("input"), e.get("ctx", {})
        if isinstance(ctx.get("error"), Problems):
            yield from ((2, loc + sub, msg) for sub, msg in ctx["error"].problems)
        elif kind == "too_short" and isinstance(value, Sized) and len(value) >= ctx["min_length"]:
            continue  # pydantic repeats it after item errors, though the input was long enough
        elif kind == "extra_forbidden":
            known = sorted(_schema_at(schema, loc[:-1]).get("properties", {}))
            close = hint(str(loc[-1]), known)
            yield 0, loc, f"unknown key {loc[-1]!r}{close}; allowed: {', '.join(known)}"
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            key, tag = ctx["discriminator"].strip("'"), str(ctx.get("tag", ""))
            tags = list(_schema_at(schema, loc).get("discriminator", {}).get("mapping", {}))
            allowed = f"one of {', '.join(map(repr, tags))}"
            msg = f"unknown {key} {tag!r}{hint(tag, tags)}; allowed: {allowed}"
            yield 1, (*loc, key), msg if tag else f"required: {allowed}"
        elif kind == "missing":
            yield 3, loc, f"required: {_allowed(schema, _schema_at(schema, loc)) or 'a value'}"
        elif kind == "value_error":
            yield 2, loc, str(e["msg"]).removeprefix("Value error, ")
        else:
            node = _schema_at(schema, loc)
            allowed = _allowed(schema, node)
            said = (
                f"must be {allowed}" if allowed else str(e["msg"]).replace("Input should", "must")
            )
            names = node.get("enum", [node["const"]] if "const" in node else [])
            close = hint(value, names) if isinstance(value, str) else ""
            yield 2, loc, f"{said}, got {_show(value)}{close}"


def hint(value: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _show(value: Any) -> str:
    text = json.dumps(value) if value is None or isinstance(value, bool) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def dotted(loc: Loc) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return text or "(top level)"


def _clean(loc: Loc, data: Any) -> Loc:
    """Drop pydantic's union tags and `[key]` markers: the path as the user wrote it."""
    out: list[str | int] = []
    for part in loc:
        if isinstance(data, dict):
            if part not in data and (
                part == "[key]" or part in (data.get("kind"), data.get("dist"), MAPPING)
            ):
                continue  # pydantic names the union member (or the key) it validated
            data = data.get(part)
        elif part in (INTEGER, NAME) and not isinstance(data, list):
            continue  # the member of a `by_input_type` union
        else:
            ok = isinstance(data, list) and isinstance(part, int) and part < len(data)
            data = data[part] if ok else None
        out.append(part)
    return tuple(out)


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


def _schema_at(schema: dict[str, Any], loc: Loc) -> dict[str, Any]:
    """The JSON Schema of the value at a pydantic `loc` ({} when the walk gets lost)."""
    node: dict[str, Any] = schema
    for i, part in enumerate(loc):
        node = _deref(schema, node)
        patterns = node.get("patternProperties", {})  # dict[Name, X] gives {SLUG: X}
        extra = next(iter(patterns.values()), node.get("additionalProperties"))
        tags = node.get("discriminator", {}).get("mapping", {})
        if loc[i + 1 : i + 2] == ("[key]",):
            return {"type": "string", "pattern": next(iter(patterns), ".*")}
        if isinstance(part, int) and "items" in node:
            node = node["items"]
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        elif part in tags:
            node = {"$ref": tags[part]}
        elif part in _TYPE_TAGS and "oneOf" in node:
            kind = _TYPE_TAGS[str(part)]
            node = next((m for m in node["oneOf"] if _deref(schema, m).get("type") == kind), {})
        elif isinstance(extra, dict):
            node = extra
        else:
            return {}
    return _deref(schema, node)


def _deref(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow `$ref`, and unwrap `X | None` into X marked nullable."""
    while True:
        if "$ref" in node:
            target = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        elif len(real := [b for b in node.get("anyOf", []) if b != {"type": "null"}]) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            node = {**real[0], **rest, "nullable": True}
        else:
            return node


def _allowed(schema: dict[str, Any], node: dict[str, Any]) -> str:
    """What a schema accepts, in words: 'an integer >= 1', "one of 'full', 'none'"."""
    kind, text = node.get("type"), ""
    if "discriminator" in node:
        tags = ", ".join(map(repr, node["discriminator"]["mapping"]))
        text = f"a mapping with {node['discriminator']['propertyName']}: one of {tags}"
    elif "enum" in node or "const" in node:
        text = "one of " + ", ".join(map(repr, node.get("enum", [node.get("const")])))
    elif kind in ("integer", "number"):
        ops = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
        bounds = [f"{op} {node[k]:g}" for k, op in ops.items() if k in node]
        if "minimum" in node and "maximum" in node:
            bounds = [f"in [{node['minimum']:g}, {node['maximum']:g}]"]
        text = " ".join(["an integer" if kind == "integer" else "a number", *bounds])
    elif members := node.get("oneOf"):
        words = [_allowed(schema, _deref(schema, m)) or "a value" for m in members]
        text = ", ".join(words[:-1]) + " or " + words[-1]
    elif kind == "array":
        items = _allowed(schema, _deref(schema, node.get("items", {})))
        text = ("a non-empty list" if node.get("minItems") else "a list") + f", each {items}"
    elif kind == "string":
        text = "a string" + (f" matching {node['pattern']}" if "pattern" in node else "")
    elif kind == "object":
        required = " with " + ", ".join(node["required"]) if node.get("required") else ""
        text = ("a non-empty mapping" if node.get("minProperties") else "a mapping") + required
    return f"{text} or null" if text and node.get("nullable") else text
