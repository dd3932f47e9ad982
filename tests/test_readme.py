"""The README's two fresh-machine commands stay true: CI runs the test one verbatim."""

import re

from tests.conftest import REPO


def fresh_machine_commands() -> list[str]:
    section = (REPO / "README.md").read_text().split("## On a fresh machine", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_gives_exactly_two_commands_and_ci_runs_the_test_one():
    main_job, tests = fresh_machine_commands()
    assert main_job.endswith("python -m layerlens.run") and "torch==2.13.0" in main_job
    assert tests.endswith("python -m pytest -n auto --dist worksteal")
    assert tests in (REPO / ".ci" / "run").read_text().splitlines()
