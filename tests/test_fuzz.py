"""Fuzzing (slow tier, run by default): the allocator and the GLUE TSV reader under random and
adversarial input either give a correct answer or raise the documented error; never another
exception, a crash or a hang.

Under the explore profile (tests/conftest.py) the allocator tests run 10,000 cases in all (4,000 + 3,000 +
1,000 + 2,000) and the TSV test 250, as each load goes through `datasets.load_dataset`; by default a tenth of
each (the same cases on every run). A crash in the native solver kills the process
(pytest's faulthandler prints where); a hang fails the case after SOLVE_TIMEOUT_S.
"""

import itertools
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerlens import _rank_alloc
from layerlens.data import TaskSpec, read_glue_tsv
from layerlens.errors import LayerLensError
from layerlens.planning.allocator import BUDGET_TOLERANCE, GAP_TOLERANCE, Allocation, allocate
from layerlens.settings import instantiate_node
from tests.conftest import compose_config, examples

# Overflowing sums of extreme inputs warn in numpy; the properties below judge the outcome.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

SOLVE_TIMEOUT_S = 30  # a solve of these sizes takes milliseconds
GAP = GAP_TOLERANCE  # the solver's documented relative optimality gap


def within_time_limit(fn, *args):
    """fn(*args) in a worker thread (the native solver releases the GIL), so that a hang fails the
    case instead of stalling the suite; returns its result or re-raises its exception."""
    outcome = {}

    def work():
        try:
            outcome["result"] = fn(*args)
        except BaseException as err:  # handed to the caller as is
            outcome["error"] = err

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(SOLVE_TIMEOUT_S)
    if worker.is_alive():
        raise AssertionError(f"{fn.__name__} did not return within {SOLVE_TIMEOUT_S} s: a hang")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


# ---------------------------------------------------------------------------------------------
# The allocator

MAX_FLOAT, MIN_NORMAL, MIN_SUBNORMAL = 1.7976931348623157e308, 2.2250738585072014e-308, 5e-324
EDGES = [
    0.0,
    -0.0,
    1.0,
    2.0,
    0.5,
    0.1,
    0.2,
    0.3,
    1e15,
    1e300,
    1e-300,
    MAX_FLOAT,
    MIN_NORMAL,
    MIN_SUBNORMAL,
    MIN_NORMAL / 3,
]
INVALID = [math.nan, math.inf, -math.inf, -1.0, -1e-300, -MIN_SUBNORMAL, -1e300]

valid_numbers = st.one_of(
    st.sampled_from(EDGES),
    st.integers(0, 4).map(float),  # ties
    st.floats(min_value=0, allow_nan=False, allow_infinity=False),  # subnormals included
)
any_numbers = st.one_of(valid_numbers, valid_numbers, valid_numbers, st.sampled_from(INVALID), st.floats())

DEFECTS = [None] * 8 + [
    "no sites",
    "empty site",
    "costs short a site",
    "option short a cost vector",
    "cost vector too long",
    "cost vector too short",
    "budgets nested",
    "budgets scalar",
    "names mismatch",
    "value nested",
]


def budget_for(draw, costs, k, number):
    """A budget: any number, zero, or (mostly) at or between the cheapest and costliest plans' costs."""
    how = draw(st.sampled_from(["number", "zero", "cheapest", "between", "between", "below"]))
    if how == "number":
        return draw(number)
    if how == "zero":
        return 0.0
    with np.errstate(all="ignore"):
        cheapest = float(np.sum([min(cost[k] for cost in site) for site in costs]))
        costliest = float(np.sum([max(cost[k] for cost in site) for site in costs]))
        if how == "cheapest":  # a plan that fits only just: ties at the boundary
            return cheapest
        if how == "below":
            return cheapest * (1 - 1e-9) - 1e-300 if cheapest > 0 else cheapest
        return cheapest + draw(st.floats(0, 1)) * (costliest - cheapest)


