"""The model-family table: where each model family keeps what LayerLens adapts, read by everything that adapts.

One `Family` per family, registered in `FAMILIES` by name and recognised by its config's `model_type`. Who reads
it: `lens/sites.py` (the module of each site kind in each layer: discover_sites, layer_targets), the baselines `lora`
and `adalora` (their peft target modules: the family's modules of the site kinds they name), the frozen-bottom
cache (the layer list, the embeddings, whether its bottom layers can be run once) and, through `lens/sites.py`,
`lens/apply.py` (the task head: what lies outside the encoder). Nothing here imports torch.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from layerlens.errors import LayerLensError
from layerlens.registry import Registry

# Site kinds, in the order of a layer's sites: the linear projections, the attention and feed-forward block
# outputs, self-attention. Kinds are the same in every model family; where they sit is each family's.
SITE_KINDS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out", "attn_block", "ffn_block", "attention")
# The kinds whose module is one linear map (what peft's LoRA and AdaLoRA adapt).
LINEAR_KINDS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")


@dataclass(frozen=True)
class Family:
    """Where one model family keeps its encoder layers and, inside a layer, the module of each site kind.

    `layers` and `embeddings` are module paths inside the family's base model (BertModel, RobertaModel, ...), the
    module a task model wraps; `paths` inside one layer. Every site kind is either in `paths` or in `refused`.
    """

    name: str
    model_types: tuple[str, ...]  # the config.model_type values it is recognised by
    layers: str  # the encoder's list of layers: the end of its name in model.named_modules()
    embeddings: str  # the module whose output the first layer reads
    paths: dict[str, str]  # site kind -> module path inside one layer
    refused: dict[str, str] = field(default_factory=dict)  # site kind -> why it cannot be adapted here
    # Why the frozen-bottom cache cannot serve its bottom layers (training/frozen_bottom.py), None where it can:
    # its layers run one after another on the hidden states and what the base model passes every layer alike
    # (the attention mask; a decoder's rotary position embeddings), and the embeddings module makes their input.
    cache_refused: str | None = None
    # A decoder: causal attention, its sequence classifier scores the last real token (found by the padding token
    # id in the config), positions counted from the attention mask (layerlens/models/decoders.py).
    causal: bool = False

    def __post_init__(self):
        where = f"family {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise LayerLensError(f"family name must be a non-empty string, got {self.name!r}")
        if (
            isinstance(self.model_types, str)
            or not isinstance(self.model_types, (tuple, list))
            or not self.model_types
            or not all(isinstance(t, str) and t for t in self.model_types)
        ):
            raise LayerLensError(f"{where}: model_types must be a non-empty list of strings, got {self.model_types!r}")
        object.__setattr__(self, "model_types", tuple(self.model_types))
        for name in ("layers", "embeddings"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise LayerLensError(f"{where}: {name} must be a module path, got {getattr(self, name)!r}")
        unknown = [kind for kind in [*self.paths, *self.refused] if kind not in SITE_KINDS]
        if unknown:
            raise LayerLensError(f"{where}: site kind {unknown[0]!r} is unknown (choose from: {', '.join(SITE_KINDS)})")
        both = [kind for kind in self.paths if kind in self.refused]
        neither = [kind for kind in SITE_KINDS if kind not in self.paths and kind not in self.refused]
        if both or neither:
            raise LayerLensError(
                f"{where}: site kind {(both or neither)[0]!r} must have either a path or a reason "
                f"it is refused, {'not both' if both else 'got neither'}"
            )
        bad = [kind for kind, path in self.paths.items() if not isinstance(path, str) or not path]
        if bad:
            raise LayerLensError(
                f"{where}: the path of site kind {bad[0]!r} must be a module path, got {self.paths[bad[0]]!r}"
            )

    @property
    def kinds(self) -> tuple[str, ...]:
        """The site kinds it takes, in SITE_KINDS's order."""
        return tuple(kind for kind in SITE_KINDS if kind in self.paths)

    def target(self, layer: int, kind: str) -> str:
        """A site's module name from the layer list on, e.g. "encoder.layer.3.intermediate.dense": peft matches it."""
        return f"{self.layers}.{layer}.{self.paths[kind]}"


BERT = Family(
    "bert",
    ("bert",),
    layers="encoder.layer",
    embeddings="embeddings",
    paths={
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attn_out": "attention.output.dense",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
        "attn_block": "attention.output",
        "ffn_block": "output",
        "attention": "attention.self",
    },
)
ROBERTA = replace(BERT, name="roberta", model_types=("roberta",))
# DeBERTa-v3 checkpoints are model type deberta-v2.
DEBERTA_V2 = Family(
    "deberta-v2",
    ("deberta-v2",),
    layers="encoder.layer",
    embeddings="embeddings",
    paths={
        **{kind: path for kind, path in BERT.paths.items() if kind != "attention"},
        "query": "attention.self.query_proj",
        "key": "attention.self.key_proj",
        "value": "attention.self.value_proj",
    },
    refused={
        # DisentangledSelfAttention adds content-to-position and position-to-content scores, gathered by the
        # relative distance between each query and key token (modeling_deberta_v2.disentangled_attention_bias).
        "attention": "its disentangled attention adds relative-position scores that prefix keys, having no position, "
        "lack",
    },
    cache_refused="its encoder passes relative positions to every layer and convolves after the first",
)

