"""The JSON a task's ``predict_json`` takes and returns, described as JSON Schema and checked.

Each task declares ``request_schema`` and ``response_schema`` in the subset of JSON Schema
that FastAPI/OpenAPI and a reader both understand: ``type`` (object, array, string, number,
integer, boolean, null, or a list of them), ``properties``, ``required``,
``additionalProperties: false``, ``items``, ``minItems``, ``minimum``, ``maximum``, ``enum``
and ``description``. :func:`check` validates a request against it, so the CLI's ``rnnkit
predict`` and the server refuse a bad request with the same one line, naming where it is wrong.
"""

from __future__ import annotations

import json
import math
from typing import Any, Union

from ..errors import DataError

Schema = dict[str, Any]

_TYPES: dict[str, tuple[type, ...]] = {"object": (dict,), "array": (list,), "string": (str,),
                                       "number": (int, float), "integer": (int,), "boolean": (bool,),
                                       "null": (type(None),)}
_EXACT: dict[str, set[type]] = {kind: set(types) for kind, types in _TYPES.items()}  # type(True) is bool, not int


def check(value: Any, schema: Schema, where: str = "request") -> None:
    """Raise a one-line :class:`DataError` naming the first place where ``value`` breaks ``schema``."""
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, kind) for kind in kinds):
            raise DataError(f"{where} must be {' or '.join(kinds)}, got {_name(value)}")
    if "enum" in schema and value not in schema["enum"]:
        raise DataError(f"{where} must be one of {', '.join(map(repr, schema['enum']))}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise DataError(f"{where} must be >= {schema['minimum']}, got {value!r}")
        if "maximum" in schema and value > schema["maximum"]:
            raise DataError(f"{where} must be <= {schema['maximum']}, got {value!r}")
    if isinstance(value, dict):
        _check_object(value, schema, where)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            raise DataError(f"{where} needs at least {schema['minItems']} item(s), got {len(value)}")
        items = schema.get("items", {})
        if isinstance(items.get("type"), str) and set(items) <= {"type", "description"} \
                and _all_plain(value, items["type"]):
            return  # an array of plain values (a series, texts) in one pass; else find the first wrong one
        for i, item in enumerate(value):
            check(item, items, f"{where}[{i}]")


def loads_request(text: Union[str, bytes]) -> Any:
    """A request's JSON text parsed, or a one-line :class:`DataError` saying where it breaks.

    NaN and infinity are refused as JSON refuses them; the shape is left to :func:`check`.
    """
    def refuse(constant: str) -> None:
        raise DataError(f"the request is not valid JSON: {constant} is not a JSON number; send null or a number")

    try:
        return json.loads(text, parse_constant=refuse)
    except UnicodeDecodeError as exc:
        raise DataError(f"the request is not UTF-8 text ({exc.reason}); send JSON encoded as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"the request is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}; "
                        "send one JSON object shaped as the task's request schema says") from None


def sampling_properties(temperature: float, greedy: str, output: str) -> Schema:
    """The sampling options every generating task takes: ``temperature`` (its default given, and
    what 0 means, ``greedy``), nucleus ``top_p`` and ``seed``, described once for every schema."""
    return {
        "temperature": {"type": "number", "minimum": 0, "description": f"0 = {greedy} (default {temperature:g})"},
        "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                  "description": "nucleus sampling: draw among the likeliest outcomes up to this mass (default off)"},
        "seed": {"type": ["integer", "null"], "description": f"the same seed gives the same {output}"}}


def _check_object(value: dict, schema: Schema, where: str) -> None:
    properties = schema.get("properties", {})
    missing = [key for key in schema.get("required", ()) if key not in value]
    if missing:
        raise DataError(f"{where} is missing {', '.join(map(repr, missing))}; "
                        f"expected keys: {', '.join(properties) or 'none'}")
    if schema.get("additionalProperties") is False:
        unknown = sorted(set(value) - set(properties))
        if unknown:
            raise DataError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; "
                            f"expected keys: {', '.join(properties)}")
    for key, item in value.items():
        if key in properties:
            check(item, properties[key], f"{where}.{key}")


def _all_plain(values: list, kind: str) -> bool:
    """Whether every item is of JSON type ``kind``: the types of all items collected in one pass
    at C speed (what ``json.loads`` makes is exactly int, float, str, ...), floats summed to
    screen for NaN and infinity; anything else (a subclass, a huge sum) is judged item by item."""
    types = set(map(type, values))
    if types <= _EXACT.get(kind, set()):
        try:
            if float not in types or math.isfinite(sum(values)):
                return True
        except OverflowError:
            pass
    return all(_is(item, kind) for item in values)


def _is(value: Any, kind: str) -> bool:
    if kind in ("number", "integer") and isinstance(value, bool):
        return False  # JSON's true is not a number, though Python's bool is an int
    if kind == "number" and isinstance(value, float):
        return value == value and abs(value) != float("inf")  # NaN and infinity are not JSON
    return isinstance(value, _TYPES[kind])


def _name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, float) and not _is(value, "number"):
        return repr(value)
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


__all__ = ["Schema", "check", "loads_request"]