@st.composite
def problems(draw, number=valid_numbers, max_sites=6, max_options=5, defects=False):
    """(values, costs, budgets, budget_names) of up to max_sites sites, ragged in size, 0 to 3 budgets;
    with defects, some are malformed (see DEFECTS)."""
    m = draw(st.integers(0, 3))
    sites = draw(st.integers(1, max_sites))
    values, costs = [], []
    for _ in range(sites):
        options = draw(st.integers(1, max_options))
        values.append([draw(number) for _ in range(options)])
        costs.append([[draw(number) for _ in range(m)] for _ in range(options)])
    budgets = [budget_for(draw, costs, k, number) for k in range(m)]
    names = draw(st.none() | st.just([f"b{k}" for k in range(m)]))
    defect = draw(st.sampled_from(DEFECTS)) if defects else None
    if defect == "no sites":
        values, costs = [], []
    elif defect == "empty site":
        i = draw(st.integers(0, sites - 1))
        values[i], costs[i] = [], []
    elif defect == "costs short a site":
        costs = costs[:-1]
    elif defect == "option short a cost vector":
        costs[-1] = costs[-1][:-1]
    elif defect == "cost vector too long":
        costs[0][0] = [*costs[0][0], 1.0]
    elif defect == "cost vector too short" and m:
        costs[-1][-1] = costs[-1][-1][:-1]
    elif defect == "budgets nested":
        budgets = [budgets, budgets]
    elif defect == "budgets scalar":
        budgets = 1.0
    elif defect == "names mismatch":
        names = [f"b{k}" for k in range(m + 1)]
    elif defect == "value nested":
        values[0][0] = [values[0][0], 1.0]
    return values, costs, budgets, names, defect


def well_formed_and_valid(values, costs, budgets, defect):
    if defect not in (None, "cost vector too short") or (defect and budgets):
        return False
    numbers = [*budgets, *(v for site in values for v in site), *(c for site in costs for cost in site for c in cost)]
    return all(math.isfinite(x) and x >= 0 for x in numbers)


def brute_force(values, costs, budgets):
    """The best value of a plan fitting every budget with a margin (so that no summation order can
    push it over), or None when none does; and whether any plan fits even with the solver's slack."""
    best, any_fits = None, False
    for choice in itertools.product(*(range(len(site)) for site in values)):
        totals = [sum(costs[i][j][k] for i, j in enumerate(choice)) for k in range(len(budgets))]
        if all(t <= b * (1 + BUDGET_TOLERANCE) for t, b in zip(totals, budgets)):
            any_fits = True
        if all(t <= b * (1 - 1e-6) or t == 0 for t, b in zip(totals, budgets)):
            value = sum(values[i][j] for i, j in enumerate(choice))
            best = value if best is None else max(best, value)
    return best, any_fits


def check_allocation(values, costs, budgets, names, defect=None, optimal=False):
    """The property: a valid plan within every budget whose objective is the sum of its values, or a
    one-line ValueError (always, for malformed input or out-of-range numbers)."""
    valid = well_formed_and_valid(values, costs, budgets, defect)
    try:
        plan = within_time_limit(allocate, values, costs, budgets, names)
    except ValueError as err:
        message = str(err)
        assert message and "\n" not in message
        if valid:
            assert message.startswith("no plan fit"), message
            if optimal:
                best, _any_fits = brute_force(values, costs, budgets)
                assert best is None, f"{message}, but a plan of value {best} fits"
        return None
    assert valid, f"malformed or out-of-range input ({defect}) accepted"
    assert isinstance(plan, Allocation)
    assert len(plan.choice) == len(values)
    assert all(type(j) is int and 0 <= j < len(site) for j, site in zip(plan.choice, values))
    assert len(plan.totals) == len(budgets)
    chosen_costs = [costs[i][j] for i, j in enumerate(plan.choice)]
    for k, (total, budget) in enumerate(zip(plan.totals, budgets)):
        assert total <= budget * (1 + BUDGET_TOLERANCE), (k, total, budget)
        assert total == pytest.approx(sum(cost[k] for cost in chosen_costs), rel=1e-12, abs=0)
    chosen = [values[i][j] for i, j in enumerate(plan.choice)]
    assert plan.objective == pytest.approx(sum(chosen), rel=1e-12, abs=0)
    if optimal and math.isfinite(sum(max(site) for site in values)):
        best, _ = brute_force(values, costs, budgets)
        assert best is None or best <= plan.objective * (1 + GAP) * (1 + 1e-12), (best, plan.objective)
    return plan


