"""The Run form's parameter fields, generated from a library script's parameter schema.

The schema is the small subset `services.script_params` accepts (string, integer, number,
boolean, array of strings; enum, default, description, title; `required`). This module only
turns it into fields and turns the submitted form back into values of the declared types; the
checking (required, enum, bounds, pattern) stays in the service, whose sentence the page shows.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

FIELD_PREFIX = "param."
# A value the form could not turn into the declared type is passed on as the text typed, so the
# service refuses it in its own words ("Parameter 'n' must be an integer.").


@dataclass(frozen=True)
class ParamField:
    """One input of the Run form."""

    name: str
    label: str
    kind: str  # string, integer, number, boolean, array
    description: str
    required: bool
    # The field's text as the form shows it: the default, or what the user typed last time.
    value: str
    # Enum (and boolean) choices as (value text, shown text); empty for free input.
    choices: tuple[tuple[str, str], ...]
    minimum: str
    maximum: str

    @property
    def input_name(self) -> str:
        return FIELD_PREFIX + self.name


def _text(value: Any) -> str:
    """A JSON value as the form shows it: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(str(item) for item in value)
    return json.dumps(value)


def fields_of(schema: dict[str, Any], typed: dict[str, str] | None = None) -> list[ParamField]:
    """The form fields for `schema`, filled with `typed` (a refused submission) or defaults."""
    typed = typed or {}
    required = set(schema.get("required", []))
    shown: list[ParamField] = []
    for name, spec in schema.get("properties", {}).items():
        kind = spec["type"]
        choices: tuple[tuple[str, str], ...] = ()
        if "enum" in spec:
            choices = tuple((_text(v), _text(v)) for v in spec["enum"])
        elif kind == "boolean":
            choices = (("true", "yes"), ("false", "no"))
        default = _text(spec["default"]) if "default" in spec else ""
        shown.append(
            ParamField(
                name=name,
                label=spec.get("title") or name,
                kind=kind,
                description=spec.get("description", ""),
                required=name in required,
                value=typed.get(FIELD_PREFIX + name, default),
                choices=choices,
                minimum=_text(spec["minimum"]) if "minimum" in spec else "",
                maximum=_text(spec["maximum"]) if "maximum" in spec else "",
            )
        )
    return shown


def _typed(kind: str, text: str) -> Any:
    if kind == "integer":
        try:
            return int(text.strip())
        except ValueError:
            return text
    if kind == "number":
        try:
            return float(text.strip())
        except ValueError:
            return text
    if kind == "boolean":
        return {"true": True, "false": False}.get(text, text)
    if kind == "array":
        return [line.strip() for line in text.splitlines() if line.strip()]
    return text


def params_of(schema: dict[str, Any], form: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The parameters a submitted form gives, in the declared types; an empty field is left out
    so the service fills in the default or says the parameter is required."""
    properties: dict[str, Any] = schema.get("properties", {})
    params: dict[str, Any] = {}
    for key, text in form:
        if not key.startswith(FIELD_PREFIX):
            continue
        name = key.removeprefix(FIELD_PREFIX)
        spec = properties.get(name)
        if spec is None or text == "":
            continue
        params[name] = _typed(spec["type"], text)
    return params
