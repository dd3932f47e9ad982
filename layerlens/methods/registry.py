"""The registry of site methods: each module of layerlens.methods declares one Method and registers it here.

A Method is everything LayerLens knows of a method: the site kinds it accepts, the sizes it takes, what an option
of it costs, its colour in the plan's plot, and how it is applied to a model. The planner, the builder, the plot
and the report read it from here. Nothing here imports torch: the planner stays pure numbers, and a method's torch
side is imported when it is applied.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from layerlens.errors import LayerLensError
from layerlens.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from layerlens.lens.sites import Site
    from layerlens.planning.costs import SiteSpec, Workload

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
    # The kinds where it is on the default menu (None: all its kinds; () for a method offered only where
    # baseline.planner.menu names it). Elsewhere among its kinds it is offered only where the menu names it.
    default_kinds: tuple[str, ...] | None = None
    # A kind whose option adapts the modules of other site kinds of its layer (LoRA on self-attention: its query,
    # key and value projections) -> those kinds; a site list holding both, with the method on the menu, is refused.
    covers: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    def __post_init__(self):
        where = f"method {self.name!r}"
        if not isinstance(self.name, str) or not self.name.isidentifier() or self.name == NONE:
            raise LayerLensError(f"method name must be an identifier other than {NONE!r}, got {self.name!r}")
        if (
            isinstance(self.kinds, str)
            or not isinstance(self.kinds, (tuple, list))
            or not self.kinds
            or not all(isinstance(kind, str) and kind for kind in self.kinds)
        ):
            raise LayerLensError(f"{where}: kinds must be a non-empty list of site kinds, got {self.kinds!r}")
        object.__setattr__(self, "kinds", tuple(self.kinds))
        for attribute in ("size_name", "colour"):
            if not isinstance(getattr(self, attribute), str) or not getattr(self, attribute):
                raise LayerLensError(
                    f"{where}: {attribute} must be a non-empty string, got {getattr(self, attribute)!r}"
                )
        for attribute in ("dims", "costs"):
            if not callable(getattr(self, attribute)):
                raise LayerLensError(f"{where}: {attribute} must be a function, got {getattr(self, attribute)!r}")
        if (self.wrap is None) == (self.attach is None) or not callable(self.wrap or self.attach):
            raise LayerLensError(f"{where}: give exactly one of wrap and attach, a function")
        if self.max_size is not None and (
            isinstance(self.max_size, bool) or not isinstance(self.max_size, int) or self.max_size < 1
        ):
            raise LayerLensError(f"{where}: max_size must be an integer >= 1 or None, got {self.max_size!r}")
        if not isinstance(self.sizes, (tuple, list)) or not self.sizes or not all(map(self.allows, self.sizes)):
            raise LayerLensError(
                f"{where}: sizes must be a non-empty list of integers {self.size_range}, got {self.sizes!r}"
            )
        object.__setattr__(self, "sizes", tuple(self.sizes))
        if self.bounded_by is not None and not (isinstance(self.bounded_by, str) and self.bounded_by):
            raise LayerLensError(f"{where}: bounded_by must name a task setting or be None, got {self.bounded_by!r}")
        defaults = self.kinds if self.default_kinds is None else self.default_kinds
        if (
            isinstance(defaults, str)
            or not isinstance(defaults, (tuple, list))
            or not all(kind in self.kinds for kind in defaults)
        ):
            raise LayerLensError(
                f"{where}: default_kinds must be a list of its kinds ({', '.join(self.kinds)}) "
                f"or None, got {self.default_kinds!r}"
            )
        object.__setattr__(self, "default_kinds", tuple(defaults))
        if not isinstance(self.covers, Mapping) or not all(
            kind in self.kinds
            and isinstance(covered, (tuple, list))
            and covered
            and all(isinstance(k, str) and k and k != kind for k in covered)
            for kind, covered in self.covers.items()
        ):
            raise LayerLensError(
                f"{where}: covers must map some of its kinds to the other site kinds their option "
                f"adapts, got {self.covers!r}"
            )
        object.__setattr__(self, "covers", {kind: tuple(covered) for kind, covered in self.covers.items()})

    @property
    def size_range(self) -> str:
        return ">= 1" if self.max_size is None else f"from 1 to {self.max_size}"

    def allows(self, size) -> bool:
        return (
            not isinstance(size, bool)
            and isinstance(size, int)
            and size >= 1
            and (self.max_size is None or size <= self.max_size)
        )


METHODS: Registry[Method] = Registry("method", Method)  # name -> method, in the order registered
register, unregister = METHODS.register, METHODS.unregister


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise LayerLensError(f"method {name!r} is unknown (choose from: {', '.join(METHODS)})")
    return METHODS[name]


def accepting(kind: str) -> list[Method]:
    """Every registered method that accepts site kind `kind`, in the order registered."""
    return [method for method in METHODS.values() if kind in method.kinds]


@dataclass(frozen=True)
class Menu(Collection[str]):
    """The methods offered at each site kind. As a collection, the methods given sizes (`sized`, in the order
    registered); `kinds`: site kind -> the methods offered there (baseline.planner.menu). A kind it does not name
    is offered its default methods among the sized ones (see methods_for)."""

    sized: tuple[str, ...]
    kinds: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.sized

    def __iter__(self) -> Iterator[str]:
        return iter(self.sized)

    def __len__(self) -> int:
        return len(self.sized)


def methods_for(kind: str, offered: Collection[str] | None = None) -> list[Method]:
    """The methods a site of `kind` is offered, the first its own (Site.method): where `offered` is a Menu naming
    the kind, those it names; otherwise the methods with `kind` among their default kinds, limited to those in
    `offered` (the methods the planner is given sizes for) where any is, else the first of them (offered no size:
    its sites take none)."""
    if isinstance(offered, Menu) and kind in offered.kinds:
        return [get_method(name) for name in offered.kinds[kind]]
    # default_kinds: a tuple once __post_init__ has run
    defaults = [method for method in METHODS.values() if kind in cast(tuple[str, ...], method.default_kinds)]
    if not defaults:
        others = " or ".join(method.name for method in accepting(kind))
        if not others:
            raise LayerLensError(f"site kind {kind!r}: no registered method accepts it")
        raise LayerLensError(f"site kind {kind!r} has no default method: name {others} in baseline.planner.menu.{kind}")
    sized = defaults if offered is None else [method for method in defaults if method.name in offered]
    return sized or defaults[:1]


def method_for(kind: str, offered: Collection[str] | None = None) -> Method:
    """The method a site of `kind` takes first (see methods_for): with one method offered, the one it takes."""
    return methods_for(kind, offered)[0]
