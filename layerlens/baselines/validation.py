from layerlens.errors import LayerLensError


def require_positive(field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise LayerLensError(f"{field} must be a positive number, got {value!r}")
