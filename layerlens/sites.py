"""Candidate sites of a transformer encoder: where an adaptation method can be attached."""

from collections.abc import Collection
from dataclasses import dataclass, field

from torch import nn

from layerlens.errors import LayerLensError
from layerlens.methods import method_for

# Site kinds, in the order of a layer's sites: the linear projections, the attention and feed-forward block
# outputs, self-attention. Kinds are the same in every model family; where they sit is not. The methods each
# accepts are the registry's (layerlens.methods: each method lists its kinds).
SITE_KINDS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out", "attn_block", "ffn_block", "attention")
# A prefix's utility is read from the key and value projections it extends; any other site's from its own module.
PROFILED_KINDS = {"attention": ("key", "value")}


@dataclass(frozen=True)
class Family:
    """Where one model family keeps its encoder layers and, inside a layer, the module of each site kind."""

    name: str
    layers: str  # the encoder's list of layers: the end of its name in model.named_modules()
    paths: dict[str, str]  # site kind -> module path inside one layer
    refused: dict[str, str] = field(default_factory=dict)  # site kind -> why its method cannot work here


BERT = Family("bert", "encoder.layer", {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attn_out": "attention.output.dense",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "attn_block": "attention.output",
    "ffn_block": "output",
    "attention": "attention.self",
})
DEBERTA_V2 = Family("deberta-v2", "encoder.layer", {
    **BERT.paths,
    "query": "attention.self.query_proj",
    "key": "attention.self.key_proj",
    "value": "attention.self.value_proj",
}, refused={
    # DisentangledSelfAttention adds content-to-position and position-to-content scores, gathered by the
    # relative distance between each query and key token (modeling_deberta_v2.disentangled_attention_bias).
    "attention": "its disentangled attention adds relative-position scores that prefix keys, having no position, lack",
})
# config.model_type -> family; DeBERTa-v3 checkpoints are model type deberta-v2.
FAMILIES = {"bert": BERT, "roberta": BERT, "deberta-v2": DEBERTA_V2}


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


def model_family(model: nn.Module) -> Family:
    """The family of `model` (or of the encoder it wraps), from its config's model_type."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        raise LayerLensError(f"model: config.model_type {model_type!r} has no site table "
                             f"(supported: {', '.join(FAMILIES)})")
    return FAMILIES[model_type]


def encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The encoder's list of transformer layers and its name, e.g. ("encoder.encoder.layer", ...)."""
    family = model_family(model)
    for name, module in model.named_modules():
        if (name == family.layers or name.endswith("." + family.layers)) and isinstance(module, nn.ModuleList):
            return name, module
    raise LayerLensError(f"model: no encoder layer list (`{family.layers}`) found in {type(model).__name__}")


def discover_sites(model: nn.Module, kinds: list[str] | None = None,
                   offered: Collection[str] | None = None) -> list[Site]:
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
        raise LayerLensError(f"site kind {kind!r} ({method_for(kind, offered).name}) does not work on {family.name} "
                             f"models: {family.refused[kind]} (leave {kind} out of baseline.sites)")
    wanted = [k for k in SITE_KINDS if k not in family.refused] if kinds is None else kinds
    methods = {kind: method_for(kind, offered) for kind in wanted}
    prefix, layers = encoder_layers(model)
    sites = []
    for i, layer in enumerate(layers):
        for kind in wanted:
            path, method = family.paths[kind], methods[kind]
            module = layer.get_submodule(path)
            profiled = tuple(layer.get_submodule(family.paths[k]) for k in PROFILED_KINDS.get(kind, (kind,)))
            d_in, d_out = method.dims(module, profiled)
            sites.append(Site(f"L{i}.{kind}", i, kind, method.name, f"{prefix}.{i}.{path}",
                              f"{family.layers}.{i}.{path}", d_in, d_out, module, profiled))
    return sites
