// Native core of LayerLens's planner.
//
// build_info() names the native build; the pipeline records it with every run.
// solve() is the allocator: the multiple-choice knapsack with several budgets. Each site (a layer)
// offers options (a method and size), each with a value and one cost per budget; it picks exactly one
// option per site, maximising the total value with every budget kept. Invalid or infeasible input
// throws std::invalid_argument, which Python sees as ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

using std::size_t;
using Doubles = py::array_t<double, py::array::c_style | py::array::forcecast>;
using Indices = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;

// A plan fits budget k when its total cost is at most B_k * (1 + kBudgetTolerance): the slack only
// absorbs rounding in sums of costs.
constexpr double kBudgetTolerance = 1e-9;
// The search stops once no unexplored plan can beat the best found by more than this, relatively...
constexpr double kGapTolerance = 1e-5;
// The search keeps at most this many partial plans after each site, a deterministic cap on its work
// (past it, the best plan found is returned); a first, cheaper pass keeps kScoutStates.
constexpr size_t kMaxStates = 1 << 10;
constexpr size_t kScoutStates = 16;
// With more than two budgets, a partial plan is checked for dominance against this many others.
constexpr size_t kDominanceWindow = 256;
// At most this many rounds of line searches for the Lagrange multipliers.
constexpr int kMultiplierRounds = 50;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr const char* kJointlyInfeasible =
    "no plan fits all budgets together (each budget alone can be met)";

std::string build_info() {
    std::string compiler =
#if defined(__clang__)
        "clang " __clang_version__;
#elif defined(__GNUC__)
        "gcc " __VERSION__;
#else
        "unknown compiler";
#endif
    return "layerlens._rank_alloc (" + compiler + ", C++ " + std::to_string(__cplusplus) +
           ", pybind11 " + std::to_string(PYBIND11_VERSION_MAJOR) + "." +
           std::to_string(PYBIND11_VERSION_MINOR) + ")";
}

[[noreturn]] void fail(const std::string& message) { throw std::invalid_argument(message); }

std::string str(double x) {
    std::ostringstream out;
    out.precision(12);
    out << x;
    return out.str();
}

std::string str(std::int64_t x) { return std::to_string(x); }

// The arrays of one problem, checked. Site i's options are rows offset[i] .. offset[i+1]-1.
struct Instance {
    size_t n = 0;  // sites
    size_t m = 0;  // budgets
    const double* value = nullptr;          // [rows]
    const double* cost = nullptr;           // [rows][m]
    const std::int64_t* offset = nullptr;   // [n + 1]
    const double* budget = nullptr;         // [m]
    double c(size_t row, size_t k) const { return cost[row * m + k]; }
};

Instance checked(const Doubles& values, const Doubles& costs, const Indices& offsets,
                 const Doubles& budgets) {
    if (values.ndim() != 1) fail("values must be 1-D, got " + str(values.ndim()) + "-D");
    if (costs.ndim() != 2) fail("costs must be 2-D (options x budgets), got " + str(costs.ndim()) + "-D");
    if (offsets.ndim() != 1) fail("offsets must be 1-D, got " + str(offsets.ndim()) + "-D");
    if (budgets.ndim() != 1) fail("budgets must be 1-D, got " + str(budgets.ndim()) + "-D");
    const std::int64_t rows = values.shape(0);
    if (costs.shape(0) != rows)
        fail("costs has " + str(costs.shape(0)) + " rows but values has " + str(rows) + " options");
    if (costs.shape(1) != budgets.shape(0))
        fail("costs has " + str(costs.shape(1)) + " columns but there are " + str(budgets.shape(0)) +
             " budgets");
    if (offsets.shape(0) < 2) fail("no sites: offsets must hold at least 2 entries");

    Instance in;
    in.n = static_cast<size_t>(offsets.shape(0) - 1);
    in.m = static_cast<size_t>(budgets.shape(0));
    in.value = values.data();
    in.cost = costs.data();
    in.offset = offsets.data();
    in.budget = budgets.data();

    if (in.offset[0] != 0) fail("offsets must start at 0, got " + str(in.offset[0]));
    for (size_t i = 0; i < in.n; ++i) {
        if (in.offset[i + 1] < in.offset[i])
            fail("offsets must be non-decreasing, but offsets[" + str(std::int64_t(i + 1)) + "] = " +
                 str(in.offset[i + 1]) + " < offsets[" + str(std::int64_t(i)) + "] = " + str(in.offset[i]));
        if (in.offset[i + 1] == in.offset[i]) fail("site " + str(std::int64_t(i)) + " has no options");
    }
    if (in.offset[in.n] != rows)
        fail("offsets must end at the number of options, " + str(rows) + ", got " + str(in.offset[in.n]));

    for (size_t i = 0; i < in.n; ++i) {
        for (auto row = in.offset[i]; row < in.offset[i + 1]; ++row) {
            auto where = [&] { return " at site " + str(std::int64_t(i)) + ", option " + str(row - in.offset[i]) + " is "; };
            const double v = in.value[row];
            if (!(std::isfinite(v) && v >= 0))
                fail("value" + where() + str(v) + "; values must be finite and >= 0");
            for (size_t k = 0; k < in.m; ++k) {
                const double c = in.c(static_cast<size_t>(row), k);
                if (!(std::isfinite(c) && c >= 0))
                    fail("cost " + str(std::int64_t(k)) + where() + str(c) + "; costs must be finite and >= 0");
            }
        }
    }
    for (size_t k = 0; k < in.m; ++k) {
        const double b = in.budget[k];
        if (!(std::isfinite(b) && b >= 0))
            fail("budget " + str(std::int64_t(k)) + " is " + str(b) + "; budgets must be finite and >= 0");
    }
    return in;
}

