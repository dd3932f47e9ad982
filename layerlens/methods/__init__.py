"""The site methods, one module each; importing this package registers them (see layerlens.methods.registry).

Torch-free at import: each method's torch side (layers/, peft) is imported when the method is applied.
"""

from layerlens.methods.registry import (METHODS, NONE, NONE_COLOUR, Build, Menu, Method, accepting, get_method,
                                        method_for, methods_for, register, unregister)

# isort: off
# Registered in this order: the order of the plot's legend, the report's columns and the default sizes.
from layerlens.methods import lora
from layerlens.methods import adapter
from layerlens.methods import prefix
# isort: on

__all__ = ["METHODS", "NONE", "NONE_COLOUR", "Build", "Menu", "Method", "accepting", "adapter", "get_method", "lora",
           "method_for", "methods_for", "prefix", "register", "unregister"]
