"""Checks of config values: each raises one line that starts with the field's name and says what it allows."""

import math

from layerlens.errors import LayerLensError


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require_positive(field: str, value) -> None:
    if not (is_number(value) and math.isfinite(value) and value > 0):
        raise LayerLensError(f"{field} must be a positive number, got {value!r}")


def require_nonnegative(field: str, value) -> None:
    if not (is_number(value) and math.isfinite(value) and value >= 0):
        raise LayerLensError(f"{field} must be a number >= 0, got {value!r}")


def require_int(field: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LayerLensError(f"{field} must be an integer >= {minimum}, got {value!r}")
    return value


def require_fraction(field: str, value, low_open: bool = False) -> None:
    if not (is_number(value) and (0 < value < 1 if low_open else 0 <= value < 1)):
        raise LayerLensError(f"{field} must be in {'(0' if low_open else '[0'}, 1), got {value!r}")


def require_choice(field: str, value, choices) -> None:
    if value not in choices:
        raise LayerLensError(f"{field} must be one of {', '.join(map(str, choices))}, got {value!r}")


def at_least(x: float) -> str:
    """x in a message that asks for a value >= x: whole numbers as they are, others rounded up to 4 digits."""
    if x == int(x):
        return str(int(x))
    scale = 10.0 ** (math.floor(math.log10(x)) - 3)
    return f"{math.ceil(x / scale) * scale:.4g}"


def shown(x: float) -> str:
    """A number in a message: whole numbers without a decimal point or exponent."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