// Exact up to kGapTolerance unless the search's width runs out:
//  1. drops options dominated at their site (another has at least the value at no more of any cost);
//  2. finds Lagrange multipliers lambda (one per budget) by exact line searches on the dual
//     L(lambda) = sum_i max_j (v_ij - lambda.c_ij) + lambda.B, an upper bound on the value of any plan;
//  3. builds a plan from each site's best option at lambda, repaired to fit and improved by single swaps;
//  4. searches (see pass()) with a dynamic program over the sites, pruned by Lagrangian bounds,
//     feasibility and dominance, in passes of growing width until one is exact.
class Solver {
public:
    explicit Solver(const Instance& in) : in_(in), cap_(in.m), scale_(in.m) {
        for (size_t k = 0; k < in.m; ++k) {
            cap_[k] = in.budget[k] * (1 + kBudgetTolerance);
            scale_[k] = in.budget[k] > 0 ? in.budget[k] : 1;
        }
    }

    // The chosen row of every site.
    std::vector<size_t> solve() {
        check_each_budget();
        drop_dominated();
        find_multipliers();
        return search(heuristic());
    }

private:
    const Instance& in_;
    std::vector<double> cap_;    // budget k with its tolerance
    std::vector<double> scale_;  // budget k, or 1 when it is 0: weighs overruns of different budgets
    std::vector<std::vector<size_t>> options_;  // the undominated rows of each site
    std::vector<double> lambda_;                // one multiplier per budget
    std::vector<std::vector<double>> probes_;   // multipliers for the search's bounds, lambda_ first
    std::vector<double> a_, s_;                 // line search scratch
    std::vector<std::pair<double, double>> breaks_;
    std::vector<std::pair<size_t, size_t>> trail_;  // search: (previous entry, row)

    double reduced(size_t row) const {
        double r = in_.value[row];
        for (size_t k = 0; k < in_.m; ++k) r -= lambda_[k] * in_.c(row, k);
        return r;
    }

    void check_each_budget() const {
        for (size_t k = 0; k < in_.m; ++k) {
            double cheapest = 0;
            for (size_t i = 0; i < in_.n; ++i) {
                double least = kInf;
                for (auto row = in_.offset[i]; row < in_.offset[i + 1]; ++row)
                    least = std::min(least, in_.c(static_cast<size_t>(row), k));
                cheapest += least;
            }
            if (cheapest > cap_[k])
                fail("no plan fits budget " + str(std::int64_t(k)) +
                     ": the cheapest option at every site already costs " + str(cheapest) + " > " +
                     str(in_.budget[k]));
        }
    }

    bool at_least_as_good(size_t a, size_t b) const {
        if (in_.value[a] < in_.value[b]) return false;
        for (size_t k = 0; k < in_.m; ++k)
            if (in_.c(a, k) > in_.c(b, k)) return false;
        return true;
    }

