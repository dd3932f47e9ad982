"""The budgeted allocator: the native solver against scipy's MILP, known optima, errors, determinism."""

import ast
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layerlens import _rank_alloc
from layerlens.planning.allocator import BUDGET_TOLERANCE, Allocation, allocate
from tests.allocator_reference import allocate_greedy, allocate_milp
from tests.conftest import examples


def fits(allocation, budgets):
    return all(total <= budget * (1 + BUDGET_TOLERANCE) for total, budget in zip(allocation.totals, budgets))


def random_problem(rng, sites, options, budgets, fraction):
    values = rng.uniform(0, 10, (sites, options)).round(3)
    costs = rng.uniform(0, 100, (sites, options, budgets)).round(3)
    values[:, 0] = costs[:, 0] = 0
    return values.tolist(), costs.tolist(), (fraction * costs.max(axis=1).sum(axis=0)).round(3).tolist()


@st.composite
def problems(draw, max_sites=8, max_options=6):
    """Up to 8 sites of up to 6 options, 1 to 3 budgets; small integers or multiples of 0.001 (so that
    HiGHS's feasibility tolerance cannot admit a plan that overruns a budget). Each budget lies at a
    random point between the cost of the cheapest plan for it and that of the costliest, or a little
    below the cheapest: most problems are feasible, some not."""
    sites, budgets = draw(st.integers(1, max_sites)), draw(st.integers(1, 3))
    number = st.integers(0, 20).map(float) if draw(st.booleans()) else st.integers(0, 100000).map(lambda x: x / 1000)
    values, costs = [], []
    for _ in range(sites):
        options = draw(st.integers(1, max_options))
        values.append([draw(number) for _ in range(options)])
        costs.append([[draw(number) for _ in range(budgets)] for _ in range(options)])
        if draw(st.booleans()):  # a free "none" option
            values[-1][0], costs[-1][0] = 0.0, [0.0] * budgets
    limits = []
    for k in range(budgets):
        cheapest = sum(min(cost[k] for cost in site) for site in costs)
        costliest = sum(max(cost[k] for cost in site) for site in costs)
        limits.append(max(0.0, round(cheapest + draw(st.floats(-0.1, 1)) * (costliest - cheapest), 3)))
    return values, costs, limits


@settings(max_examples=examples(300), deadline=None)
@given(problems())
def test_the_native_plan_fits_and_is_as_good_as_the_milp_optimum(problem):
    values, costs, budgets = problem
    try:
        reference = allocate_milp(values, costs, budgets)
    except ValueError:
        with pytest.raises(ValueError, match="no plan"):
            allocate(values, costs, budgets)
        return
    plan = allocate(values, costs, budgets)
    assert fits(plan, budgets)
    assert all(0 <= j < len(site) for j, site in zip(plan.choice, values)) and len(plan.choice) == len(values)
    assert plan.objective == pytest.approx(sum(site[j] for site, j in zip(values, plan.choice)))
    assert plan.objective >= reference.objective * (1 - 1e-3) - 1e-9
    assert plan.objective <= reference.objective + 1e-6 * max(1.0, reference.objective)


@pytest.mark.parametrize(
    "sites, options, budgets, fraction", [(40, 8, 1, 0.2), (40, 8, 2, 0.3), (30, 6, 3, 0.5), (60, 10, 2, 0.1)]
)
def test_medium_problems_match_the_milp_optimum(sites, options, budgets, fraction):
    values, costs, limits = random_problem(np.random.default_rng(sites + budgets), sites, options, budgets, fraction)
    plan, reference = allocate(values, costs, limits), allocate_milp(values, costs, limits)
    assert fits(plan, limits) and fits(reference, limits)
    assert plan.objective >= reference.objective * (1 - 1e-3)
    assert plan.objective <= reference.objective * (1 + 1e-6)


