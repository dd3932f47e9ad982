// The allocator of LayerLens's planner, in plain C++ (no Python; csrc/bindings.cpp makes it
// layerlens._rank_alloc): the multiple-choice knapsack with several budgets. Each site (a layer) offers
// options (a method and size), each with a value and one cost per budget; solve() picks exactly one option
// per site, maximising the total value with every budget kept, to within kGapTolerance.
//
// Every check of a problem is here, in check(): the Python wrapper only flattens its nested lists.
// Invalid or infeasible input throws std::invalid_argument (ValueError in Python) with a one-line message.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace layerlens {

// A plan fits budget k when its total cost is at most budgets[k] * (1 + kBudgetTolerance): the slack only
// absorbs rounding in sums of costs. The one definition: Python reads it as _rank_alloc.BUDGET_TOLERANCE.
inline constexpr double kBudgetTolerance = 1e-9;
// solve() stops once no plan can beat the best found by more than this, relatively: 0.05%, half the 0.1%
// of the optimum that the tests allow.
inline constexpr double kGapTolerance = 5e-4;
// The search keeps at most this many partial plans after each site, a deterministic cap on its work (past
// it, the best plan found is returned).
inline constexpr std::size_t kMaxStates = 1 << 10;

// An array the caller owns.
template <class T>
struct View {
    const T* data = nullptr;
    std::size_t size = 0;
};

// One problem, as flat arrays. Site i's options are rows offsets[i] .. offsets[i+1]-1 of values (one per
// option) and costs (one row of `columns` per option, one column per budget, row-major).
struct Problem {
    View<double> values;
    const double* costs = nullptr;
    std::size_t cost_rows = 0, cost_columns = 0;
    View<std::int64_t> offsets;
    View<double> budgets;
    // Budget k's name as messages show it ("budget " + name), e.g. "'params'" (Python's repr); if empty, the
    // budgets are numbered ("budget 0", ...).
    std::vector<std::string> budget_names;
};

struct Solution {
    std::vector<std::int64_t> choice;  // the option chosen at each site, counted within the site
    double objective = 0;              // total value
};

// Throws std::invalid_argument on the first defect found: the sizes of the arrays, the offsets, the
// numbers (finite and >= 0) and any budget that even the cheapest option at every site overruns. Numbers
// in messages read as Python writes them (repr, or format "g" for sums).
void check(const Problem& problem);

// check(), then the plan: no plan that fits is better by more than kGapTolerance, relatively, unless the
// search outgrows kMaxStates, when it is the best plan found. Throws std::invalid_argument when no plan
// fits. Deterministic (no clocks, no randomness); thread-safe (each thread keeps its own workspace).
Solution solve(const Problem& problem);

}  // namespace layerlens