    // Keeps an option unless another at its site has at least its value and at most each of its costs
    // (of identical options, the first stays): some optimal plan uses only the options kept.
    void drop_dominated() {
        options_.assign(in_.n, {});
        for (size_t i = 0; i < in_.n; ++i) {
            const auto first = static_cast<size_t>(in_.offset[i]), end = static_cast<size_t>(in_.offset[i + 1]);
            for (size_t b = first; b < end; ++b) {
                bool dominated = false;
                for (size_t a = first; a < end && !dominated; ++a)
                    dominated = a != b && at_least_as_good(a, b) && (a < b || !at_least_as_good(b, a));
                if (!dominated) options_[i].push_back(b);
            }
        }
    }

    // L(lambda), and in used the costs of the plan taking each site's best option at lambda.
    double dual(const std::vector<double>& lambda, std::vector<double>& used) const {
        double total = 0;
        for (size_t k = 0; k < in_.m; ++k) total += lambda[k] * cap_[k];
        used.assign(in_.m, 0.0);
        for (const auto& rows : options_) {
            double best = -kInf;
            size_t arg = rows[0];
            for (size_t row : rows) {
                double r = in_.value[row];
                for (size_t k = 0; k < in_.m; ++k) r -= lambda[k] * in_.c(row, k);
                if (r > best) best = r, arg = row;
            }
            total += best;
            for (size_t k = 0; k < in_.m; ++k) used[k] += in_.c(arg, k);
        }
        return total;
    }

    // The t in [0, t_max] minimising L(lambda + t dir). Each site's term is the upper envelope of the
    // lines a - t s (a its reduced value, s = dir.c), so L is convex and piecewise linear in t, and its
    // minimum is where its slope, dir.B - sum over sites of the current line's s, turns >= 0. The
    // envelopes' breakpoints are walked site by site, then swept in order. Returns t_max (perhaps
    // infinite) if the slope stays negative.
    double line_search(const std::vector<double>& dir, double t_max) {
        double slope = 0;
        for (size_t k = 0; k < in_.m; ++k) slope += dir[k] * cap_[k];
        breaks_.clear();
        for (const auto& rows : options_) {
            a_.clear();
            s_.clear();
            for (size_t row : rows) {
                double s = 0;
                for (size_t k = 0; k < in_.m; ++k) s += dir[k] * in_.c(row, k);
                a_.push_back(reduced(row));
                s_.push_back(s);
            }
            size_t cur = 0;
            for (size_t j = 1; j < a_.size(); ++j)
                if (a_[j] > a_[cur] || (a_[j] == a_[cur] && s_[j] < s_[cur])) cur = j;
            slope -= s_[cur];
            for (double t = 0;;) {  // lines of smaller s overtake the current one as t grows
                size_t next = cur;
                double t_next = kInf;
                for (size_t j = 0; j < a_.size(); ++j) {
                    if (!(s_[j] < s_[cur])) continue;  // s falls at every step (NaN never passes), so the walk ends
                    const double tj = std::max(t, (a_[cur] - a_[j]) / (s_[cur] - s_[j]));
                    if (tj < t_next || (tj == t_next && s_[j] < s_[next])) next = j, t_next = tj;
                }
                if (next == cur || t_next >= t_max) break;
                breaks_.emplace_back(t_next, s_[cur] - s_[next]);
                cur = next;
                t = t_next;
            }
        }
        if (slope >= 0) return 0;
        std::sort(breaks_.begin(), breaks_.end());
        for (const auto& [t, rise] : breaks_)
            if ((slope += rise) >= 0) return t;
        return t_max;
    }