KNOWN = [
    # one budget: 3 + 7 beats 5 + 4.5 at the same cost
    ([[0, 3, 5], [0, 4.5, 7]], [[[0], [1], [2]], [[0], [1], [2]]], [3], (1, 2), 10.0),
    ([[0, 3, 5], [0, 4.5, 7]], [[[0], [1], [2]], [[0], [1], [2]]], [2], (1, 1), 7.5),
    ([[0, 3, 5], [0, 4.5, 7]], [[[0], [1], [2]], [[0], [1], [2]]], [4], (2, 2), 12.0),
    # two budgets: each site's options trade one budget for the other; the two best (24) overrun one
    ([[0, 10, 12], [0, 11, 12]], [[[0, 0], [5, 1], [1, 5]], [[0, 0], [5, 1], [1, 5]]], [6, 6], (2, 1), 23.0),
    # no free option: every site must pay for something
    ([[1, 2], [1, 3]], [[[1], [2]], [[1], [3]]], [4], (0, 1), 4.0),
    # a zero budget leaves only free options
    ([[0, 5], [2, 9]], [[[0], [1]], [[0], [3]]], [0], (0, 0), 2.0),
    # 0.1 + 0.2 > 0.3 in floating point: the tolerance of 1e-9 (relative) lets the plan fit
    ([[0, 1], [0, 1]], [[[0], [0.1]], [[0], [0.2]]], [0.3], (1, 1), 2.0),
    # no budgets: the best option at each site
    ([[1, 5, 2], [0, 3]], [[[], [], []], [[], []]], [], (1, 1), 8.0),
]


@pytest.mark.parametrize("solve", [allocate, allocate_milp])
@pytest.mark.parametrize("values, costs, budgets, choice, objective", KNOWN)
def test_known_optima(solve, values, costs, budgets, choice, objective):
    plan = solve(values, costs, budgets)
    assert plan.choice == choice
    assert plan.objective == pytest.approx(objective)
    assert len(plan.totals) == len(budgets) and fits(plan, budgets)


@pytest.mark.parametrize(
    "sites, options, budgets, fraction", [(40, 8, 1, 0.2), (40, 8, 2, 0.3), (30, 6, 3, 0.5), (60, 10, 2, 0.1)]
)
def test_the_greedy_baseline_fits_every_budget_and_never_beats_the_milp_optimum(sites, options, budgets, fraction):
    values, costs, limits = random_problem(np.random.default_rng(sites + budgets), sites, options, budgets, fraction)
    greedy, reference = allocate_greedy(values, costs, limits), allocate_milp(values, costs, limits)
    assert fits(greedy, limits)
    assert greedy.objective == pytest.approx(sum(site[j] for site, j in zip(values, greedy.choice)))
    assert greedy.objective <= reference.objective * (1 + 1e-9)


@pytest.mark.parametrize("values, costs, budgets, choice, objective", [KNOWN[2], KNOWN[5], KNOWN[7]])
def test_the_greedy_baseline_finds_the_optimum_of_a_trivial_problem(values, costs, budgets, choice, objective):
    plan = allocate_greedy(values, costs, budgets)
    assert plan.choice == choice and plan.objective == pytest.approx(objective)
    assert plan == allocate_milp(values, costs, budgets)


def test_the_allocation_reports_the_cost_used_per_budget():
    plan = allocate([[0, 10, 12], [0, 11, 12]], [[[0, 0], [5, 1], [1, 5]], [[0, 0], [5, 1], [1, 5]]], [6, 7])
    assert plan == Allocation(choice=(2, 1), objective=23.0, totals=(6.0, 6.0))


