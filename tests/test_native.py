"""The native module as Python sees it: its build, its constants, and its stub (layerlens/_rank_alloc.pyi)."""

import ast
import builtins
from pathlib import Path

from layerlens import _rank_alloc
from layerlens.planning import allocator

STUB = Path(__file__).resolve().parent.parent / "layerlens" / "_rank_alloc.pyi"


def test_native_module_is_built_and_reports_its_build():
    info = _rank_alloc.build_info()
    assert info.startswith("layerlens._rank_alloc (")
    assert "pybind11" in info


def test_the_tolerances_are_the_native_solvers_and_python_reads_them_from_it():
    assert (_rank_alloc.BUDGET_TOLERANCE, _rank_alloc.GAP_TOLERANCE, _rank_alloc.MAX_STATES) == (1e-9, 5e-4, 1024)
    assert allocator.BUDGET_TOLERANCE is _rank_alloc.BUDGET_TOLERANCE
    assert allocator.GAP_TOLERANCE is _rank_alloc.GAP_TOLERANCE


def stub():
    """The stub's functions (name: ast.arguments and return annotation) and constants (name: type name)."""
    tree = ast.parse(STUB.read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    constants = {node.target.id: ast.unparse(node.annotation) for node in tree.body if isinstance(node, ast.AnnAssign)}
    return functions, constants


def runtime_signature(function) -> ast.FunctionDef:
    """The signature pybind11 writes on the first line of a function's docstring, parsed."""
    return ast.parse(f"def {function.__doc__.splitlines()[0]}: ...").body[0]


def test_the_stub_names_everything_the_module_exports_and_nothing_else():
    functions, constants = stub()
    public = {name for name in dir(_rank_alloc) if not name.startswith("_")}
    assert public == set(functions) | set(constants)
    for name, annotation in constants.items():
        assert type(getattr(_rank_alloc, name)) is getattr(builtins, annotation), name


def test_the_stub_gives_each_function_its_parameters_defaults_and_return_type():
    functions, _ = stub()
    returns = {"build_info": "str", "check": "None", "solve": "tuple"}
    for name, declared in functions.items():
        actual = runtime_signature(getattr(_rank_alloc, name))
        assert [a.arg for a in declared.args.args] == [a.arg for a in actual.args.args], name
        assert [ast.unparse(d) for d in declared.args.defaults] == [ast.unparse(d) for d in actual.args.defaults], name
        assert ast.unparse(actual.returns) == returns[name]
        assert ast.unparse(declared.returns).split("[")[0] == returns[name], name


def test_solve_returns_what_the_stub_says():
    import numpy as np

    choice, objective = _rank_alloc.solve([0.0, 1.0], [[0.0], [1.0]], [0, 2], [1.0], ["params"])
    assert isinstance(choice, np.ndarray) and choice.dtype == np.int64 and choice.tolist() == [1]
    assert type(objective) is float and objective == 1.0
