"""Timing training steps on the machine at hand, for the measured time model (layerlens/planning/step_times.py).

The configurations timed: full fine-tuning; the frozen backbone with backpropagation stopping at a few depths (the
smallest tensor of that layer trains, with the task head), and the same with the frozen-layer cache serving the
layers below, once it holds the batches (both made non-increasing with depth); and for each site kind and method
offered, that method at its smallest and largest offered size at every layer's site of the kind, against the
backbone with backpropagation to layer 0 (what it adds, per site). Each is a copy of the model trained for `steps`
AdamW steps after one untimed step; configurations compared with each other take turns on each batch (a round), so
that the machine's drift falls alike on all of them, and an option's added time is the median over rounds of its
step less the backbone's. The batches are the first few of a seed-0 pass over the training data, each cut or padded
to that epoch's mean padded length: a typical step, the same batches for every run seed. The results are cached
per machine, device, model, batches' shape, options and steps (a JSON file in `folder`), so that a sweep times them
once. Steps are timed on the device training will use (the pipeline's training_device), on copies of the model.
The global random state is restored afterwards: calibrating leaves a run's draws as they would be without it.
"""

import copy
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from layerlens.lens.apply import task_head, train_only
from layerlens.lens.sites import discover_sites, encoder_layers
from layerlens.methods import Build, Menu, get_method, methods_for
from layerlens.planning.step_times import StepTimes, fit_line
from layerlens.training.frozen_bottom import FrozenBottomCache

log = logging.getLogger(__name__)
FORMAT = 2  # of the cached files: a change in what is timed makes earlier files stale
PAD = {"labels": -100}  # what a typical batch's tensors are padded with (0 where not named)


def typical_batches(batches: Iterable[dict], count: int) -> list[dict]:
    """The first `count` of `batches` (a whole epoch), each cut or padded on the right to the epoch's mean padded
    length: every tensor as long as its input_ids (labels padded with -100, everything else with 0)."""
    kept: list[dict] = []
    lengths: list[int] = []
    for batch in batches:
        lengths.append(int(batch["input_ids"].shape[1]))
        if len(kept) < count:
            kept.append(batch)
    if not kept:
        raise ValueError("calibration needs at least one training batch")
    length = round(statistics.mean(lengths))
    return [resized(batch, length) for batch in kept]


def resized(batch: dict, length: int) -> dict:
    width = batch["input_ids"].shape[1]
    out = {}
    for name, value in batch.items():
        if torch.is_tensor(value) and value.dim() == 2 and value.shape[1] == width:
            value = value[:, :length] if width >= length else F.pad(value, (0, length - width), value=PAD.get(name, 0))
        out[name] = value
    return out


