"""Checking arguments at the boundary, once, in scikit-learn's `check_scalar` style: the
message names the argument, what it must be and what it got."""

from __future__ import annotations

import numbers
from typing import Any

from imgcls.errors import ConfigError

__all__ = ["check_scalar"]

_NAMES = {"int": "an integer", "float": "a number", "Real": "a number", "str": "a string"}


def check_scalar(
    value: Any,
    name: str,
    kind: type | tuple[type, ...] = numbers.Real,
    *,
    min_val: float | None = None,
    max_val: float | None = None,
    min_inclusive: bool = True,
    allow_none: bool = False,
) -> Any:
    """`value` when it is a `kind` within [min_val, max_val] (the lower bound open when
    `min_inclusive` is False); else ConfigError (a ValueError) naming `name`."""
    if value is None and allow_none:
        return value
    # numpy's integers are no `int`, but are `numbers.Integral`: accept them where int is.
    accepted = numbers.Integral if kind is int else kind
    if isinstance(value, bool) or not isinstance(value, accepted):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        expected = " or ".join(_NAMES.get(k.__name__, f"a {k.__name__}") for k in kinds)
        raise ConfigError(f"`{name}` must be {expected}, got {value!r}", parameters=(name,))
    too_low = min_val is not None and (value < min_val if min_inclusive else value <= min_val)
    too_high = max_val is not None and value > max_val
    if too_low or too_high:
        if min_val is not None and max_val is not None:
            bounds = f"in {'[' if min_inclusive else '('}{min_val}, {max_val}]"
        elif min_val is not None:
            bounds = f"at least {min_val}" if min_inclusive else f"above {min_val}"
        else:
            bounds = f"at most {max_val}"
        raise ConfigError(f"`{name}` must be {bounds}, got {value}", parameters=(name,))
    return value
