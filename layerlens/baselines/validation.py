"""The config checks, kept here for the baselines; they live in layerlens.validation (no torch) for the planner."""

from layerlens.validation import (  # noqa: F401
    is_number,
    require_choice,
    require_fraction,
    require_int,
    require_nonnegative,
    require_positive,
)
