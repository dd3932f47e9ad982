"""The plan as a picture: utility per site and what was allocated there, layer by layer."""

from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no backend to choose, Agg renders the PNG
from matplotlib.patches import Rectangle

from layerlens.methods import METHODS, NONE, NONE_COLOUR
from layerlens.planning.choices import Choice, Plan

MAX_SITE_TICKS = 48  # more sites than this: ticks name layers, not sites
MAX_WIDTH_IN = 24


def plot_plan(plan: Plan, path: Path, title: str) -> Path:
    choices = sorted(plan.choices, key=lambda c: c.layer)  # stable: the sites' own order within a layer
    offered = {name for c in choices for name in c.allowed.split(",")} | {c.method for c in plan.adapted()}
    methods = [method for name, method in METHODS.items() if name in offered]  # in the order registered
    colours = {**{method.name: method.colour for method in methods}, NONE: NONE_COLOUR}
    kinds = list(dict.fromkeys(c.kind for c in choices))
    layers = sorted({c.layer for c in choices})
    many = len(choices) > MAX_SITE_TICKS
    fig = Figure(figsize=(min(MAX_WIDTH_IN, max(8, 0.28 * len(choices))), 7))
    top, bottom = fig.subplots(2, 1, sharex=True)
    xs = range(len(choices))
    top.bar(xs, [c.utility for c in choices], color="tab:purple")
    top.set_ylabel("utility (profiled)")
    top.set_title(title, fontsize=10)
    bottom.bar(xs, [c.size for c in choices], color=[colours[c.method] for c in choices])
    bottom.set_ylabel(f"size ({' / '.join(dict.fromkeys(method.size_name for method in methods))})")
    positions, labels = ticks(choices)
    bottom.set_xticks(positions, labels, rotation=0 if many else 90, fontsize=7)
    for boundary in layer_starts(choices)[1:]:
        for ax in (top, bottom):
            ax.axvline(boundary - 0.5, color="grey", linewidth=0.3 if many else 0.5)
    handles = [Rectangle((0, 0), 1, 1, color=colour) for colour in colours.values()]
    # Above the axes: over the bars it would hide the tallest.
    bottom.legend(handles, list(colours), loc="lower left", bbox_to_anchor=(0, 1.0), fontsize=8, ncols=4, frameon=False)
    used = ", ".join(f"{name} {100 * share:.1f}%" for name, share in plan.utilisation().items()) or "no budget"
    grouped = f"{len(choices)} sites ({', '.join(kinds)}) by layer" if many else "site"
    bottom.set_xlabel(f"{grouped} (layers {layers[0]}-{layers[-1]}); budget used: {used}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def layer_starts(choices: list[Choice]) -> list[int]:
    return [i for i, c in enumerate(choices) if i == 0 or c.layer != choices[i - 1].layer]


def ticks(choices: list[Choice]) -> tuple[list[int], list[str]]:
    """Where the x axis is labelled, and with what: each site by name, or, past MAX_SITE_TICKS sites, each layer
    (every few layers where they are many too) at its first site."""
    if len(choices) <= MAX_SITE_TICKS:
        return list(range(len(choices))), [c.site for c in choices]
    starts = layer_starts(choices)
    shown = starts[:: -(-len(starts) // MAX_SITE_TICKS)]
    return shown, [f"L{choices[i].layer}" for i in shown]
