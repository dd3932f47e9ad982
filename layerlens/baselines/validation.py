from layerlens.errors import LayerLensError


def require_positive(field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise LayerLensError(f"{field} must be a positive number, got {value!r}")


def require_int(field: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LayerLensError(f"{field} must be an integer >= {minimum}, got {value!r}")
    return value


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require_fraction(field: str, value, low_open: bool = False) -> None:
    if not (is_number(value) and (0 < value < 1 if low_open else 0 <= value < 1)):
        raise LayerLensError(f"{field} must be in {'(0' if low_open else '[0'}, 1), got {value!r}")
