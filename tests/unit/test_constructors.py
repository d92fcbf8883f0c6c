"""The hot path's dataclasses that write their ``__init__`` out (a generated one stays interpreted in the
compiled build): each takes every field, by name and in order, with the field's default, and a new
container per instance. A field added without its parameter fails here."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pipeline.account_state import AccountState, Fresh, WindowCounts
from pipeline.followers import FollowerLedger

CLASSES: list[type[Any]] = [AccountState, WindowCounts, Fresh, FollowerLedger]


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_no_arguments_give_every_fields_default_and_new_containers(cls: type[Any]) -> None:
    first, second = cls(), cls()
    for field in dataclasses.fields(cls):
        assert getattr(first, field.name) == _default(field), field.name
        value = getattr(first, field.name)
        if isinstance(value, (list, dict, set)):
            assert value is not getattr(second, field.name), f"{field.name} shared between instances"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_field_is_a_parameter_by_name_and_in_order(cls: type[Any]) -> None:
    fields = dataclasses.fields(cls)
    # A distinct value per field, of its kind: what the constructor must store unchanged.
    marks: dict[str, Any] = {}
    for index, field in enumerate(fields):
        default = _default(field)
        if isinstance(default, bool):
            marks[field.name] = not default
        elif isinstance(default, int):
            marks[field.name] = 1000 + index
        elif isinstance(default, float):
            marks[field.name] = 1000.5 + index
        elif default is None:  # optional: stored as given (the parameter must still exist, by name and place)
            marks[field.name] = None
        else:  # a container or an object: a new one, which must be stored itself, not a copy or a default
            marks[field.name] = type(default)()
    by_name = cls(**marks)
    by_position = cls(*marks.values())
    for name, mark in marks.items():
        for built in (by_name, by_position):
            value = getattr(built, name)
            if isinstance(mark, (int, float)):  # the compiled build keeps numbers unboxed: compare values
                assert value == mark and type(value) is type(mark), name
            else:
                assert value is mark, name
