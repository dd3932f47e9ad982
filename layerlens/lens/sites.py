"""Candidate sites of a transformer encoder: where an adaptation method can be attached.

The site kinds and, per model family, the module each kind sits in are the family table's
(layerlens/models/families.py); the methods each kind accepts are the method registry's (layerlens/methods/).
"""

from collections.abc import Collection
from dataclasses import dataclass

from torch import nn

from layerlens.errors import LayerLensError
from layerlens.methods import method_for
from layerlens.methods.linears import linear_shape
from layerlens.models.families import SITE_KINDS, model_family

# A prefix's utility is read from the key and value projections it extends; any other site's from its own module.
PROFILED_KINDS = {"attention": ("key", "value")}


@dataclass
class Site:
    name: str  # e.g. "L3.ffn_in"
    layer: int
    kind: str
    method: str  # the method it takes: a name in layerlens.methods
    path: str  # the module's name in model.named_modules()
    target: str  # its name from the layer list on (e.g. "encoder.layer.3.intermediate.dense"): peft matches it
    d_in: int
    d_out: int
    module: nn.Module
    profiled: tuple[nn.Module, ...]  # modules whose parameters' gradients measure the site's utility


def encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The encoder's list of transformer layers and its name, e.g. ("encoder.encoder.layer", ...)."""
    family = model_family(model)
    for name, module in model.named_modules():
        if (name == family.layers or name.endswith("." + family.layers)) and isinstance(module, nn.ModuleList):
            return name, module
    raise LayerLensError(f"model: no encoder layer list (`{family.layers}`) found in {type(model).__name__}")


def discover_sites(
    model: nn.Module, kinds: list[str] | None = None, offered: Collection[str] | None = None
) -> list[Site]:
    """Every candidate site of every encoder layer, in layer order, limited to `kinds` when given; each takes the
    method its kind accepts (where several methods accept it, the one of them in `offered`: see method_for).

    All kinds (`kinds` None) leaves out those the model's family refuses; naming a refused kind is an error.
    """
    family = model_family(model)
    unknown = [k for k in kinds or [] if k not in SITE_KINDS]
    if unknown:
        raise LayerLensError(f"site kind {unknown[0]!r} is unknown (choose from: {', '.join(SITE_KINDS)})")
    refused = [k for k in kinds or [] if k in family.refused]
    if refused:
        kind = refused[0]
        raise LayerLensError(
            f"site kind {kind!r} ({method_for(kind, offered).name}) does not work on {family.name} "
            f"models: {family.refused[kind]} (leave {kind} out of baseline.sites)"
        )
    wanted = list(family.kinds) if kinds is None else kinds
    methods = {kind: method_for(kind, offered) for kind in wanted}
    prefix, layers = encoder_layers(model)
    sites = []
    for i, layer in enumerate(layers):
        for kind in wanted:
            path, method = family.paths[kind], methods[kind]
            module = layer.get_submodule(path)
            profiled = tuple(layer.get_submodule(family.paths[k]) for k in PROFILED_KINDS.get(kind, (kind,)))
            d_in, d_out = method.dims(module, profiled)
            sites.append(
                Site(
                    f"L{i}.{kind}",
                    i,
                    kind,
                    method.name,
                    f"{prefix}.{i}.{path}",
                    family.target(i, kind),
                    d_in,
                    d_out,
                    module,
                    profiled,
                )
            )
    return sites


def layer_targets(model: nn.Module, kinds: list[str], field_name: str) -> list[str]:
    """The modules of the site kinds `kinds` in every encoder layer, named as peft matches them (a site's target),
    for a baseline that adapts whole linear layers through peft (lora, adalora). `field_name` is the setting
    that named the kinds: a kind the family refuses, or whose module is not a linear layer, is refused naming it."""
    family = model_family(model)
    refused = [kind for kind in kinds if kind in family.refused]
    if refused:
        raise LayerLensError(
            f"{field_name}: site kind {refused[0]!r} does not work on {family.name} models: "
            f"{family.refused[refused[0]]}"
        )
    _, layers = encoder_layers(model)
    for kind in kinds:
        module = layers[0].get_submodule(family.paths[kind])
        if linear_shape(module) is None:
            raise LayerLensError(
                f"{field_name}: site kind {kind!r} is not a linear layer on {family.name} models "
                f"({family.paths[kind]} is a {type(module).__name__})"
            )
    return [family.target(i, kind) for i in range(len(layers)) for kind in kinds]


def base_model(model: nn.Module) -> tuple[str, nn.Module]:
    """The module holding the encoder's layer list (BertModel, ...) and its name ("" for `model` itself)."""
    name = encoder_layers(model)[0][: -len(model_family(model).layers)].rstrip(".")
    return name, model.get_submodule(name)
