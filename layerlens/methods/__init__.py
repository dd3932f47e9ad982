"""The site methods, one module each; importing this package registers them (see layerlens.methods.registry).

Torch-free at import: each method's torch side (layers/, peft) is imported when the method is applied.
"""

from layerlens.methods.registry import (
    METHODS,
    NONE,
    NONE_COLOUR,
    Build,
    Menu,
    Method,
    accepting,
    get_method,
    method_for,
    methods_for,
    register,
    unregister,
)

# isort: off
# Registered in this order: the order of the plot's legend, the report's columns and the default sizes.
from layerlens.methods import lora
from layerlens.methods import adapter
from layerlens.methods import prefix

# Offered only where baseline.planner.menu names them: each a peft adapter beside LoRA's (methods/linears.py).
from layerlens.methods import dora
from layerlens.methods import ia3
from layerlens.methods import loha
# isort: on

__all__ = [
    "METHODS",
    "NONE",
    "NONE_COLOUR",
    "Build",
    "Menu",
    "Method",
    "accepting",
    "adapter",
    "dora",
    "get_method",
    "ia3",
    "loha",
    "lora",
    "method_for",
    "methods_for",
    "prefix",
    "register",
    "unregister",
]