# Decoders. Llama's layers (also Mistral's, and Qwen2's, which adds biases to q_proj, k_proj and v_proj): a
# self_attn with q_proj, k_proj, v_proj, o_proj (k_proj and v_proj num_key_value_heads * head_dim wide: grouped-query
# attention) and a gated mlp, down_proj(act(gate_proj(x)) * up_proj(x)). ffn_in is up_proj, the linear that carries
# the input to the gate's product; gate_proj is no site kind (one module per kind): it is adapted by full_ft alone.
# The blocks are self_attn and mlp: an adapter on their output, before the layer adds the residual. A prefix on
# self_attn: keys and values as wide as k_proj's output, not rotated (methods/layers/prefix.py).
LLAMA = Family(
    "llama",
    ("llama",),
    layers="layers",
    embeddings="embed_tokens",
    paths={
        "query": "self_attn.q_proj",
        "key": "self_attn.k_proj",
        "value": "self_attn.v_proj",
        "attn_out": "self_attn.o_proj",
        "ffn_in": "mlp.up_proj",
        "ffn_out": "mlp.down_proj",
        "attn_block": "self_attn",
        "ffn_block": "mlp",
        "attention": "self_attn",
    },
    causal=True,
)
MISTRAL = replace(LLAMA, name="mistral", model_types=("mistral",))
QWEN2 = replace(LLAMA, name="qwen2", model_types=("qwen2",))
# GPT-2's layers (h): attn.c_attn projects query, key and value at once (a Conv1D, hidden -> 3 x hidden): it is the
# site kind query, and key and value, inside it, have no module of their own. Its position embeddings (wpe) are
# added in GPT2Model.forward, outside the embeddings module (wte) the cache would run.
GPT2 = Family(
    "gpt2",
    ("gpt2",),
    layers="h",
    embeddings="wte",
    paths={
        "query": "attn.c_attn",
        "attn_out": "attn.c_proj",
        "ffn_in": "mlp.c_fc",
        "ffn_out": "mlp.c_proj",
        "attn_block": "attn",
        "ffn_block": "mlp",
    },
    refused={
        "key": "its attn.c_attn projects query, key and value in one Conv1D: adapt it whole as the site kind query",
        "value": "its attn.c_attn projects query, key and value in one Conv1D: adapt it whole as the site kind query",
        "attention": "its fused attn.c_attn has no separate key and value projections to extend with a prefix",
    },
    cache_refused="GPT2Model adds the position embeddings (wpe) to the token embeddings (wte) in its forward, "
    "outside the embeddings module the cache runs",
    causal=True,
)

FAMILIES: Registry[Family] = Registry("family", Family)  # name -> family, in the order registered
unregister_family = FAMILIES.unregister


def register_family(family: Family) -> Family:
    taken = [t for t in family.model_types if t in model_types()] if isinstance(family, Family) else []
    if taken and family.name not in FAMILIES:
        raise LayerLensError(f"family {family.name!r}: model type {taken[0]!r} is {model_types()[taken[0]].name}'s")
    return FAMILIES.register(family)


def model_types() -> dict[str, Family]:
    """config.model_type -> its family, for every registered family."""
    return {model_type: family for family in FAMILIES.values() for model_type in family.model_types}


def model_family(model) -> Family:
    """The family of `model` (or of the encoder it wraps), from its config's model_type."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    families = model_types()
    if model_type not in families:
        raise LayerLensError(
            f"model: config.model_type {model_type!r} has no family in layerlens/models/families.py "
            f"(supported: {', '.join(families)})"
        )
    return families[model_type]


def check_kinds(field_name: str, kinds: Iterable[str], allowed: tuple[str, ...] = SITE_KINDS) -> None:
    """Raise, naming `field_name`, unless `kinds` is a non-empty list of distinct kinds out of `allowed`."""
    if isinstance(kinds, str) or not isinstance(kinds, (list, tuple)) or not kinds:
        raise LayerLensError(
            f"{field_name} must be a non-empty list of site kinds (choose from: {', '.join(allowed)}), got {kinds!r}"
        )
    unknown = [kind for kind in kinds if kind not in allowed]
    if unknown:
        raise LayerLensError(f"{field_name}: site kind {unknown[0]!r} is not one of {', '.join(allowed)}")
    repeated = [kind for i, kind in enumerate(kinds) if kind in kinds[:i]]
    if repeated:
        raise LayerLensError(f"{field_name}: {repeated[0]} is listed twice")


for _family in (BERT, ROBERTA, DEBERTA_V2, LLAMA, MISTRAL, QWEN2, GPT2):
    register_family(_family)
