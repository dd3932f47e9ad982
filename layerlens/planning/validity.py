"""How well the utility a plan was made with predicts what fine-tuning each site alone gains, measured.

`experiments/utility_validity.py` trains each site alone (its method at one size, the same steps, seed and data for
all) and appends, per site, the selection-split loss it reached to a JSONL file, after one reference line (site null:
the task head alone). Given that file (`baseline.validity_gains`), a plan's record carries the Spearman correlation
between the utilities it valued its sites by and the measured gains (the reference's loss minus the site's) over the
sites measured: the validity of the utility it planned with, which differs between the profile and each control.
"""

import json
from pathlib import Path

from scipy.stats import spearmanr

from layerlens.errors import LayerLensError

FIELD = "baseline.validity_gains"


def measured_gains(path: str | Path) -> dict[str, float]:
    """Site name -> the drop in selection loss that training the site alone gave, from a gains JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise LayerLensError(f"{FIELD}: no file {path}")
    reference, losses = None, {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            site, loss = row["site"], float(row["selection_loss"])
        except (ValueError, KeyError, TypeError) as err:
            raise LayerLensError(
                f"{FIELD}: {path} line {number} is not a measured gain "
                f"(a JSON object with site and selection_loss): {err}"
            ) from None
        if site is None:
            reference = loss
        else:
            losses[site] = loss
    if reference is None:
        raise LayerLensError(f"{FIELD}: {path} has no reference line (site null, the task head alone)")
    return {site: reference - loss for site, loss in losses.items()}


def utility_validity(utilities: dict[str, float], gains: dict[str, float]) -> dict[str, float]:
    """Spearman correlation (and its p-value) between the sites' utilities and their measured gains, over the sites
    measured; refused where fewer than three of them were."""
    measured = [site for site in utilities if site in gains]
    if len(measured) < 3:
        raise LayerLensError(
            f"{FIELD}: {len(measured)} of the plan's {len(utilities)} sites were measured; "
            "a rank correlation needs at least 3"
        )
    result = spearmanr([utilities[site] for site in measured], [gains[site] for site in measured])
    return {
        "plan/utility_validity": float(result.statistic),
        "plan/utility_validity_p": float(result.pvalue),
        "plan/utility_validity_sites": float(len(measured)),
    }
