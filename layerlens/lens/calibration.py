"""Timing training steps on the machine at hand, for the measured time model (layerlens/planning/step_times.py).

Each configuration is a copy of the model, trained for `steps` AdamW steps on the same few training batches after
one untimed step; its time is the median step. The configurations: full fine-tuning; the frozen backbone with
backpropagation stopping at a few depths (the smallest tensor of that layer trains, with the task head), and the
same with the frozen-layer cache serving the layers below, once it holds the batches (both made non-increasing with
depth); one option (a method at its smallest and largest offered size) at the top layer's site of each kind, against
that depth's backbone alone. The results are cached per machine, model, batches' shape, options and steps (a JSON
file in `folder`), so that a sweep times them once. The global random state is restored afterwards: calibrating
leaves a run's draws as they would be without it.
"""

import copy
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from layerlens.lens.apply import task_head, train_only
from layerlens.lens.sites import discover_sites, encoder_layers
from layerlens.methods import Build, Menu, get_method, methods_for
from layerlens.planning.step_times import StepTimes, fit_line
from layerlens.training.frozen_bottom import FrozenBottomCache

log = logging.getLogger(__name__)
FORMAT = 1  # of the cached files: a change in what is timed makes earlier files stale


def timed_steps(model: nn.Module, batches: list[dict], steps: int) -> float:
    """The median milliseconds of `steps` training steps (forward, backward, AdamW) after one untimed step; a model
    with nothing to train runs forward only."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-7) if trainable else None
    model.train()
    times = []
    for i in range(steps + 1):
        batch = batches[i % len(batches)]
        start = time.perf_counter()
        if optimizer is None:
            with torch.no_grad():
                model(**batch)
        else:
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if i:
            times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def down_to(model: nn.Module, depth: int) -> nn.Module:
    """A copy of `model` frozen but for its task head and, below it, the smallest tensor of layer `depth` (none at
    depth = the number of layers): backpropagation runs down to that layer, as when it is the lowest adapted one."""
    model = train_only(copy.deepcopy(model), task_head(model))
    _, layers = encoder_layers(model)
    if depth < len(layers):
        min(layers[depth].parameters(), key=lambda p: p.numel()).requires_grad_(True)
    return model


def with_option(model: nn.Module, kind: str, method: str, size: int, offered: Menu, build: Build) -> nn.Module:
    """A copy of `model` with one option, `method` of `size` at the top layer's site of `kind`, and its task head
    trainable."""
    model = copy.deepcopy(model)
    top_layer = len(encoder_layers(model)[1]) - 1
    top = next(s for s in discover_sites(model, [kind], offered) if s.layer == top_layer)
    chosen = get_method(method)
    if chosen.wrap is not None:
        return chosen.wrap(model, [(top, size)], build)
    train_only(model, list(build.head))
    cast(Any, chosen.attach)(top, size)
    return model


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


def calibration_key(model: nn.Module, batches: list[dict], options: dict, steps: int, caches: bool) -> str:
    config: Any = model.config
    shape = [[int(n) for n in b["input_ids"].shape] for b in batches]
    described = {
        "format": FORMAT,
        "machine": [platform.node(), platform.processor(), os.cpu_count(), torch.get_num_threads()],
        "device": str(next(model.parameters()).device),
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
) -> tuple[StepTimes, float]:
    """The model's step times (see the module docstring) and the seconds it took to time them (0 when read from the
    cache in `folder`). `options`: "method/kind" -> the sizes offered (the smallest and largest are timed)."""
    start = time.perf_counter()
    layers = len(encoder_layers(model)[1])
    path = Path(folder).expanduser() / f"{calibration_key(model, batches, options, steps, caches)}.json"
    if path.is_file():
        log.info("calibration read from %s", path)
        return step_times(json.loads(path.read_text()), epochs), 0.0
    with torch.random.fork_rng():
        full = copy.deepcopy(model).requires_grad_(True)
        measured: dict[str, Any] = {"layers": layers, "full_ms": timed_steps(full, batches, steps)}
        del full
        measured["depth_ms"] = monotone({d: timed_steps(down_to(model, d), batches, steps) for d in depths(layers)})
        if caches:
            measured["cached_depth_ms"] = {}
            for d in depths(layers)[1:]:
                cached = down_to(model, d)
                FrozenBottomCache(cached, d)
                timed_steps(cached, batches, len(batches) - 1)  # fills the cache: every batch once
                measured["cached_depth_ms"][d] = timed_steps(cached, batches, steps)
            measured["cached_depth_ms"] = monotone(measured["cached_depth_ms"])
        base = measured["depth_ms"][layers - 1]
        measured["option_ms"] = {}
        for key, sizes in options.items():
            method, kind = key.split("/")
            timed = sorted({min(sizes), max(sizes)})
            added = [
                timed_steps(with_option(model, kind, method, size, offered, build), batches, steps) - base
                for size in timed
            ]
            measured["option_ms"][key] = fit_line(timed, added)
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
