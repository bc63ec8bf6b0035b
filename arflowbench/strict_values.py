"""Values pydantic's lax mode would accept but a spec must not: booleans as numbers, non-finite
floats.

Lax pydantic turns ``train.steps = true`` into 1 and accepts ``train.lr = inf``. Full strict mode
would also refuse what TOML can only spell one way (a list for a tuple, a string for a path), so
instead this walks the raw values against the field annotations before validation:

- a boolean where the field takes an int or a float (and not a bool) is refused;
- a float that is inf or nan is refused anywhere (also inside free-form option dicts).

`config.Strict` runs it on every spec model; `Registry.validate_options` on every plugin's options.
"""

from __future__ import annotations

import math
import typing
from typing import Any

from pydantic import BaseModel


def _leaves(ann: Any) -> set[Any]:
    """The plain types an annotation admits (Union, Optional and Annotated unwrapped)."""
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _leaves(typing.get_args(ann)[0])
    if origin is typing.Union or type(ann).__name__ == "UnionType":
        return set().union(*(_leaves(a) for a in typing.get_args(ann)))
    return {origin or ann}


def _items(ann: Any) -> list[Any]:
    """Element annotations of list / tuple / set fields (one per position for fixed tuples)."""
    out = []
    for leaf_ann in _unions(ann):
        origin, args = typing.get_origin(leaf_ann), typing.get_args(leaf_ann)
        if origin in (list, set, frozenset) and args:
            out.append(args[0])
        elif origin is tuple and args:
            out.extend(a for a in args if a is not Ellipsis)
    return out


def _unions(ann: Any) -> list[Any]:
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _unions(typing.get_args(ann)[0])
    if origin is typing.Union or type(ann).__name__ == "UnionType":
        return [x for a in typing.get_args(ann) for x in _unions(a)]
    return [ann]


def check_value(ann: Any, value: Any, loc: str) -> None:
    """Raise ValueError for a boolean in a numeric field or a non-finite float (recursive)."""
    if isinstance(value, bool):
        leaves = _leaves(ann)
        if bool not in leaves and (int in leaves or float in leaves):
            raise ValueError(f"{loc}: expected a number, got the boolean {str(value).lower()}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{loc}: must be a finite number, got {value}")
    elif isinstance(value, (list, tuple)):
        items = _items(ann)
        for i, v in enumerate(value):
            check_value(items[min(i, len(items) - 1)] if items else Any, v, f"{loc}[{i}]")
    elif isinstance(value, dict):
        models = [a for a in _leaves(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        if models:
            check_fields(models[0], value, loc)
        else:
            for k, v in value.items():
                check_value(Any, v, f"{loc}.{k}")


def check_fields(model: type[BaseModel], data: Any, where: str = "") -> None:
    """`check_value` on every key of `data` that is a field of `model` (others are left to
    pydantic, which refuses unknown keys)."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        field = model.model_fields.get(key)
        check_value(field.annotation if field else Any, value, f"{where}.{key}" if where else key)
