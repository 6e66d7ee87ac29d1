"""The one strict base model and the one validation-error formatter of every input the lab reads.

Scenario files (`lab.scenario`), mock service specs (`lab.mocks.spec`) and run-folder manifests
(`lab.results`) are all models of `Strict`: unknown keys are errors, YAML's or JSON's `true` is
not a 1 and `"100"` is not a 100, floats are finite, and every number has an upper bound (from
`lab.limits`, with its reason). The formatter turns a pydantic error into one line per problem,
worded from the model's JSON Schema: the field path as the user wrote it, the bad value
(shortened with `reprlib`), and what is allowed.

This module sits beside `lab.errors` at the bottom of the import graph, so the mocks and the
scenario can share it without importing each other.
"""

from __future__ import annotations

import difflib
import functools
import reprlib
from collections.abc import Iterable, Iterator, Sized
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from lab.errors import ConfigError

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

#: JSON Schema key holding the reason of a field's bounds, shown beside them in messages.
WHY_KEY = "x-limit"


class Strict(BaseModel):
    """Unknown keys are errors; no type coercion (`true` is not 1, "3" is not 3); finite floats.

    Tuple fields take YAML/JSON lists: give them `Field(strict=False)` (their items stay strict).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def why(reason: str) -> FieldInfo:
    """The reason of a field's bounds, for `Annotated[int, Field(le=...), why("...")]`."""
    return Field(json_schema_extra={WHY_KEY: reason})


#: Tags of a union routed by the type of its input (`by_input_type`), with the JSON Schema type
#: of each member; they never show in an error's path.
INTEGER, NAME, MAPPING = "integer", "name", "mapping"
_TYPE_TAGS = {INTEGER: "integer", NAME: "string", MAPPING: "object"}


def by_input_type(value: Any) -> str | None:
    """Discriminator of a union of an integer, a string and a mapping member, so that a bad
    value is checked against the one member of its type: one clear error, not one per member.
    (A model instance, when serialized, is the mapping member.)"""
    if isinstance(value, dict | BaseModel):
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


def validate(model: type[M], data: Any, *, where: str) -> M:
    """`model.model_validate(data)`, or one ConfigError: `where: path: problem`, one per line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = problems_of(exc, model, data)
        lines = [f"{where}: {dotted(loc)}: {msg}" for _, loc, msg in sorted(problems, key=_first)]
        raise ConfigError("\n".join(lines)) from None


def problems_of(
    exc: ValidationError, model: type[BaseModel], data: Any
) -> list[tuple[int, Loc, str]]:
    """(rank, path as the user wrote it, message) per problem, in pydantic's order. Show rank 0
    first: a misspelt key explains a missing one."""
    schema = _schema(model)
    return [(rank, _clean(loc, data), msg) for rank, loc, msg in _issues(exc, schema)]


def _first(problem: tuple[int, Loc, str]) -> int:
    return problem[0]


@functools.cache
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema, read only: it words the error messages."""
    return model.model_json_schema()


def required_keys(model: type[BaseModel]) -> list[str]:
    return list(_schema(model).get("required", []))


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
            yield 0, loc, f"unknown key {show(loc[-1])}{close}; allowed: {', '.join(known)}"
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            key, tag = ctx["discriminator"].strip("'"), str(ctx.get("tag", ""))
            tags = list(_schema_at(schema, loc).get("discriminator", {}).get("mapping", {}))
            allowed = f"one of {', '.join(map(repr, tags))}"
            msg = f"unknown {key} {show(tag)}{hint(tag, tags)}; allowed: {allowed}"
            yield 1, (*loc, key), msg if tag else f"required: {allowed}"
        elif kind == "invalid_key":
            yield 0, loc[:-1], f"key {show(loc[-1])}: keys must be strings"
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
            yield 2, loc, f"{said}, got {show(value)}{close}"


def hint(value: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest choice, or nothing."""
    if len(value) > 100:  # nobody misspells at this length; difflib is quadratic
        return ""
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlong = 60, 60, 40
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6
_repr.maxlevel = 3


def show(value: Any) -> str:
    """A value as the user may have written it, never longer than a line: `reprlib` cuts it
    before the text is built, so a huge or deeply nested value costs nothing to show."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return _repr.repr(value)


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


def _schema_at(schema: dict[str, Any], loc: Loc) -> dict[str, Any]:
    """The JSON Schema of the value at a pydantic `loc` ({} when the walk gets lost)."""
    node: dict[str, Any] = schema
    for i, part in enumerate(loc):
        node = _deref(schema, node)
        patterns = node.get("patternProperties", {})  # dict[Name, X] gives {SLUG: X}
        extra = next(iter(patterns.values()), node.get("additionalProperties"))
        tags = node.get("discriminator", {}).get("mapping", {})
        if loc[i + 1 : i + 2] == ("[key]",):
            pattern = {"pattern": next(iter(patterns))} if patterns else {}
            return {"type": "string", **pattern, **node.get("propertyNames", {})}
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


def _num(x: float) -> str:
    """1000000 -> '1,000,000', 0.5 -> '0.5': a bound as a person writes it."""
    return f"{int(x):,}" if float(x).is_integer() and abs(x) < 1e18 else f"{x:g}"


def _bounds(node: dict[str, Any]) -> list[str]:
    ops = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    bounds = [f"{op} {_num(node[k])}" for k, op in ops.items() if k in node]
    if "minimum" in node and "maximum" in node:
        bounds = [f"in [{_num(node['minimum'])}, {_num(node['maximum'])}]"]
    elif "exclusiveMinimum" in node and "maximum" in node:
        bounds = [f"in ({_num(node['exclusiveMinimum'])}, {_num(node['maximum'])}]"]
    return bounds


def _allowed(schema: dict[str, Any], node: dict[str, Any]) -> str:
    """What a schema accepts, in words: 'an integer in [1, 256] (why)', "one of 'full', 'none'"."""
    kind, text = node.get("type"), ""
    if "discriminator" in node:
        tags = ", ".join(map(repr, node["discriminator"]["mapping"]))
        text = f"a mapping with {node['discriminator']['propertyName']}: one of {tags}"
    elif "enum" in node or "const" in node:
        text = "one of " + ", ".join(map(repr, node.get("enum", [node.get("const")])))
    elif members := node.get("oneOf"):
        words = [_allowed(schema, _deref(schema, m)) or "a value" for m in members]
        text = ", ".join(words[:-1]) + " or " + words[-1]
    elif kind == "boolean":
        text = "true or false"
    elif kind in ("integer", "number"):
        text = " ".join(["an integer" if kind == "integer" else "a number", *_bounds(node)])
    elif kind == "array":
        items = _allowed(schema, _deref(schema, node.get("items", {})))
        most = f" of at most {node['maxItems']:,} values" if "maxItems" in node else ""
        text = ("a non-empty list" if node.get("minItems") else "a list") + f"{most}, each {items}"
    elif kind == "string":
        most = f" of at most {node['maxLength']:,} characters" if "maxLength" in node else ""
        text = "a string" + most + (f" matching {node['pattern']}" if "pattern" in node else "")
    elif kind == "object":
        required = " with " + ", ".join(node["required"]) if node.get("required") else ""
        most = f" of at most {node['maxProperties']:,} entries" if "maxProperties" in node else ""
        empty = "a non-empty mapping" if node.get("minProperties") else "a mapping"
        text = empty + most + required
    if text and WHY_KEY in node:
        text += f" ({node[WHY_KEY]})"
    return f"{text} or null" if text and node.get("nullable") else text
