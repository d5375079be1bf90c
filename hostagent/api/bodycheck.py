"""Request bodies checked against the schemas of the OpenAPI document the agent serves.

One schema per body, in hostagent.api.openapi: the document and this check read the
same dictionaries, so they cannot drift. The subset of OpenAPI 3.0 schemas
used there is checked here (type with nullable, enum, required, properties,
additionalProperties, maxProperties, items, minItems/maxItems, minimum/maximum with boolean
exclusiveMinimum, minLength/maxLength, anyOf, $ref to components), and no string may hold a NUL. Each
problem names the field (`disks[0].size`) and says what it accepts. Pure, and
linear in the size of the body (which hostagent.api.base.parse_body bounds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "object": (dict,), "array": (list,),
}
_WORDS = {"string": "a string", "integer": "a whole number", "number": "a number", "boolean": "true or false",
          "object": "an object", "array": "a list"}
MAX_PROBLEMS = 5  # enough to fix a request; a huge wrong body must not make a huge answer


def problems(schema: Mapping[str, Any], value: Any, components: Mapping[str, Any], where: str = "") -> list[str]:
    """What is wrong with `value` under `schema`, each naming its field; empty if nothing."""
    found: list[str] = []
    _check(schema, value, components, where, found)
    return found[:MAX_PROBLEMS]


def accepts(schema: Mapping[str, Any], components: Mapping[str, Any]) -> str:
    """A short description of what `schema` accepts, for error messages."""
    schema = _resolve(schema, components)
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(accepts(s, components) for s in schema["anyOf"])
    words = _WORDS.get(str(schema.get("type")), "a value")
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        words += f" from {low:g} to {high:g}"
    elif low is not None:
        words += f" {'above' if schema.get('exclusiveMinimum') else 'of at least'} {low:g}"
    return words + (" or null" if schema.get("nullable") else "")


def _resolve(schema: Mapping[str, Any], components: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return components[ref.rsplit("/", 1)[-1]]
    return schema


def _name(where: str) -> str:
    return where or "the request body"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check(schema: Mapping[str, Any], value: Any, components: Mapping[str, Any], where: str,
           found: list[str]) -> None:
    if len(found) >= MAX_PROBLEMS:
        return
    schema = _resolve(schema, components)
    if value is None:
        if not schema.get("nullable"):
            found.append(f"{_name(where)} must be {accepts(schema, components)}, not null")
        return
    if "anyOf" in schema:
        if all(problems(option, value, components, where) for option in schema["anyOf"]):
            found.append(f"{_name(where)} must be {accepts(schema, components)}, not {_shown(value)}")
        return
    kind = schema.get("type")
    if kind is not None and not _is(kind, value):
        found.append(f"{_name(where)} must be {accepts(schema, components)}, not {_shown(value)}")
        return
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{_name(where)} must be {accepts(schema, components)}, not {_shown(value)}")
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        _bounds(schema, value, components, where, found)
    elif isinstance(value, str):
        if "\x00" in value:  # no name, path or parameter has one; file APIs refuse it (ValueError) deep inside
            found.append(f"{_name(where)} must not contain a NUL character")
        elif len(value) > schema.get("maxLength", len(value)) or len(value) < schema.get("minLength", 0):
            found.append(f"{_name(where)} must be {schema.get('minLength', 0)} to "
                         f"{schema.get('maxLength', 'any number of')} characters long, not {len(value)}")
    elif isinstance(value, list):
        _items(schema, value, components, where, found)
    elif isinstance(value, dict):
        _object(schema, value, components, where, found)


def _is(kind: str, value: Any) -> bool:
    if isinstance(value, bool):
        return kind == "boolean"
    return isinstance(value, _TYPES.get(kind, (object,)))


def _bounds(schema: Mapping[str, Any], value: float, components: Mapping[str, Any], where: str,
            found: list[str]) -> None:
    low, high = schema.get("minimum"), schema.get("maximum")
    too_low = low is not None and (value <= low if schema.get("exclusiveMinimum") else value < low)
    if too_low or (high is not None and value > high):
        found.append(f"{_name(where)} must be {accepts(schema, components)}, not {_shown(value)}")


def _items(schema: Mapping[str, Any], value: list[Any], components: Mapping[str, Any], where: str,
           found: list[str]) -> None:
    if len(value) > schema.get("maxItems", len(value)) or len(value) < schema.get("minItems", 0):
        found.append(f"{_name(where)} must hold {schema.get('minItems', 0)} to "
                     f"{schema.get('maxItems', 'any number of')} items, not {len(value)}")
        return
    item = schema.get("items")
    if item is not None:
        for i, element in enumerate(value):
            _check(item, element, components, f"{where}[{i}]", found)


def _object(schema: Mapping[str, Any], value: dict[str, Any], components: Mapping[str, Any], where: str,
            found: list[str]) -> None:
    prefix = f"{where}." if where else ""
    properties = schema.get("properties", {})
    if len(value) > schema.get("maxProperties", len(value)):
        found.append(f"{_name(where)} may hold at most {schema['maxProperties']} fields, not {len(value)}")
        return
    for field in schema.get("required", []):
        if field not in value:
            found.append(f"{prefix}{field} is required ({accepts(properties.get(field, {}), components)})")
    extra = schema.get("additionalProperties", True)
    for field, element in value.items():
        if field in properties:
            _check(properties[field], element, components, f"{prefix}{field}", found)
        elif extra is False:
            known = ", ".join(sorted(properties)) or "none"
            found.append(f"{prefix}{_shown(field)} is not a field here (fields: {known})")
        elif isinstance(extra, Mapping):
            _check(extra, element, components, f"{prefix}{field}", found)
