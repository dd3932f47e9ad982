// layerlens._rank_alloc: the Python face of the allocator in rank_alloc.hpp. Only conversions here:
// numpy arrays to views of their memory (with the number of dimensions each must have), budget names to
// the form messages show, and the plan back to numpy. Every other check is the solver's own check().
// Its stub, with the same signatures, is layerlens/_rank_alloc.pyi.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "rank_alloc.hpp"

namespace py = pybind11;

namespace {

using Doubles = py::array_t<double, py::array::c_style | py::array::forcecast>;
using Indices = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;

std::string build_info() {
    std::string compiler =
#if defined(__clang__)
        "clang " __clang_version__;
#elif defined(__GNUC__)
        "gcc " __VERSION__;
#else
        "unknown compiler";
#endif
    return "layerlens._rank_alloc (" + compiler + ", C++ " + std::to_string(__cplusplus) + ", pybind11 " +
           std::to_string(PYBIND11_VERSION_MAJOR) + "." + std::to_string(PYBIND11_VERSION_MINOR) + ")";
}

void require_dimensions(const py::array& array, const char* name, py::ssize_t dimensions, const char* what) {
    if (array.ndim() != dimensions)
        throw std::invalid_argument(std::string(name) + " must be " + what + ", got " + std::to_string(array.ndim()) +
                                    "-D");
}

// The problem the arrays hold (their memory, not a copy: they must outlive it). Budget names become their
// Python repr, as messages show them.
layerlens::Problem problem(const Doubles& values, const Doubles& costs, const Indices& offsets, const Doubles& budgets,
                           const py::object& budget_names) {
    require_dimensions(values, "values", 1, "1-D");
    require_dimensions(costs, "costs", 2, "2-D (options x budgets)");
    require_dimensions(offsets, "offsets", 1, "1-D");
    require_dimensions(budgets, "budgets", 1, "1-D");
    layerlens::Problem p;
    p.values = {values.data(), static_cast<std::size_t>(values.shape(0))};
    p.costs = costs.data();
    p.cost_rows = static_cast<std::size_t>(costs.shape(0));
    p.cost_columns = static_cast<std::size_t>(costs.shape(1));
    p.offsets = {offsets.data(), static_cast<std::size_t>(offsets.shape(0))};
    p.budgets = {budgets.data(), static_cast<std::size_t>(budgets.shape(0))};
    if (!budget_names.is_none())
        for (const py::handle name : budget_names) p.budget_names.push_back(py::repr(name).cast<std::string>());
    return p;
}

void check(const Doubles& values, const Doubles& costs, const Indices& offsets, const Doubles& budgets,
           const py::object& budget_names) {
    layerlens::check(problem(values, costs, offsets, budgets, budget_names));
}

py::tuple solve(const Doubles& values, const Doubles& costs, const Indices& offsets, const Doubles& budgets,
                const py::object& budget_names) {
    const layerlens::Problem p = problem(values, costs, offsets, budgets, budget_names);
    layerlens::Solution solution;
    {
        py::gil_scoped_release release;
        solution = layerlens::solve(p);
    }
    py::array_t<std::int64_t> choice(static_cast<py::ssize_t>(solution.choice.size()));
    std::copy(solution.choice.begin(), solution.choice.end(), choice.mutable_data());
    return py::make_tuple(choice, solution.objective);
}

}  // namespace

PYBIND11_MODULE(_rank_alloc, m) {
    m.doc() = "LayerLens's native allocator: the multiple-choice knapsack with several budgets (csrc/rank_alloc.hpp).";
    m.attr("BUDGET_TOLERANCE") = layerlens::kBudgetTolerance;
    m.attr("GAP_TOLERANCE") = layerlens::kGapTolerance;
    m.attr("MAX_STATES") = layerlens::kMaxStates;
    m.def("build_info", &build_info, "Compiler, language standard and pybind11 version of this build.");
    m.def("check", &check, py::arg("values"), py::arg("costs"), py::arg("offsets"), py::arg("budgets"),
          py::arg("budget_names") = py::none(),
          "Raise ValueError, in one line, on the first defect of the problem that solve() would refuse: array\n"
          "shapes, offsets, numbers that are not finite and >= 0, a budget that even the cheapest option at\n"
          "every site overruns. budget_names, if given, name the budgets in messages. Returns None.");
    m.def("solve", &solve, py::arg("values"), py::arg("costs"), py::arg("offsets"), py::arg("budgets"),
          py::arg("budget_names") = py::none(),
          "Choose one option per site maximising the total value with every budget kept.\n\n"
          "values: float64[rows]; costs: float64[rows, m]; offsets: int64[n + 1], site i's options being\n"
          "rows offsets[i] .. offsets[i+1]-1; budgets: float64[m]; budget_names: m names for messages, or\n"
          "None to number the budgets. A plan fits budget k when its total cost is at most\n"
          "budgets[k] * (1 + BUDGET_TOLERANCE). Returns (choice, objective): choice is int64[n], the option\n"
          "chosen at each site counted within the site. No plan is better by more than a relative\n"
          "GAP_TOLERANCE unless the search outgrows its width (MAX_STATES partial plans), when it returns the\n"
          "best plan found. Deterministic: no clocks, no randomness. Releases the GIL.\n"
          "Raises ValueError on invalid input (as check() does) or when no plan fits.");
}