@settings(max_examples=examples(4_000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(number=any_numbers, defects=True))
def test_allocate_on_any_input_returns_a_fitting_plan_or_raises_a_value_error(problem):
    values, costs, budgets, names, defect = problem
    check_allocation(values, costs, budgets, names, defect)


@settings(max_examples=examples(3_000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_sites=5, max_options=4))
def test_allocate_on_valid_extreme_magnitudes_is_optimal_or_proves_no_plan_fits(problem):
    """Huge, tiny, subnormal and tied numbers, small enough to check against every plan."""
    values, costs, budgets, names, _ = problem
    check_allocation(values, costs, budgets, names, optimal=True)


def test_costs_whose_sums_overflow_do_not_hang_the_solver():
    """Found by the test above: costs near the largest float overflow the subgradient to inf, which
    made NaN slopes in the line search's envelope walk, an endless loop appending breakpoints."""
    values = [[0.0], [0.0, 5e-324], [0.0, 4.0, 1.3764124495061206e308, 1 / 3], [1.0, 0.5]]
    costs = [
        [[7.41691286169067e-309, 0.0, 1.1435847054858974e308]],
        [[7.637341214271213e-100, 0.1, 3.0], [0.0, 1e300, 0.0]],
        [
            [1.0, 1.9, 7.452791417744857e307],
            [1.0265568250372918e308, 7.41691286169067e-309, 2.0],
            [0.3, 7.41691286169067e-309, 1e300],
            [2.0, 0.0, 1.347871477419094e308],
        ],
        [[MIN_NORMAL, MIN_SUBNORMAL, 1.2658452584318915e308], [1e300, 0.0, 0.0]],
    ]
    budgets = [5.15623168600965e307, 5.06055764249093e299, 1.1435847043423127e308]
    with pytest.raises(ValueError, match="no plan fits all budgets together"):
        within_time_limit(allocate, values, costs, budgets)
    assert check_allocation(values, costs, [MAX_FLOAT] * 3, None, optimal=True) is not None


@st.composite
def large_problems(draw):
    """Up to 300 sites of up to 16 options from a seeded generator: ties, spans of many orders of
    magnitude, free options or none, budgets from zero to everything."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, options, m = draw(st.integers(1, 300)), draw(st.integers(1, 16)), draw(st.integers(0, 3))
    sizes = rng.integers(1, options + 1, n)
    rows = int(sizes.sum())
    kind = draw(st.sampled_from(["uniform", "ties", "magnitudes", "tiny"]))
    if kind == "uniform":
        values, costs = rng.uniform(0, 10, rows), rng.uniform(0, 100, (rows, m))
    elif kind == "ties":
        values, costs = rng.integers(0, 3, rows).astype(float), rng.integers(0, 3, (rows, m)).astype(float)
    elif kind == "magnitudes":
        values, costs = 10.0 ** rng.uniform(-300, 300, rows), 10.0 ** rng.uniform(-300, 300, (rows, m))
    else:
        values, costs = rng.uniform(0, 1, rows) * 1e-310, rng.uniform(0, 1, (rows, m)) * 1e-310
    if draw(st.booleans()):  # a free "none" option at every site
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        values[starts], costs[starts] = 0, 0
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    site_values = [values[a:b].tolist() for a, b in itertools.pairwise(offsets)]
    site_costs = [costs[a:b].tolist() for a, b in itertools.pairwise(offsets)]
    cheapest = np.minimum.reduceat(costs, offsets[:-1], axis=0).sum(axis=0) if m else np.zeros(0)
    costliest = np.maximum.reduceat(costs, offsets[:-1], axis=0).sum(axis=0) if m else np.zeros(0)
    fraction = draw(st.sampled_from([0.0, 1e-9, 0.01, 0.3, 1.0]))
    budgets = (cheapest + fraction * (costliest - cheapest)).tolist()
    return site_values, site_costs, budgets


@settings(
    max_examples=examples(1_000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(large_problems())
def test_allocate_on_many_sites_returns_a_fitting_plan(problem):
    values, costs, budgets = problem
    plan = check_allocation(values, costs, budgets, None)
    if not budgets:  # without budgets the best option at every site is the answer
        assert plan.objective == pytest.approx(sum(max(site) for site in values), rel=1e-12, abs=0)


index_entries = st.one_of(st.integers(-3, 12), st.sampled_from([2**31, 2**62, -(2**63), 2**63 - 1]))


@st.composite
def raw_arrays(draw):
    """Arrays for `_rank_alloc.solve` straight, bypassing allocate's checks: offsets of any order and
    range, mismatched lengths, other dtypes and shapes, non-contiguous views."""
    rows, m = draw(st.integers(0, 10)), draw(st.integers(0, 3))
    number = valid_numbers if draw(st.booleans()) else any_numbers
    values = np.array([draw(number) for _ in range(rows + draw(st.sampled_from([0, 0, 0, -1, 1])))])
    costs = np.array([[draw(number) for _ in range(m)] for _ in range(rows)]).reshape(rows, m)
    if draw(st.booleans()):  # well formed offsets
        cuts = sorted(draw(st.sets(st.integers(1, max(rows - 1, 1)), max_size=rows)) - {rows}) if rows > 1 else []
        offsets = [0, *cuts, rows]
    else:
        offsets = draw(st.lists(index_entries, max_size=8))
    dtypes = [
        np.int64,
        np.float64,
        *([np.uint64] if all(x >= 0 for x in offsets) else []),
        *([np.int32] if all(abs(x) < 2**31 for x in offsets) else []),
    ]
    offsets = np.array(offsets, dtype=draw(st.sampled_from(dtypes)))
    budgets = np.array([draw(number) for _ in range(m + draw(st.sampled_from([0, 0, 0, 1])))])
    shape = draw(st.sampled_from(["as is", "as is", "strided", "2-D values", "0-D budgets", "float32"]))
    if shape == "strided":
        values = np.repeat(values, 2)[::2]
        costs = np.repeat(costs, 2, axis=0)[::2]
    elif shape == "2-D values":
        values = values.reshape(1, -1)
    elif shape == "0-D budgets":
        budgets = np.array(1.0)
    elif shape == "float32":
        values, costs = values.astype(np.float32), costs.astype(np.float32)
    return values, costs, offsets, budgets


@settings(max_examples=examples(2_000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_arrays())
def test_the_native_solver_on_malformed_arrays_answers_or_raises_value_error(arrays):
    values, costs, offsets, budgets = arrays
    try:
        choice, objective = within_time_limit(_rank_alloc.solve, values, costs, offsets, budgets)
    except ValueError as err:
        assert str(err) and "\n" not in str(err)
        return
    # Accepted: then the arrays were well formed and the answer is a valid plan.
    offsets = offsets.astype(np.int64)
    assert values.ndim == 1 and costs.ndim == 2 and len(costs) == len(values) == offsets[-1] and offsets[0] == 0
    assert np.all(np.diff(offsets) > 0) and costs.shape[1] == len(budgets)
    assert np.isfinite(values).all() and (values >= 0).all() and np.isfinite(costs).all() and (costs >= 0).all()
    assert choice.dtype == np.int64 and choice.shape == (len(offsets) - 1,)
    assert ((choice >= 0) & (choice < np.diff(offsets))).all()
    rows = offsets[:-1] + choice
    totals = costs[rows].astype(float).sum(axis=0)
    assert (totals <= budgets * (1 + BUDGET_TOLERANCE)).all()
    assert objective == pytest.approx(float(values[rows].astype(float).sum()), rel=1e-12, abs=0)


# ---------------------------------------------------------------------------------------------
# The GLUE TSV reader

TSV_EXAMPLES = 250


def task_spec(name: str) -> TaskSpec:
    return instantiate_node(compose_config("run", [f"task={name}"]), "task")


@pytest.fixture(scope="module")
def tsv_setup(tmp_path_factory):
    """The two tasks' specs, a folder for the files, and a private `datasets` cache (each example's
    file is new, and load_dataset caches every one)."""
    cache = tmp_path_factory.mktemp("hf-datasets-cache")
    patch = pytest.MonkeyPatch()
    patch.setattr("datasets.config.HF_DATASETS_CACHE", cache)
    yield {"mrpc": task_spec("mrpc"), "rte": task_spec("rte")}, tmp_path_factory.mktemp("tsv")
    patch.undo()


# A field as GLUE files hold it: any text but the separators (tab, line ends); quotes, NUL, "NA",
# spaces, unicode line separators and empty strings included.
fields = st.one_of(
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\t\n"), max_size=20),
    st.sampled_from(
        ["", " ", "NA", "null", "nan", "#", '"', '"quoted, text"', "a\x00b", "\x85", "\u2028", "\ufeff", "1", "-", "é"]
    ),
)
HEADERS = {
    "mrpc": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
    "rte": ["index", "sentence1", "sentence2", "label"],
}
LABELS = {"mrpc": ["0", "1", " 1", "0 "], "rte": ["entailment", "not_entailment", "0", "1"]}
CORRUPTIONS = [
    "truncated line",
    "extra field",
    "comma delimiter",
    "space delimiter",
    "bad label",
    "missing column",
    "random bytes",
    "invalid utf-8",
    "nul bytes",
    "empty",
    "header only",
]


@st.composite
def tsv_files(draw):
    """(task name, file bytes, expected rows or None when the reader must refuse the file, or
    "either" for junk that may happen to parse)."""
    name = draw(st.sampled_from(["mrpc", "rte"]))
    header = list(HEADERS[name])
    texts = [c for c in header if c in ("#1 String", "#2 String", "sentence1", "sentence2")]
    label = "Quality" if name == "mrpc" else "label"
    extra = draw(st.booleans())  # a column the task does not use, everywhere
    if extra:
        header.append("extra")
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        row = {c: draw(fields) for c in header}
        row[label] = draw(st.sampled_from(LABELS[name]))
        rows.append(row)
    names = task_label_names = ["entailment", "not_entailment"] if name == "rte" else []
    expected = [
        (
            r[texts[0]],
            r[texts[1]],
            task_label_names.index(r[label].strip()) if r[label].strip() in names else int(r[label]),
        )
        for r in rows
    ]
    if any("\r" in r[c] for r in rows for c in header):
        # A carriage return inside a field: one before the line end reads as CRLF, one elsewhere as a
        # line end to pandas; the reader may refuse such a file but must not load other rows.
        expected = ("refuse or load every row", len(rows))
    corruption = draw(st.sampled_from([None] * len(CORRUPTIONS) + CORRUPTIONS))
    lines = [header, *([r[c] for c in header] for r in rows)]
    separator = "\t"
    if corruption == "truncated line":
        i = draw(st.integers(1, len(rows)))
        lines[i] = lines[i][: draw(st.integers(1, len(header) - 1))]
        expected = None
    elif corruption == "extra field":
        lines[draw(st.integers(1, len(rows)))].append("surplus")
        expected = None
    elif corruption in ("comma delimiter", "space delimiter"):
        separator = "," if corruption == "comma delimiter" else " "
        expected = None
    elif corruption == "bad label":
        i = draw(st.integers(1, len(rows)))
        lines[i][header.index(label)] = draw(st.sampled_from(["2", "-1", "1.5", "", "yes", "²", "0x1", "entail"]))
        expected = None
    elif corruption == "missing column":
        gone = header.index(draw(st.sampled_from([*texts, label])))
        lines = [line[:gone] + line[gone + 1 :] for line in lines]
        expected = None
    elif corruption == "header only":
        lines = lines[:1]
        expected = None
    text = "".join(separator.join(line) + "\n" for line in lines)
    if draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    if draw(st.booleans()):
        text = text.rstrip("\r\n")  # no line end after the last line
    data = (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + text.encode("utf-8")
    if corruption == "random bytes":
        data, expected = draw(st.binary(max_size=200)), "either"
    elif corruption == "invalid utf-8":
        at = draw(st.integers(0, len(data)))
        data, expected = (
            data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"])) + data[at:],
            None,
        )
    elif corruption == "nul bytes":
        at = draw(st.integers(0, len(data)))
        data, expected = data[:at] + b"\x00" + data[at:], "either"
    elif corruption == "empty":
        data, expected = b"", None
    return name, data, expected


_files = itertools.count()


@settings(
    max_examples=examples(TSV_EXAMPLES),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(tsv_files())
def test_read_glue_tsv_loads_what_was_written_or_refuses_in_one_line_naming_the_file(tsv_setup, case):
    tasks, folder = tsv_setup
    name, data, expected = case
    path = Path(folder) / f"{next(_files)}.tsv"  # a new name each time: load_dataset caches by path
    path.write_bytes(data)
    try:
        loaded = read_glue_tsv(path, tasks[name])
    except LayerLensError as err:
        message = str(err)
        assert "\n" not in message and "\r" not in message, message
        assert message.startswith(f"{path}:") or message.startswith(f"{path} "), message
        assert expected is None or expected == "either" or isinstance(expected, tuple), message
        return
    assert expected is not None, f"a malformed file was accepted: {loaded[:3]}"
    assert loaded.column_names == ["text_a", "text_b", "label"]
    if isinstance(expected, tuple):
        assert len(loaded) == expected[1]  # every row, none split in two
    elif expected != "either":
        assert list(zip(loaded["text_a"], loaded["text_b"], loaded["label"])) == expected
