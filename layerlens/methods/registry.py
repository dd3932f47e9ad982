"""The registry of site methods: each module of layerlens.methods declares one Method and registers it here.

A Method is everything LayerLens knows of a method: the site kinds it accepts, the sizes it takes, what an option
of it costs, its colour in the plan's plot, and how it is applied to a model. The planner, the builder, the plot
and the report read it from here. Nothing here imports torch: the planner stays pure numbers, and a method's torch
side is imported when it is applied.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from layerlens.errors import LayerLensError

if TYPE_CHECKING:
    from torch import nn

    from layerlens.planning.costs import SiteSpec, Workload
    from layerlens.sites import Site

NONE = "none"  # the option that adapts nothing: not a method, never registered
NONE_COLOUR = "lightgrey"


@dataclass(frozen=True)
class Build:
    """What applying a plan needs besides the plan and the model: the task head's modules, trained in full, and
    LoRA's scale (lora_alpha = ratio * rank) and dropout."""

    head: tuple[str, ...]
    lora_alpha_ratio: float
    lora_dropout: float


@dataclass(frozen=True)
class Method:
    """One site method. Sizes run from 1 (size 0 is the option "none") to `max_size`, if it has one."""

    name: str
    kinds: tuple[str, ...]  # the site kinds it accepts (several methods may accept one kind)
    size_name: str  # what its size counts, e.g. "rank"
    colour: str  # its bars in the plan's plot (a matplotlib colour)
    # A site's (d_in, d_out) as this method sees it, from the site's module and the modules profiled for it.
    dims: Callable[[nn.Module, tuple[nn.Module, ...]], tuple[int, int]]
    # What an option of `size` at a site adds, before memory and latency are derived from it (planning/costs.py):
    # (trainable parameters, forward FLOPs per token, activations kept for the backward pass per batch).
    costs: Callable[[SiteSpec, int, Workload], tuple[float, float, float]]
    # How it is applied: exactly one of
    # - wrap(model, [(site, size), ...], build) -> model: at all of its sites at once, before any attach (peft's
    #   get_peft_model); the model it returns trains its parameters and build.head's, nothing else;
    # - attach(site, size): at one site, in the plan's order, after any wrap; what it adds trains.
    wrap: Callable[[nn.Module, list[tuple[Site, int]], Build], nn.Module] | None = None
    attach: Callable[[Site, int], object] | None = None
    sizes: tuple[int, ...] = tuple(range(1, 17))  # the sizes the planner offers unless baseline.planner.sizes says
    max_size: int | None = None
    bounded_by: str | None = None  # a task setting its sizes may not exceed (e.g. a prefix: max_length)

    def __post_init__(self):
        where = f"method {self.name!r}"
        if not isinstance(self.name, str) or not self.name.isidentifier() or self.name == NONE:
            raise LayerLensError(f"method name must be an identifier other than {NONE!r}, got {self.name!r}")
        if isinstance(self.kinds, str) or not isinstance(self.kinds, (tuple, list)) or not self.kinds \
                or not all(isinstance(kind, str) and kind for kind in self.kinds):
            raise LayerLensError(f"{where}: kinds must be a non-empty list of site kinds, got {self.kinds!r}")
        object.__setattr__(self, "kinds", tuple(self.kinds))
        for field in ("size_name", "colour"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field):
                raise LayerLensError(f"{where}: {field} must be a non-empty string, got {getattr(self, field)!r}")
        for field in ("dims", "costs"):
            if not callable(getattr(self, field)):
                raise LayerLensError(f"{where}: {field} must be a function, got {getattr(self, field)!r}")
        if (self.wrap is None) == (self.attach is None) or not callable(self.wrap or self.attach):
            raise LayerLensError(f"{where}: give exactly one of wrap and attach, a function")
        if self.max_size is not None and (isinstance(self.max_size, bool) or not isinstance(self.max_size, int)
                                          or self.max_size < 1):
            raise LayerLensError(f"{where}: max_size must be an integer >= 1 or None, got {self.max_size!r}")
        if not isinstance(self.sizes, (tuple, list)) or not self.sizes or not all(map(self.allows, self.sizes)):
            raise LayerLensError(f"{where}: sizes must be a non-empty list of integers {self.size_range}, "
                                 f"got {self.sizes!r}")
        object.__setattr__(self, "sizes", tuple(self.sizes))
        if self.bounded_by is not None and not (isinstance(self.bounded_by, str) and self.bounded_by):
            raise LayerLensError(f"{where}: bounded_by must name a task setting or be None, got {self.bounded_by!r}")

    @property
    def size_range(self) -> str:
        return ">= 1" if self.max_size is None else f"from 1 to {self.max_size}"

    def allows(self, size) -> bool:
        return (not isinstance(size, bool) and isinstance(size, int) and size >= 1
                and (self.max_size is None or size <= self.max_size))


METHODS: dict[str, Method] = {}  # name -> method, in the order registered


def register(method: Method) -> Method:
    if not isinstance(method, Method):
        raise LayerLensError(f"register takes a Method, got {method!r}")
    if method.name in METHODS:
        raise LayerLensError(f"method {method.name!r} is registered already")
    METHODS[method.name] = method
    return method


def unregister(name: str) -> Method:
    if name not in METHODS:
        raise LayerLensError(f"method {name!r} is not registered")
    return METHODS.pop(name)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise LayerLensError(f"method {name!r} is unknown (choose from: {', '.join(METHODS)})")
    return METHODS[name]


def accepting(kind: str) -> list[Method]:
    """Every registered method that accepts site kind `kind`, in the order registered."""
    return [method for method in METHODS.values() if kind in method.kinds]


def method_for(kind: str, offered: Collection[str] | None = None) -> Method:
    """The method a site of `kind` takes: the one registered method that accepts it, or, where several do, the
    one of them in `offered` (the methods the planner is given sizes for)."""
    methods = accepting(kind)
    if len(methods) > 1 and offered is not None:
        methods = [method for method in methods if method.name in offered]
    if len(methods) == 1:
        return methods[0]
    names = " and ".join(method.name for method in accepting(kind))
    if not names:
        raise LayerLensError(f"site kind {kind!r}: no registered method accepts it")
    raise LayerLensError(f"site kind {kind!r} is accepted by {names}: give sizes to exactly one of them "
                         "(baseline.planner.sizes)")