def timed_rounds(models: list[nn.Module], batches: list[dict], steps: int) -> list[list[float]]:
    """Each model's milliseconds per training step (forward, backward, AdamW) in each of `steps` rounds, after one
    untimed round; in a round every model takes a step on the same batch, in turn. A model with nothing to train runs
    forward only."""
    optimizers = []
    for model in models:
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizers.append(torch.optim.AdamW(trainable, lr=1e-7) if trainable else None)
        model.train()
    times: list[list[float]] = [[] for _ in models]
    # On a GPU a step returns before its kernels finish: the clock is read after they have.
    sync = torch.cuda.synchronize if batches[0]["input_ids"].is_cuda else lambda: None
    for i in range(steps + 1):
        batch = batches[i % len(batches)]
        for model, optimizer, taken in zip(models, optimizers, times):
            sync()
            start = time.perf_counter()
            if optimizer is None:
                with torch.no_grad():
                    model(**batch)
            else:
                model(**batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            sync()
            if i:
                taken.append(1e3 * (time.perf_counter() - start))
    return times


def medians(models: list[nn.Module], batches: list[dict], steps: int) -> list[float]:
    return [statistics.median(taken) for taken in timed_rounds(models, batches, steps)]


def backprop_to(model: nn.Module, depth: int) -> nn.Module:
    """`model` with the smallest frozen tensor of layer `depth` made trainable (none at depth = the number of
    layers): backpropagation runs down to that layer, as when it is the lowest adapted one."""
    _, layers = encoder_layers(model)
    if depth < len(layers):
        frozen = [p for p in layers[depth].parameters() if not p.requires_grad]
        min(frozen, key=lambda p: p.numel()).requires_grad_(True)
    return model


def down_to(model: nn.Module, depth: int) -> nn.Module:
    """A copy of `model` frozen but for its task head and the smallest tensor of layer `depth` (backprop_to)."""
    return backprop_to(train_only(copy.deepcopy(model), task_head(model)), depth)


def with_options(model: nn.Module, kind: str, method: str, size: int, offered: Menu, build: Build) -> nn.Module:
    """A copy of `model` with `method` of `size` at every layer's site of `kind`, its task head trainable, and
    backpropagation down to layer 0 (as in down_to(model, 0)), whatever the sites need."""
    model = copy.deepcopy(model)
    chosen = get_method(method)
    sites = discover_sites(model, [kind], offered)
    if chosen.wrap is not None:
        model = chosen.wrap(model, [(site, size) for site in sites], build)
    else:
        train_only(model, list(build.head))
        for site in sites:
            cast(Any, chosen.attach)(site, size)
    return backprop_to(model, 0)


def monotone(depth_ms: dict[int, float]) -> dict[int, float]:
    """Each depth's time at least that of every depth above it: backpropagating further never takes less, so a
    lower figure is the machine's noise (the running maximum from the top)."""
    out, highest = {}, 0.0
    for depth in sorted(depth_ms, reverse=True):
        highest = max(highest, depth_ms[depth])
        out[depth] = highest
    return dict(sorted(out.items()))


def depths(layers: int) -> list[int]:
    """The depths timed: the first and last layers, the quarters between, and the head alone (layers)."""
    return sorted({0, layers // 4, layers // 2, (3 * layers) // 4, layers - 1, layers})


def calibration_key(model: nn.Module, batches: list[dict], options: dict, steps: int, caches: bool, device: str) -> str:
    config: Any = model.config
    shape = [[int(n) for n in b["input_ids"].shape] for b in batches]
    described = {
        "format": FORMAT,
        "machine": [platform.node(), platform.processor(), os.cpu_count(), torch.get_num_threads()],
        "device": device,
        "torch": torch.__version__,
        "model": [type(model).__name__, config.to_json_string() if hasattr(config, "to_json_string") else str(config)],
        "batches": shape,
        "options": sorted(f"{k}:{v}" for k, v in options.items()),
        "steps": steps,
        "caches": caches,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:24]


def calibrate(
    model: nn.Module,
    batches: list[dict],
    options: dict[str, list[int]],
    offered: Menu,
    build: Build,
    epochs: int,
    caches: bool,
    steps: int,
    folder: str | Path,
    device: str = "cpu",
) -> tuple[StepTimes, float]:
    """The model's step times on `device` (see the module docstring) and the seconds it took to time them (0 when
    read from the cache in `folder`). `options`: "method/kind" -> the sizes offered (the smallest and largest are
    timed)."""
    start = time.perf_counter()
    layers = len(encoder_layers(model)[1])
    path = Path(folder).expanduser() / f"{calibration_key(model, batches, options, steps, caches, device)}.json"
    if path.is_file():
        log.info("calibration read from %s", path)
        return step_times(json.loads(path.read_text()), epochs), 0.0
    if next(model.parameters()).device != torch.device(device):  # the copies timed below are made from this one
        model = copy.deepcopy(model).to(device)
    batches = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()} for batch in batches]
    with torch.random.fork_rng():
        measured: dict[str, Any] = {"layers": layers}
        (measured["full_ms"],) = medians([copy.deepcopy(model).requires_grad_(True)], batches, steps)
        timed = depths(layers)
        measured["depth_ms"] = monotone(dict(zip(timed, medians([down_to(model, d) for d in timed], batches, steps))))
        if caches:
            cached_models = []
            for d in timed[1:]:
                cached = down_to(model, d)
                FrozenBottomCache(cached, d)
                timed_rounds([cached], batches, len(batches) - 1)  # fills the cache: every batch once
                cached_models.append(cached)
            measured["cached_depth_ms"] = monotone(dict(zip(timed[1:], medians(cached_models, batches, steps))))
            del cached_models
        base = down_to(model, 0)
        measured["option_ms"] = {}
        for key, sizes in options.items():
            method, kind = key.split("/")
            sites = len(discover_sites(model, [kind], offered))
            ends = sorted({min(sizes), max(sizes)})
            base_ms, *option_ms = timed_rounds(
                [base, *(with_options(model, kind, method, size, offered, build) for size in ends)], batches, steps
            )
            added = [statistics.median(o - b for o, b in zip(taken, base_ms)) / sites for taken in option_ms]
            measured["option_ms"][key] = fit_line(ends, added)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(measured))
    os.replace(partial, path)
    seconds = time.perf_counter() - start
    log.info(
        "calibration: full fine-tuning, %d depths (%d cached) and %d options timed in %.1f s, written to %s",
        len(measured["depth_ms"]),
        len(measured.get("cached_depth_ms", {})),
        len(options),
        seconds,
        path,
    )
    return step_times(measured, epochs), seconds


def step_times(measured: dict, epochs: int) -> StepTimes:
    """StepTimes from a calibration's JSON (its depths are strings there), for a run of `epochs` epochs."""
    cached = measured.get("cached_depth_ms")
    return StepTimes(
        layers=measured["layers"],
        epochs=epochs,
        full_ms=measured["full_ms"],
        depth_ms={int(d): ms for d, ms in measured["depth_ms"].items()},
        option_ms={k: (float(a), float(b)) for k, (a, b) in measured["option_ms"].items()},
        cached_depth_ms=None if cached is None else {int(d): ms for d, ms in cached.items()},
    )


def offered_options(sites, offered: Menu, sizes: dict[str, list[int]]) -> dict[str, list[int]]:
    """ "method/kind" -> sizes, for every method offered at the sites' kinds that has sizes."""
    kinds = list(dict.fromkeys(site.kind for site in sites))
    return {
        f"{method.name}/{kind}": list(sizes[method.name])
        for kind in kinds
        for method in methods_for(kind, offered)
        if sizes.get(method.name)
    }