    // Multipliers minimising L: rounds of exact line searches, up and down each multiplier, along the
    // projected subgradient, then along the round's whole move (which cuts across the valleys that
    // coordinate steps zigzag in), until a round no longer lowers L. Any lambda >= 0 gives a valid
    // bound; the closer to the minimum, the tighter.
    void find_multipliers() {
        lambda_.assign(in_.m, 0.0);
        std::vector<double> used, trial, trial_used, dir(in_.m), origin;
        double best = dual(lambda_, used);
        auto step = [&] {  // along dir, as far as lambda stays >= 0
            double t_max = kInf;
            for (size_t k = 0; k < in_.m; ++k)
                if (dir[k] < 0) t_max = std::min(t_max, lambda_[k] / -dir[k]);
            if (!(t_max > 0) || std::all_of(dir.begin(), dir.end(), [](double x) { return x == 0; })) return;
            const double t = line_search(dir, t_max);
            if (!(t > 0) || !std::isfinite(t)) return;
            trial = lambda_;
            for (size_t k = 0; k < in_.m; ++k) trial[k] = std::max(0.0, trial[k] + t * dir[k]);
            const double value = dual(trial, trial_used);
            if (value < best) best = value, lambda_.swap(trial), used.swap(trial_used);
        };
        for (int round = 0; in_.m > 0 && round < kMultiplierRounds; ++round) {
            const double start = best;
            origin = lambda_;
            for (size_t k = 0; k < in_.m; ++k)
                for (double sign : {1.0, -1.0}) {
                    std::fill(dir.begin(), dir.end(), 0.0);
                    dir[k] = sign;
                    step();
                }
            for (size_t k = 0; k < in_.m; ++k)  // L's subgradient is B - used
                dir[k] = lambda_[k] > 0 || used[k] > cap_[k] ? used[k] - cap_[k] : 0;
            step();
            for (size_t k = 0; k < in_.m; ++k) dir[k] = lambda_[k] - origin[k];
            step();
            if (!(best < start - 1e-12 * std::abs(start))) break;
        }
        // The search also bounds partial plans at multipliers around lambda, which charge one that
        // spends more (or less) than its share of a budget for what that leaves the sites after it.
        probes_ = {lambda_, std::vector<double>(in_.m, 0.0)};
        for (double scale : {0.5, 0.75, 4.0 / 3, 2.0}) {
            if (in_.m == 0) break;
            probes_.push_back(lambda_);
            for (double& x : probes_.back()) x *= scale;
            for (size_t k = 0; k < in_.m && in_.m > 1; ++k) {
                probes_.push_back(lambda_);
                probes_.back()[k] *= scale;
            }
        }
    }

    bool fits(const std::vector<size_t>& plan) const {
        for (size_t k = 0; k < in_.m; ++k) {
            double total = 0;
            for (size_t row : plan) total += in_.c(row, k);
            if (total > cap_[k]) return false;
        }
        return true;
    }

    // Each site's best option at the multipliers (ties to the cheaper); then, while a budget is
    // overrun, the swap losing the least value per unit of overrun removed; then, while one exists,
    // the swap adding the most value that still fits. May still overrun when there are several budgets.
    std::vector<size_t> heuristic() const {
        const size_t m = in_.m;
        auto weight = [&](size_t row) {
            double w = 0;
            for (size_t k = 0; k < m; ++k) w += in_.c(row, k) / scale_[k];
            return w;
        };
        std::vector<size_t> plan(in_.n);
        std::vector<double> used(m, 0.0);
        for (size_t i = 0; i < in_.n; ++i) {
            size_t best = options_[i][0];
            for (size_t row : options_[i]) {
                const double r = reduced(row), rb = reduced(best);
                if (r > rb || (r == rb && weight(row) < weight(best))) best = row;
            }
            plan[i] = best;
            for (size_t k = 0; k < m; ++k) used[k] += in_.c(best, k);
        }
        // The overrun, weighted by budget, if site i swapped plan[i] for row.
        auto overrun = [&](size_t i, size_t row) {
            double over = 0;
            for (size_t k = 0; k < m; ++k)
                over += std::max(0.0, used[k] - in_.c(plan[i], k) + in_.c(row, k) - cap_[k]) / scale_[k];
            return over;
        };
        auto overrun_now = [&] { return overrun(0, plan[0]); };
        auto swap = [&](size_t i, size_t row) {
            for (size_t k = 0; k < m; ++k) used[k] += in_.c(row, k) - in_.c(plan[i], k);
            plan[i] = row;
        };
        const size_t max_swaps = 4 * in_.n + 16;
        for (size_t swaps = 0; swaps < max_swaps; ++swaps) {
            const double over = overrun_now();
            if (over <= 0) break;
            size_t site = in_.n, pick = 0;
            double best_score = kInf;
            for (size_t i = 0; i < in_.n; ++i)
                for (size_t row : options_[i]) {
                    const double relief = over - overrun(i, row);
                    if (row == plan[i] || !(relief > 0)) continue;
                    const double score = (in_.value[plan[i]] - in_.value[row]) / relief;
                    if (score < best_score) best_score = score, site = i, pick = row;
                }
            if (site == in_.n) break;
            swap(site, pick);
        }
        for (size_t swaps = 0; swaps < max_swaps && overrun_now() <= 0; ++swaps) {
            size_t site = in_.n, pick = 0;
            double best_gain = 0;
            for (size_t i = 0; i < in_.n; ++i)
                for (size_t row : options_[i]) {
                    const double gain = in_.value[row] - in_.value[plan[i]];
                    if (gain > best_gain && overrun(i, row) <= 0) best_gain = gain, site = i, pick = row;
                }
            if (site == in_.n) break;
            swap(site, pick);
        }
        return plan;
    }

