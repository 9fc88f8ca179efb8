"""Parameter schemas of library scripts: the small JSON Schema subset the platform checks.

A schema is an object schema whose properties each have one type: string, integer, number,
boolean, or array of strings; with optional enum, default, description and title; plus the
object's `required` list and `additionalProperties`. Anything else is refused when the script is
saved, rather than silently left unchecked when it runs.
"""

import json
import math
import re
from typing import Any

from tether.server.errors import Invalid

MAX_SCHEMA_BYTES = 64 * 1024
TYPES = ("string", "integer", "number", "boolean", "array")
_OBJECT_KEYS = frozenset(
    {"$schema", "title", "description", "type", "properties", "required", "additionalProperties"}
)
_PROPERTY_KEYS = frozenset(
    {
        "type",
        "description",
        "title",
        "enum",
        "default",
        "items",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
    }
)
# Which bounds apply to which type.
_BOUNDS = {
    "minLength": "string",
    "maxLength": "string",
    "pattern": "string",
    "minimum": "number",
    "maximum": "number",
}
_MUST_BE = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list of strings",
}


def _fits(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        if isinstance(value, float):
            return value.is_integer()
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        if isinstance(value, float):
            return math.isfinite(value)
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _coerce(kind: str, value: Any) -> Any:
    # JSON has one number type: 5.0 is an integer to JSON Schema, and the script gets 5.
    if kind == "integer" and isinstance(value, float):
        return int(value)
    return value


def _check_property(name: Any, spec: Any) -> None:
    if not isinstance(name, str) or not name or len(name) > 128 or not name.isprintable():
        raise Invalid("A parameter name is 1 to 128 printable characters.")
    if not isinstance(spec, dict):
        raise Invalid(f"Parameter {name!r} must be described by a JSON object.")
    unknown = sorted(set(spec) - _PROPERTY_KEYS)
    if unknown:
        raise Invalid(
            f"Parameter {name!r} uses {unknown[0]!r}, which the library does not check; "
            "use type, enum, default, items, title, description, minLength, maxLength, "
            "pattern, minimum and maximum."
        )
    kind = spec.get("type")
    if kind not in TYPES:
        raise Invalid(
            f"Parameter {name!r} needs a type: string, integer, number, boolean or array."
        )
    if kind == "array":
        if spec.get("items") != {"type": "string"}:
            raise Invalid(
                f'Parameter {name!r} is an array, so it needs "items": {{"type": "string"}}.'
            )
    elif "items" in spec:
        raise Invalid(f"Parameter {name!r} has items but is not an array.")
    for key in ("description", "title"):
        if key in spec and not isinstance(spec[key], str):
            raise Invalid(f"The {key} of parameter {name!r} must be a string.")
    for key, applies in _BOUNDS.items():
        if key not in spec:
            continue
        if applies == "string" and kind != "string":
            raise Invalid(f"Parameter {name!r} uses {key}, which applies to strings only.")
        if applies == "number" and kind not in ("integer", "number"):
            raise Invalid(f"Parameter {name!r} uses {key}, which applies to numbers only.")
        bound = spec[key]
        if key == "pattern":
            try:
                re.compile(bound)
            except (re.error, TypeError) as exc:
                raise Invalid(
                    f"The pattern of parameter {name!r} is not a valid regular expression."
                ) from exc
        elif not _fits("number", bound):
            raise Invalid(f"The {key} of parameter {name!r} must be a number.")
    if "enum" in spec:
        enum = spec["enum"]
        if not isinstance(enum, list) or not enum:
            raise Invalid(f"The enum of parameter {name!r} must be a non-empty list.")
        if not all(_fits(kind, value) for value in enum):
            raise Invalid(f"Every enum value of parameter {name!r} must be {_MUST_BE[kind]}.")
    if "default" in spec:
        default = spec["default"]
        if not _fits(kind, default):
            raise Invalid(f"The default of parameter {name!r} must be {_MUST_BE[kind]}.")
        if "enum" in spec and _coerce(kind, default) not in spec["enum"]:
            raise Invalid(f"The default of parameter {name!r} must be one of its enum values.")


def check_schema(schema: Any) -> dict[str, Any]:
    """The schema if the library can check parameters against it; Invalid with the reason if not."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise Invalid('The parameters schema must be a JSON object with "type": "object".')
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        raise Invalid('The parameters schema needs "properties", a JSON object (it may be empty).')
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise Invalid("The parameters schema is larger than 64 KiB.")
    unknown = sorted(set(schema) - _OBJECT_KEYS)
    if unknown:
        raise Invalid(
            f"The parameters schema uses {unknown[0]!r}, which the library does not check."
        )
    for name, spec in properties.items():
        _check_property(name, spec)
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise Invalid('"required" must be a list of parameter names.')
    for name in required:
        if name not in properties:
            raise Invalid(f"Required parameter {name!r} is not among the properties.")
    if not isinstance(schema.get("additionalProperties", True), bool):
        raise Invalid('"additionalProperties" must be true or false.')
    return schema


def _check_value(name: str, spec: dict[str, Any], value: Any) -> Any:
    kind = spec["type"]
    if not _fits(kind, value):
        raise Invalid(f"Parameter {name!r} must be {_MUST_BE[kind]}.")
    value = _coerce(kind, value)
    # Both the value and the enum (checked at save) have the declared type, so plain equality
    # cannot confuse True with 1.
    enum = spec.get("enum")
    if enum is not None and value not in enum:
        shown = ", ".join(json.dumps(choice) for choice in enum)
        raise Invalid(f"Parameter {name!r} must be one of {shown}.")
    if kind == "string":
        if len(value) < spec.get("minLength", 0):
            raise Invalid(f"Parameter {name!r} must be at least {spec['minLength']} characters.")
        if "maxLength" in spec and len(value) > spec["maxLength"]:
            raise Invalid(f"Parameter {name!r} must be at most {spec['maxLength']} characters.")
        if "pattern" in spec and re.search(spec["pattern"], value) is None:
            raise Invalid(f"Parameter {name!r} does not have the expected form.")
    if kind in ("integer", "number"):
        if "minimum" in spec and value < spec["minimum"]:
            raise Invalid(f"Parameter {name!r} must be at least {spec['minimum']}.")
        if "maximum" in spec and value > spec["maximum"]:
            raise Invalid(f"Parameter {name!r} must be at most {spec['maximum']}.")
    return value


def check_params(schema: dict[str, Any], params: Any) -> dict[str, Any]:
    """`params` checked against `schema` (saved through `check_schema`), defaults filled in."""
    if not isinstance(params, dict):
        raise Invalid("The parameters must be a JSON object of names and values.")
    properties: dict[str, Any] = schema["properties"]
    if schema.get("additionalProperties", True) is False:
        for name in params:
            if name not in properties:
                raise Invalid(f"Parameter {name!r} is not one this script takes.")
    checked: dict[str, Any] = {}
    for name, spec in properties.items():
        if name in params:
            checked[name] = _check_value(name, spec, params[name])
        elif "default" in spec:
            checked[name] = _coerce(spec["type"], spec["default"])
        elif name in schema.get("required", []):
            raise Invalid(f"Parameter {name!r} is required.")
    for name, value in params.items():
        checked.setdefault(name, value)
    return checked
