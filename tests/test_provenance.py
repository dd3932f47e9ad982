"""One machine description for every results folder: python -m layerlens.provenance, or machine() in a script."""

import re
import subprocess
import sys

from layerlens.provenance import machine


def test_the_machine_description_names_date_cpu_memory_load_gpu_versions_build_and_commit():
    lines = machine()
    keys = [line.split(":", 1)[0] for line in lines]
    assert keys == [
        "date (UTC)",
        "cpu",
        "memory",
        "load average (1, 5, 15 min)",
        "gpu",
        keys[5],
        "native build",
        "commit",
    ]
    assert re.fullmatch(r"cpu: .+ x \d+ logical cores \(.+\)", lines[1])
    assert re.fullmatch(
        r"python \d+\.\d+\.\d+ \| torch \S+ \| transformers \S+ \| peft \S+ \| lightning \S+ \| "
        r"numpy \S+ \| scipy \S+",
        lines[5],
    )
    assert lines[6].startswith("native build: layerlens._rank_alloc")
    without_load = machine(packages=("numpy", "not-a-package"), load=False)
    assert not any(line.startswith("load average") for line in without_load)
    assert without_load[4].endswith("| numpy " + without_load[4].split("numpy ")[1])
    assert "not-a-package not installed" in without_load[4]


def test_the_module_prints_it_for_shell_scripts():
    out = subprocess.run(
        [sys.executable, "-m", "layerlens.provenance"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert [line.split(":", 1)[0] for line in out.splitlines()][:3] == ["date (UTC)", "cpu", "memory"]
