"""API answers are read from service views through ViewOut, never splatted from `__dict__`."""

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError

from tether.server.api.view_out import ViewOut

API = Path(__file__).resolve().parents[3] / "src" / "tether" / "server" / "api"


def test_no_api_module_fills_a_model_from_a_dunder_dict() -> None:
    found = [
        f"{path.name}:{number}"
        for path in sorted(API.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if re.search(r"__dict__", line)
    ]
    assert not found, f"use the answer model's .of(view) instead of __dict__: {found}"


@dataclass(frozen=True)
class _Inner:
    name: str
    secret_id: int


@dataclass(frozen=True)
class _Outer:
    id: str
    owner_id: int
    inner: _Inner | None


class _InnerOut(ViewOut):
    name: str


class _OuterOut(ViewOut):
    id: str
    inner: _InnerOut | None
    shown_once: str = ""


def test_of_reads_declared_fields_and_leaves_the_others_inside() -> None:
    out = _OuterOut.of(_Outer(id="a", owner_id=7, inner=_Inner(name="n", secret_id=9)))
    assert out.model_dump() == {"id": "a", "inner": {"name": "n"}, "shown_once": ""}


def test_of_adds_what_the_view_does_not_hold() -> None:
    out = _OuterOut.of(_Outer(id="a", owner_id=7, inner=None), shown_once="tok")
    assert (out.id, out.inner, out.shown_once) == ("a", None, "tok")


def test_of_refuses_a_view_missing_a_declared_field() -> None:
    with pytest.raises(ValidationError):
        _InnerOut.of(_Outer(id="a", owner_id=7, inner=None))
