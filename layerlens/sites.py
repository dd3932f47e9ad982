"""Candidate sites of a transformer encoder: where an adaptation method can be attached."""

from dataclasses import dataclass

from torch import nn

from layerlens.errors import LayerLensError

# Site kind -> (path inside one encoder layer, method that attaches there, modules whose parameters the
# site's profile reads). Linear sites take LoRA; block outputs take an adapter; self-attention takes a prefix.
BERT_SITES = {
    "query": ("attention.self.query", "lora", ("attention.self.query",)),
    "key": ("attention.self.key", "lora", ("attention.self.key",)),
    "value": ("attention.self.value", "lora", ("attention.self.value",)),
    "attn_out": ("attention.output.dense", "lora", ("attention.output.dense",)),
    "ffn_in": ("intermediate.dense", "lora", ("intermediate.dense",)),
    "ffn_out": ("output.dense", "lora", ("output.dense",)),
    "attn_block": ("attention.output", "adapter", ("attention.output",)),
    "ffn_block": ("output", "adapter", ("output",)),
    "attention": ("attention.self", "prefix", ("attention.self.key", "attention.self.value")),
}


@dataclass
class Site:
    name: str  # e.g. "L3.ffn_in"
    layer: int
    kind: str
    method: str
    path: str  # the module's name in model.named_modules()
    d_in: int
    d_out: int
    module: nn.Module
    profiled: tuple[nn.Module, ...]  # modules whose parameters' gradients measure the site's utility


def encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The encoder's list of transformer layers and its name, e.g. ("encoder.encoder.layer", ...)."""
    for name, module in model.named_modules():
        if name.endswith("encoder.layer") and isinstance(module, nn.ModuleList):
            return name, module
    raise LayerLensError(f"model: no encoder layer list (`encoder.layer`) found in {type(model).__name__}")


def _linear_dims(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    dense = getattr(module, "dense", None)
    if isinstance(dense, nn.Linear):  # a block output: its width is that of its projection's output
        return dense.out_features, dense.out_features
    hidden = module.query.in_features  # self-attention: keys and values of width hidden
    return hidden, hidden


def discover_sites(model: nn.Module, kinds: list[str] | None = None) -> list[Site]:
    """Every candidate site of every encoder layer, in layer order, limited to `kinds` when given."""
    prefix, layers = encoder_layers(model)
    wanted = list(BERT_SITES) if kinds is None else kinds
    unknown = [k for k in wanted if k not in BERT_SITES]
    if unknown:
        raise LayerLensError(f"site kind {unknown[0]!r} is unknown (choose from: {', '.join(BERT_SITES)})")
    sites = []
    for i, layer in enumerate(layers):
        for kind in wanted:
            path, method, profiled = BERT_SITES[kind]
            module = layer.get_submodule(path)
            d_in, d_out = _linear_dims(module)
            sites.append(Site(f"L{i}.{kind}", i, kind, method, f"{prefix}.{i}.{path}", d_in, d_out, module,
                              tuple(layer.get_submodule(p) for p in profiled)))
    return sites
