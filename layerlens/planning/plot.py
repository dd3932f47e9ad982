"""The plan as a picture: utility per site and what was allocated there, layer by layer."""

from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no backend to choose, Agg renders the PNG
from matplotlib.patches import Rectangle

from layerlens.methods import METHODS, NONE, NONE_COLOUR
from layerlens.planning.choices import Plan


def plot_plan(plan: Plan, path: Path, title: str) -> Path:
    offered = {name for c in plan.choices for name in c.allowed.split(",")} | {c.method for c in plan.adapted()}
    methods = [method for name, method in METHODS.items() if name in offered]  # in the order registered
    colours = {**{method.name: method.colour for method in methods}, NONE: NONE_COLOUR}
    kinds = list(dict.fromkeys(c.kind for c in plan.choices))
    layers = sorted({c.layer for c in plan.choices})
    fig = Figure(figsize=(max(8, 0.28 * len(plan.choices)), 7))
    top, bottom = fig.subplots(2, 1, sharex=True)
    xs = range(len(plan.choices))
    top.bar(xs, [c.utility for c in plan.choices], color="tab:purple")
    top.set_ylabel("utility (profiled)")
    top.set_title(title, fontsize=10)
    bottom.bar(xs, [c.size for c in plan.choices], color=[colours[c.method] for c in plan.choices])
    bottom.set_ylabel(f"size ({' / '.join(dict.fromkeys(method.size_name for method in methods))})")
    bottom.set_xticks(list(xs), [c.site for c in plan.choices], rotation=90, fontsize=7)
    for boundary in range(len(kinds), len(plan.choices), len(kinds)):
        for ax in (top, bottom):
            ax.axvline(boundary - 0.5, color="grey", linewidth=0.5)
    handles = [Rectangle((0, 0), 1, 1, color=colour) for colour in colours.values()]
    # Above the axes: over the bars it would hide the tallest.
    bottom.legend(handles, list(colours), loc="lower left", bbox_to_anchor=(0, 1.0), fontsize=8, ncols=4, frameon=False)
    used = ", ".join(f"{name} {100 * share:.1f}%" for name, share in plan.utilisation().items()) or "no budget"
    bottom.set_xlabel(f"site (layers {layers[0]}-{layers[-1]}); budget used: {used}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