    // The best plan found (a row per site), its value, and what a plan must exceed to improve on it by
    // more than kGapTolerance.
    struct Incumbent {
        std::vector<size_t> plan;
        double value = -kInf;
        double threshold = -kInf;
    };

    // Takes the plan if it fits and beats the incumbent.
    bool offer(Incumbent& best, const std::vector<size_t>& plan) const {
        double value = 0;
        for (size_t row : plan) value += in_.value[row];
        if (!(value > best.value) || !fits(plan)) return false;
        best = {plan, value, value + kGapTolerance * std::abs(value)};
        return true;
    }

    // A partial plan: its value, its reduced value (value - lambda . cost), its bound and its last choice.
    struct Partial {
        double value;
        double reduced;
        double bound;
        size_t trail;  // entry of trail_: the row chosen at the last site, and the entry before
    };
    static constexpr size_t kNoTrail = std::numeric_limits<size_t>::max();

    // Passes of growing width (see pass()) from the heuristic plan, until one is exact.
    std::vector<size_t> search(const std::vector<size_t>& start) {
        Incumbent best;
        offer(best, start);
        bool exact = false;
        for (size_t width = kScoutStates; !exact && width <= kMaxStates; width *= 4) exact = pass(width, best);
        if (best.plan.empty())
            fail(exact ? std::string(kJointlyInfeasible)
                       : "no plan fitting all budgets together was found by a search keeping " +
                             str(std::int64_t(kMaxStates)) + " partial plans per site");
        return best.plan;
    }