SITES = [[0, 1], [0, 2]]
COSTS = [[[0, 0], [1, 1]], [[0, 0], [2, 2]]]
NAMES = ["params", "flops"]
BAD = [
    (SITES, COSTS, [3, float("nan")], "budget 'flops' is nan; budgets must be finite and >= 0"),
    (SITES, COSTS, [-1, 3], "budget 'params' is -1.0; budgets must be finite and >= 0"),
    (SITES, COSTS, [3, float("inf")], "budget 'flops' is inf"),
    ([], [], [3, 3], "no sites"),
    ([[0, 1], []], [[[0, 0], [1, 1]], []], [3, 3], "site 1 has no options"),
    (SITES, COSTS[:1], [3, 3], "costs has 1 sites but values has 2"),
    (SITES, [COSTS[0], COSTS[1][:1]], [3, 3], "site 1 has 2 values but 1 cost vectors"),
    (SITES, [COSTS[0], [[0, 0], [2]]], [3, 3], "site 1, option 1 has 1 costs but there are 2 budgets"),
    ([[0, float("nan")], [0, 2]], COSTS, [3, 3], "value at site 0, option 1 is nan; values must be finite"),
    ([[0, 1], [float("inf"), 2]], COSTS, [3, 3], "value at site 1, option 0 is inf"),
    ([[0, -1], [0, 2]], COSTS, [3, 3], "value at site 0, option 1 is -1.0"),
    (SITES, [COSTS[0], [[0, 0], [2, -2]]], [3, 3], "cost budget 'flops' at site 1, option 1 is -2.0; costs must be"),
    (SITES, [COSTS[0], [[0, float("nan")], [2, 2]]], [3, 3], "cost budget 'flops' at site 1, option 0 is nan"),
    (
        SITES,
        [[[1, 0], [1, 1]], [[2, 0], [2, 2]]],
        [2, 3],
        r"no plan fits budget 'params': the cheapest option at every site already costs 3 > 2",
    ),
    # each budget alone can be met, both together cannot
    ([[1, 1], [1, 1]], [[[5, 1], [1, 5]], [[5, 1], [1, 5]]], [5.5, 5.5], "no plan fits all budgets together"),
]


@pytest.mark.parametrize("solve", [allocate, allocate_milp])
@pytest.mark.parametrize("values, costs, budgets, message", BAD)
def test_bad_or_infeasible_problems_raise_value_errors_naming_the_cause(solve, values, costs, budgets, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        solve(values, costs, budgets, budget_names=NAMES)


def test_budgets_are_numbered_without_names_and_names_must_match_the_budgets():
    with pytest.raises(ValueError, match="cost budget 1 at site 1, option 1 is -2.0"):
        allocate(SITES, [COSTS[0], [[0, 0], [2, -2]]], [3, 3])
    with pytest.raises(ValueError, match="budget_names has 1 names but there are 2 budgets"):
        allocate(SITES, COSTS, [3, 3], budget_names=["params"])


V = np.array([0.0, 1.0, 0.0, 2.0])
C = np.array([[0.0], [1.0], [0.0], [2.0]])
O = np.array([0, 2, 4])
B = np.array([3.0])
RAW_BAD = [
    (V, C, np.array([1, 2, 4]), B, "offsets must start at 0, got 1"),
    (V, C, np.array([0, 3, 2, 4]), B, r"offsets must be non-decreasing, but offsets\[2\] = 2 < offsets\[1\] = 3"),
    (V, C, np.array([0, 2, 3]), B, "offsets must end at the number of options, 4, got 3"),
    (V, C, np.array([0, 2, 2, 4]), B, "site 1 has no options"),
    (V, C, np.array([0]), B, "no sites"),
    (V, C, np.array([], dtype=np.int64), B, "no sites"),
    (V[:3], C, O, B, "costs has 4 rows but values has 3 options"),
    (V, C, O, np.array([3.0, 3.0]), "costs has 1 columns but there are 2 budgets"),
    (V.reshape(2, 2), C, O, B, "values must be 1-D, got 2-D"),
    (V, C.ravel(), O, B, "costs must be 2-D"),
    (V, C, O.reshape(1, 3), B, "offsets must be 1-D"),
    (np.array([0.0, np.nan, 0.0, 2.0]), C, O, B, "value at site 0, option 1 is nan"),
    (np.array([0.0, 1.0, -3.0, 2.0]), C, O, B, "value at site 1, option 0 is -3"),
    (V, np.array([[0.0], [1.0], [0.0], [np.inf]]), O, B, "cost budget 0 at site 1, option 1 is inf"),
    (V, C, O, np.array([-1.0]), r"budget 0 is -1\.0; budgets must be finite and >= 0"),
    (V, C, O, np.array([np.nan]), "budget 0 is nan"),
    (V, C + 1, O, np.array([1.5]), "no plan fits budget 0: the cheapest option at every site already costs 2 > 1.5"),
    (V, np.array([[5.0, 1], [1, 5], [5, 1], [1, 5]]), O, np.array([5.5, 5.5]), "no plan fits all budgets together"),
]


@pytest.mark.parametrize("values, costs, offsets, budgets, message", RAW_BAD)
def test_the_native_solver_rejects_malformed_arrays_with_value_errors(values, costs, offsets, budgets, message):
    with pytest.raises(ValueError, match=message):
        _rank_alloc.solve(values, costs, offsets, budgets)


@pytest.mark.parametrize("values, costs, offsets, budgets, message", RAW_BAD[:-1])
def test_the_native_check_refuses_what_the_solver_refuses_with_the_same_message(
    values, costs, offsets, budgets, message
):
    with pytest.raises(ValueError, match=message):
        _rank_alloc.check(values, costs, offsets, budgets)


def test_the_native_check_leaves_joint_feasibility_to_the_solvers():
    values, costs, offsets, budgets, _ = RAW_BAD[-1]
    assert _rank_alloc.check(values, costs, offsets, budgets) is None


@settings(max_examples=examples(300), deadline=None)
@given(
    st.floats(max_value=-5e-324) | st.sampled_from([math.nan, math.inf, -math.inf, -0.0]),
    st.sampled_from(["value", "cost", "budget"]),
)
def test_messages_write_a_number_as_python_does(x, where):
    """The native checks are the only ones: their numbers must read as Python's own messages did (repr)."""
    values, costs, budgets = [[0.0, 1.0]], [[[0.0], [1.0]]], [2.0]
    if where == "value":
        values[0][1], expected = x, f"value at site 0, option 1 is {x}; values must be finite and >= 0"
    elif where == "cost":
        costs[0][1][0], expected = x, f"cost budget 'b' at site 0, option 1 is {x}; costs must be finite and >= 0"
    else:
        budgets[0], expected = x, f"budget 'b' is {x}; budgets must be finite and >= 0"
    if x == 0:  # -0.0 is valid
        assert isinstance(allocate(values, costs, budgets, ["b"]), Allocation)
        return
    with pytest.raises(ValueError) as error:
        allocate(values, costs, budgets, ["b"])
    assert str(error.value) == expected


@settings(max_examples=examples(200), deadline=None)
@given(st.floats(0, 1e300), st.floats(0, 1e300), st.floats(0, 1e300))
def test_a_budget_the_cheapest_plan_overruns_is_named_with_both_sums_in_format_g(a, b, budget):
    cheapest = a + b  # the cheapest option at each site, summed
    if cheapest <= budget * (1 + BUDGET_TOLERANCE):
        return
    with pytest.raises(ValueError) as error:
        allocate([[0.0], [0.0]], [[[a]], [[b]]], [budget], ["params"])
    assert str(error.value) == (
        f"no plan fits budget 'params': the cheapest option at every site already costs {cheapest:g} > {budget:g}"
    )


def test_the_native_solver_names_the_budget_that_cannot_be_met():
    costs = np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 2.0], [2.0, 2.0]])
    with pytest.raises(
        ValueError, match=r"^no plan fits budget 1: the cheapest option at every site already costs 3 > 2$"
    ):
        _rank_alloc.solve(V, costs, O, np.array([5.0, 2.0]))


