"""Service records back from the API's JSON: the inverse of `to_plain`.

Rules:
- Pure: driven by the dataclass's own type hints. ISO text becomes an
  aware datetime, lists become tuples (or frozensets) where the field says
  so, dicts keep their keys and convert their values, nested records are
  rebuilt, `X | None` takes None as it is.
- Keys the record does not know are ignored (a newer server may send more);
  a missing key takes the field's default. Raises ValueError (a missing key
  without a default, or a value of the wrong shape): the answer is not
  what this client understands.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@functools.cache
def _hints(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind)


def from_plain(kind: type[T], data: Any) -> T:
    """DATA (parsed JSON) as a KIND dataclass. Raises ValueError."""
    value = _convert(kind, data)
    return typing.cast(T, value)


def _record(kind: type, data: Any) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"expected an object for {kind.__name__}, got {type(data).__name__}")
    hints = _hints(kind)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(kind):
        if not field.init:
            continue
        if field.name in data:
            values[field.name] = _convert(hints[field.name], data[field.name])
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ValueError(f"{kind.__name__} without {field.name}")
    return kind(**values)


def _sequence(data: Any) -> list[Any]:
    if not isinstance(data, list | tuple):
        raise ValueError(f"expected a list, got {type(data).__name__}")
    return list(data)


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        return _convert(kinds[0], value) if len(kinds) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _record(hint, value)
    if hint is datetime:
        try:
            return datetime.fromisoformat(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not an ISO 8601 time: {value!r}") from exc
    if hint is Path:
        return Path(value)
    if origin is tuple:
        items = _sequence(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in items)
        return tuple(_convert(a, v) for a, v in zip(args, items, strict=False))
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        return {key: _convert(args[1], item) for key, item in value.items()}
    if origin in (list, frozenset, set):
        converted = [_convert(args[0], v) if args else v for v in _sequence(value)]
        return converted if origin is list else origin(converted)
    return value