    // One pass of a dynamic program over the sites that keeps, after each site, the partial plans that
    // could still beat the incumbent: each must fit with the cheapest options at the sites left, its
    // Lagrangian bounds (at each probe) must exceed the incumbent's threshold, and no other partial
    // plan may dominate it (at least its value at no more of any cost). Options whose bound alone falls
    // short are dropped first, which fixes most sites. The others are taken most options first, then
    // clearest call first (largest gap between their two best reduced values), leaving the close calls
    // to the end, where the bounds are tightest. Past `width` partial plans, those of highest bound are
    // kept and the pass is no longer exact. Offers the best complete plan to the incumbent and returns
    // whether the pass was exact, in which case no plan beats the incumbent by more than kGapTolerance.
    bool pass(size_t width, Incumbent& best) {
        const size_t n = in_.n, m = in_.m;
        const double threshold = best.threshold;
        double lambda_cap = 0;
        for (size_t k = 0; k < m; ++k) lambda_cap += lambda_[k] * cap_[k];
        std::vector<double> r(static_cast<size_t>(in_.offset[n]));
        std::vector<std::vector<size_t>> viable(options_);
        double upper = lambda_cap;  // L(lambda)
        for (size_t i = 0; i < n; ++i) {
            for (size_t row : viable[i]) r[row] = reduced(row);
            std::stable_sort(viable[i].begin(), viable[i].end(), [&](size_t a, size_t b) { return r[a] > r[b]; });
            upper += r[viable[i][0]];
        }
        if (upper <= threshold) return true;
        std::vector<size_t> fixed(n), core;
        std::vector<double> gap(n, kInf);
        Partial root{0, 0, kInf, kNoTrail};
        std::vector<double> root_cost(m, 0.0);
        for (size_t i = 0; i < n; ++i) {
            auto& rows = viable[i];
            const double top = r[rows[0]];
            rows.erase(std::find_if(rows.begin(), rows.end(),
                                    [&](size_t row) { return upper - (top - r[row]) <= threshold; }),
                       rows.end());
            if (rows.size() > 1) {
                gap[i] = top - r[rows[1]];
                core.push_back(i);
                continue;
            }
            fixed[i] = rows[0];
            root.value += in_.value[rows[0]];
            root.reduced += r[rows[0]];
            for (size_t k = 0; k < m; ++k) root_cost[k] += in_.c(rows[0], k);
        }
        std::stable_sort(core.begin(), core.end(), [&](size_t a, size_t b) {
            return viable[a].size() != viable[b].size() ? viable[a].size() > viable[b].size() : gap[a] > gap[b];
        });

        // What the core sites from the d-th on add at most to value - probe . cost, for each probe, and
        // at least to each cost.
        const size_t depth = core.size(), probes = probes_.size();
        std::vector<double> probe_cap(probes, 0.0), rest((depth + 1) * probes, 0.0), rest_cost((depth + 1) * m, 0.0);
        for (size_t p = 0; p < probes; ++p)
            for (size_t k = 0; k < m; ++k) probe_cap[p] += probes_[p][k] * cap_[k];
        for (size_t d = depth; d-- > 0;) {
            const auto& rows = viable[core[d]];
            for (size_t p = 0; p < probes; ++p) {
                double most = -kInf;
                for (size_t row : rows) {
                    double x = in_.value[row];
                    for (size_t k = 0; k < m; ++k) x -= probes_[p][k] * in_.c(row, k);
                    most = std::max(most, x);
                }
                rest[d * probes + p] = rest[(d + 1) * probes + p] + most;
            }
            for (size_t k = 0; k < m; ++k) {
                double least = kInf;
                for (size_t row : rows) least = std::min(least, in_.c(row, k));
                rest_cost[d * m + k] = rest_cost[(d + 1) * m + k] + least;
            }
        }

        std::vector<Partial> states, children;
        std::vector<double> cost, child_cost, spent(m);
        std::vector<std::pair<size_t, size_t>> origin;  // per child: its parent state and its row
        trail_.clear();
        bool exact = true;
        bool room = true;
        for (size_t k = 0; k < m; ++k) room = room && root_cost[k] + rest_cost[k] <= cap_[k];
        if (room) states.push_back(root), cost = root_cost;
        for (size_t d = 0; d < depth && !states.empty(); ++d) {
            children.clear();
            child_cost.clear();
            origin.clear();
            for (size_t s = 0; s < states.size(); ++s) {
                for (size_t row : viable[core[d]]) {
                    const double reduced = states[s].reduced + r[row];
                    if (reduced + rest[(d + 1) * probes] + lambda_cap <= threshold) break;  // and the rest
                    bool fit = true;
                    for (size_t k = 0; k < m && fit; ++k) {
                        spent[k] = cost[s * m + k] + in_.c(row, k);
                        fit = spent[k] + rest_cost[(d + 1) * m + k] <= cap_[k];
                    }
                    if (!fit) continue;
                    const double value = states[s].value + in_.value[row];
                    double bound = kInf;
                    for (size_t p = 0; p < probes; ++p) {
                        double b = value + rest[(d + 1) * probes + p] + probe_cap[p];
                        for (size_t k = 0; k < m; ++k) b -= probes_[p][k] * spent[k];
                        bound = std::min(bound, b);
                    }
                    if (bound <= threshold) continue;
                    children.push_back({value, reduced, bound, kNoTrail});
                    child_cost.insert(child_cost.end(), spent.begin(), spent.end());
                    origin.emplace_back(s, row);
                }
            }
            std::vector<size_t> keep = undominated(children, child_cost);
            if (keep.size() > width) {
                exact = false;
                std::nth_element(keep.begin(), keep.begin() + static_cast<std::ptrdiff_t>(width), keep.end(),
                                 [&](size_t a, size_t b) {
                                     const Partial &x = children[a], &y = children[b];
                                     if (x.bound != y.bound) return x.bound > y.bound;
                                     if (x.value != y.value) return x.value > y.value;
                                     return a < b;
                                 });
                keep.resize(width);
            }
            std::vector<Partial> next;
            std::vector<double> next_cost;
            for (size_t c : keep) {
                trail_.emplace_back(states[origin[c].first].trail, origin[c].second);
                next.push_back({children[c].value, children[c].reduced, children[c].bound, trail_.size() - 1});
                next_cost.insert(next_cost.end(), child_cost.begin() + static_cast<std::ptrdiff_t>(c * m),
                                 child_cost.begin() + static_cast<std::ptrdiff_t>((c + 1) * m));
            }
            states.swap(next);
            cost.swap(next_cost);
        }

        std::vector<size_t> order(states.size());
        std::iota(order.begin(), order.end(), size_t{0});
        std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return states[a].value > states[b].value; });
        for (size_t s : order) {
            if (!(states[s].value > best.value)) break;
            std::vector<size_t> plan = fixed;
            size_t d = depth;
            for (auto t = states[s].trail; t != kNoTrail; t = trail_[t].first) plan[core[--d]] = trail_[t].second;
            if (offer(best, plan)) break;
        }
        return exact;
    }

    // The children not dominated by another (at least its value at no more of any cost; of equal ones,
    // the first). Exact for up to two budgets, by a sweep; with more, each child is compared only with
    // the last kDominanceWindow kept before it, of higher value.
    std::vector<size_t> undominated(const std::vector<Partial>& plans, const std::vector<double>& costs) const {
        const size_t m = in_.m;
        auto c = [&](size_t s, size_t k) { return k < m ? costs[s * m + k] : 0.0; };
        std::vector<size_t> order(plans.size()), keep;
        std::iota(order.begin(), order.end(), size_t{0});
        if (m <= 2) {
            std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
                if (c(a, 0) != c(b, 0)) return c(a, 0) < c(b, 0);
                if (c(a, 1) != c(b, 1)) return c(a, 1) < c(b, 1);
                if (plans[a].value != plans[b].value) return plans[a].value > plans[b].value;
                return a < b;
            });
            // Among the plans kept so far (no costlier in budget 0), the highest value at each cost in
            // budget 1: values rise with cost.
            std::map<double, double> stair;
            for (size_t s : order) {
                const double c1 = c(s, 1), value = plans[s].value;
                auto it = stair.upper_bound(c1);
                if (it != stair.begin() && std::prev(it)->second >= value) continue;
                for (it = stair.lower_bound(c1); it != stair.end() && it->second <= value;) it = stair.erase(it);
                stair.emplace_hint(it, c1, value);
                keep.push_back(s);
            }
            return keep;
        }
        std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
            return plans[a].value != plans[b].value ? plans[a].value > plans[b].value : a < b;
        });
        for (size_t s : order) {
            bool dominated = false;
            for (size_t j = keep.size(); j-- > keep.size() - std::min(keep.size(), kDominanceWindow) && !dominated;) {
                dominated = true;
                for (size_t k = 0; k < m && dominated; ++k) dominated = c(keep[j], k) <= c(s, k);
            }
            if (!dominated) keep.push_back(s);
        }
        return keep;
    }
};