def test_the_native_solver_returns_int64_choices_and_the_objective():
    choice, objective = _rank_alloc.solve(V, C, O, B)
    assert choice.dtype == np.int64 and choice.tolist() == [1, 1] and objective == 3.0


def test_identical_input_gives_an_identical_plan():
    values, costs, budgets = random_problem(np.random.default_rng(7), 200, 12, 2, 0.3)
    plans = [allocate(values, costs, budgets) for _ in range(3)]
    assert plans[0] == plans[1] == plans[2]


def test_the_allocator_imports_no_torch_lightning_mlflow_or_scipy():
    code = (
        "import sys, layerlens.planning.allocator; "
        "print(sorted({'torch', 'lightning', 'mlflow', 'scipy'} & set(sys.modules)))"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


def test_the_reference_solvers_stay_out_of_the_installed_package():
    """Nothing in layerlens/ imports tests/allocator_reference.py or scipy's MILP, or defines a reference."""
    package = Path(__file__).resolve().parent.parent / "layerlens"
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(package.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "tests" for a in node.names), where
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "tests", where
                assert not {a.name for a in node.names} & {"milp", "allocate_milp", "allocate_greedy"}, where
            elif isinstance(node, ast.FunctionDef | ast.ClassDef):
                assert node.name not in ("allocate_milp", "allocate_greedy", "_Greedy"), where