py::tuple solve(const Doubles& values, const Doubles& costs, const Indices& offsets, const Doubles& budgets) {
    const Instance in = checked(values, costs, offsets, budgets);
    std::vector<size_t> plan;
    {
        py::gil_scoped_release release;
        plan = Solver(in).solve();
    }
    py::array_t<std::int64_t> choice(static_cast<py::ssize_t>(in.n));
    auto out = choice.mutable_unchecked<1>();
    double objective = 0;
    for (size_t i = 0; i < in.n; ++i) {
        out(static_cast<py::ssize_t>(i)) = static_cast<std::int64_t>(plan[i]) - in.offset[i];
        objective += in.value[plan[i]];
    }
    return py::make_tuple(choice, objective);
}

}  // namespace

PYBIND11_MODULE(_rank_alloc, m) {
    m.doc() = "LayerLens native allocator";
    m.def("build_info", &build_info, "Compiler, language standard and pybind11 version of this build.");
    m.def("solve", &solve, py::arg("values"), py::arg("costs"), py::arg("offsets"), py::arg("budgets"),
          "Choose one option per site maximising the total value with every budget kept.\n\n"
          "values: float64[rows]; costs: float64[rows, m]; offsets: int64[n + 1], site i's options being\n"
          "rows offsets[i] .. offsets[i+1]-1; budgets: float64[m]. A plan fits budget k when its total\n"
          "cost is at most budgets[k] * (1 + 1e-9). Returns (choice, objective): choice is int64[n], the\n"
          "option chosen at each site counted within the site. Exact up to a relative gap of 1e-5 unless\n"
          "the search outgrows its width (1024 partial plans), when it returns the best plan found.\n"
          "Deterministic: no clocks, no randomness.\n"
          "Raises ValueError on invalid input or when no plan fits.");
}
