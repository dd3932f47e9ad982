// The allocator's solver and checks (see rank_alloc.hpp); no Python here.
#include "rank_alloc.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iterator>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace layerlens {
namespace {

using std::size_t;

// A first, cheap pass of the search keeps this many partial plans (at most kMaxStates in the last).
constexpr size_t kScoutStates = 16;
// With more than two budgets, a partial plan is checked for dominance against this many others.
constexpr size_t kDominanceWindow = 256;
// Reduced values this close, relative to the size of their terms, count as tied: rounding noise.
constexpr double kTieTolerance = 1e-12;
// At most this many rounds of line searches for the Lagrange multipliers.
constexpr int kMultiplierRounds = 50;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr const char* kJointlyInfeasible =
    "no plan fits all budgets together (each budget alone can be met)";

[[noreturn]] void fail(const std::string& message) { throw std::invalid_argument(message); }

std::string str(std::size_t x) { return std::to_string(x); }
std::string str(std::int64_t x) { return std::to_string(x); }

// x as Python's repr writes a float: the shortest digits that read back as x (of those, the closest),
// positional with a digit after the point when x's decimal exponent is in [-4, 16), else d.ddde+XX.
std::string repr(double x) {
    if (std::isnan(x)) return "nan";
    if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
    char buffer[64];
    const char* end = std::to_chars(buffer, buffer + sizeof buffer, x, std::chars_format::scientific).ptr;
    const std::string text(buffer, static_cast<size_t>(end - buffer));  // [-]d[.ddd]e(+|-)dd[d]
    const size_t e = text.find('e');
    const bool negative = text[0] == '-';
    std::string digits;
    for (size_t j = negative ? 1 : 0; j < e; ++j)
        if (text[j] != '.') digits += text[j];
    const int exponent = std::atoi(text.c_str() + e + 1);
    const int point = exponent + 1, count = static_cast<int>(digits.size());  // digits before the point
    std::string out = negative ? "-" : "";
    if (-4 < point && point <= 16) {
        if (point <= 0) return out + "0." + std::string(static_cast<size_t>(-point), '0') + digits;
        if (point >= count) return out + digits + std::string(static_cast<size_t>(point - count), '0') + ".0";
        return out + digits.substr(0, static_cast<size_t>(point)) + "." + digits.substr(static_cast<size_t>(point));
    }
    out += digits.substr(0, 1) + (count > 1 ? "." + digits.substr(1) : "");
    const std::string magnitude = std::to_string(std::abs(exponent));
    return out + (exponent < 0 ? "e-" : "e+") + (magnitude.size() < 2 ? "0" : "") + magnitude;
}

// x as Python's format(x, "g") writes it: 6 significant digits.
std::string general(double x) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%g", x);
    return buffer;
}

// What every value, cost and budget must be.
bool valid(double x) { return std::isfinite(x) && x >= 0; }

// A checked problem, as the solver reads it. Site i's options are rows offset[i] .. offset[i+1]-1.
struct Instance {
    size_t n = 0;  // sites
    size_t m = 0;  // budgets
    const double* value = nullptr;          // [rows]
    const double* cost = nullptr;           // [rows][m]
    const std::int64_t* offset = nullptr;   // [n + 1]
    const double* budget = nullptr;         // [m]
    double c(size_t row, size_t k) const { return cost[row * m + k]; }
};

// Arrays the size of a problem, kept from one solve to the next on the same thread so that their memory
// is not faulted in afresh each time (a noticeable share of a solve of a few hundred sites). They hold
// the largest problem's worth until the thread ends.
struct Workspace {
    std::vector<size_t> first, row, best, trial_best, top;
    std::vector<double> value, cost, cost_t, r, trial_r, s;
    std::vector<std::pair<double, double>> firsts, breaks;
};

// Within kGapTolerance of the optimum unless the search's width runs out:
//  1. keeps, at each site, the options no other dominates (another has at least its value at no more
//     of any cost), in arrays of their own;
//  2. lowers the Lagrangian dual L(lambda) = sum_i max_j (v_ij - lambda.c_ij) + lambda.B, an upper bound
//     on the value of any plan, by exact line searches over the multipliers lambda (see descend());
//  3. as L settles, builds a plan from each site's best option at lambda, made to fit by raising the
//     multipliers of the budgets it overruns, then given the upgrades that still fit (see heuristic()),
//     and stops once L proves that plan within kGapTolerance (on large problems, mostly after a few line
//     searches: their bounds are tight);
//  4. otherwise searches (see pass()) with a dynamic program over the sites, pruned by Lagrangian bounds,
//     feasibility and dominance, in passes of growing width until one is exact.
// Every loop is bounded whatever the input; nothing depends on clocks or randomness. The instance must
// have passed check(), which also proves each budget alone can be met.
class Solver {
public:
    Solver(const Instance& in, Workspace& work)
        : in_(in), n_(in.n), m_(in.m), cap_(in.m), scale_(in.m), first_(work.first), row_(work.row),
          best_(work.best), trial_best_(work.trial_best), top_(work.top), value_(work.value), cost_(work.cost),
          cost_t_(work.cost_t), r_(work.r), trial_r_(work.trial_r), s_(work.s), firsts_(work.firsts),
          breaks_(work.breaks) {
        for (size_t k = 0; k < m_; ++k) {
            cap_[k] = in.budget[k] * (1 + kBudgetTolerance);
            scale_[k] = in.budget[k] > 0 ? in.budget[k] : 1;
        }
    }

    // The chosen row of every site.
    std::vector<size_t> solve() {
        drop_dominated();
        start_multipliers();
        Incumbent best;
        descend(best);
        set_probes();
        std::vector<size_t> plan = search(best);
        for (size_t& p : plan) p = row_[p];
        return plan;
    }

private:
    // The best plan found (an option per site), its value, and what a plan must exceed to improve on it
    // by more than kGapTolerance.
    struct Incumbent {
        std::vector<size_t> plan;
        double value = -kInf;
        double threshold = -kInf;
    };

    const Instance& in_;
    const size_t n_, m_;
    std::vector<double> cap_;    // budget k with its tolerance
    std::vector<double> scale_;  // budget k, or 1 when it is 0: weighs overruns of different budgets
    // Arrays the size of the problem, in the workspace. The undominated options (site i's are first_[i]
    // .. first_[i+1]-1, in input order): their input row, value and costs (cost_[p * m + k], and by
    // budget in cost_t_[k * options + p]). Plans are vectors of these indices until solve() returns.
    std::vector<size_t>&first_, &row_, &best_, &trial_best_, &top_;
    std::vector<double>&value_, &cost_, &cost_t_, &r_, &trial_r_, &s_;
    std::vector<std::pair<double, double>>&firsts_, &breaks_;  // line search: (t, rise in slope)
    std::vector<bool> rising_;  // per site: its options are ascending()
    std::vector<double> lambda_;  // one multiplier per budget
    double bound_ = kInf;         // L(lambda_)
    // At lambda_: each option's reduced value, v - lambda_.c (r_), each site's best option (best_), the
    // costs of the plan of those (used_) and the (site, option) pairs of options tied with their site's best.
    std::vector<double> used_;
    std::vector<std::pair<size_t, size_t>> ties_;
    std::vector<double> trial_, trial_used_;  // step() scratch, with trial_r_ and trial_best_
    std::vector<std::pair<size_t, size_t>> trial_ties_;
    std::vector<std::vector<double>> probes_;  // multipliers for the search's bounds, lambda_ first
    // Line search scratch, with s_ (dir.c per option), top_ (each site's line at t = 0), firsts_ and breaks_:
    // a site's options by s, and its envelope; the earliest breakpoint not a site's first.
    std::vector<size_t> order_, hull_;
    double second_ = kInf;
    std::vector<std::pair<size_t, size_t>> trail_;  // search: (previous entry, option)

    size_t options() const { return row_.size(); }
    double c(size_t p, size_t k) const { return cost_[p * m_ + k]; }

    // Whether site i's options rise strictly in value and never fall in any cost, each costing more than
    // the one before in some budget: then none dominates another (the common case: options by size).
    bool ascending(size_t i) const {
        for (auto row = static_cast<size_t>(in_.offset[i]) + 1; row < static_cast<size_t>(in_.offset[i + 1]); ++row) {
            if (!(in_.value[row] > in_.value[row - 1])) return false;
            bool more = false;
            for (size_t k = 0; k < m_; ++k) {
                if (in_.c(row, k) < in_.c(row - 1, k)) return false;
                more = more || in_.c(row, k) > in_.c(row - 1, k);
            }
            if (!more) return false;
        }
        return true;
    }

    // Keeps an option unless another at its site has at least its value and at most each of its costs
    // (of identical options, the first stays): some optimal plan uses only the options kept. Unless the
    // site's options are ascending(), they are taken most valuable first, then by their costs in
    // lexicographic order (which puts an option before any it dominates), and compared only with those
    // kept before them.
    void drop_dominated() {
        const size_t m = m_;
        auto costs = [&](size_t row) { return in_.cost + row * m; };
        std::vector<size_t> order, kept;
        const auto rows = static_cast<size_t>(in_.offset[n_]);
        row_.clear(), value_.clear(), cost_.clear();
        row_.reserve(rows);
        value_.reserve(rows);
        cost_.reserve(rows * m);
        first_.assign(1, 0);
        rising_.assign(n_, false);
        for (size_t i = 0; i < n_; ++i) {
            order.resize(static_cast<size_t>(in_.offset[i + 1] - in_.offset[i]));
            std::iota(order.begin(), order.end(), static_cast<size_t>(in_.offset[i]));
            rising_[i] = ascending(i);
            if (rising_[i]) {
                keep(order);
                continue;
            }
            std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
                if (in_.value[a] != in_.value[b]) return in_.value[a] > in_.value[b];
                const auto ca = costs(a), cb = costs(b);
                const auto diff = std::mismatch(ca, ca + m, cb).first - ca;
                return diff < std::ptrdiff_t(m) ? ca[diff] < cb[diff] : a < b;
            });
            kept.clear();
            for (size_t b : order) {
                auto covers = [&](size_t a) {
                    for (size_t k = 0; k < m; ++k)
                        if (in_.c(a, k) > in_.c(b, k)) return false;
                    return true;
                };
                if (std::none_of(kept.begin(), kept.end(), covers)) kept.push_back(b);
            }
            std::sort(kept.begin(), kept.end());
            keep(kept);
        }
        const size_t count = options();
        cost_t_.resize(cost_.size());
        for (size_t k = 0; k < m; ++k)
            for (size_t p = 0; p < count; ++p) cost_t_[k * count + p] = cost_[p * m + k];
    }

    // Appends a site's options (input rows) to the arrays of undominated options.
    void keep(const std::vector<size_t>& rows) {
        for (size_t row : rows) {
            row_.push_back(row);
            value_.push_back(in_.value[row]);
            cost_.insert(cost_.end(), in_.cost + row * m_, in_.cost + (row + 1) * m_);
        }
        first_.push_back(row_.size());
    }

    // How far below a site's best reduced value another still counts as tied with it: rounding in
    // v - lambda.c, relative to the size of the terms.
    double tie_slack(size_t best, size_t p, const std::vector<double>& r) const {
        return kTieTolerance * (std::abs(value_[best]) + std::abs(value_[best] - r[best]) + std::abs(value_[p]) +
                                std::abs(value_[p] - r[p]));
    }

    // Sets lambda_ and what goes with it (r_, best_, used_, ties_, bound_), afresh.
    void set_multipliers(const std::vector<double>& lambda) {
        lambda_ = lambda;
        r_.assign(value_.begin(), value_.end());
        by_budget(lambda_, -1, r_);
        bound_ = dual(lambda_, r_, best_, used_, ties_);
    }

    // L(lambda), given r, each option's reduced value at lambda; into best each site's best option (the
    // first of equal ones), into used their costs, and into ties the (site, option) pairs of the options
    // tied with their site's best.
    double dual(const std::vector<double>& lambda, const std::vector<double>& r, std::vector<size_t>& best_option,
                std::vector<double>& used, std::vector<std::pair<size_t, size_t>>& ties) const {
        double total = 0;
        for (size_t k = 0; k < m_; ++k) total += lambda[k] * cap_[k];
        used.assign(m_, 0.0);
        best_option.resize(n_);
        ties.clear();
        for (size_t i = 0; i < n_; ++i) {
            const size_t begin = first_[i], end = first_[i + 1];
            double best = -kInf, second = -kInf;  // (simple loops: the branches of a running argmax mispredict)
            for (size_t p = begin; p < end; ++p) best = std::max(best, r[p]);
            size_t arg = begin, runner_up = begin;  // the first best and the first next best
            for (size_t p = begin; p < end; ++p)
                if (r[p] == best) {
                    arg = p;
                    break;
                }
            for (size_t p = begin; p < end; ++p) second = std::max(second, p == arg ? -kInf : r[p]);
            for (size_t p = begin; p < end; ++p)
                if (p != arg && r[p] == second) {
                    runner_up = p;
                    break;
                }
            total += best;
            best_option[i] = arg;
            for (size_t k = 0; k < m_; ++k) used[k] += c(arg, k);
            if (runner_up == arg || !(r[runner_up] >= best - tie_slack(arg, runner_up, r))) continue;  // no tie
            for (size_t p = first_[i]; p < first_[i + 1]; ++p)
                if (p != arg && r[p] >= best - tie_slack(arg, p, r)) ties.emplace_back(i, p);
        }
        return total;
    }

    // s_ = dir.c for every option.
    void set_slopes(const std::vector<double>& dir) {
        s_.assign(options(), 0.0);
        by_budget(dir, 1, s_);
    }

    // out[p] += sign * x.c for every option p: budget by budget over blocks of options that stay in cache.
    void by_budget(const std::vector<double>& x, double sign, std::vector<double>& out) const {
        constexpr size_t kBlock = 512;
        const size_t count = options();
        double* o = out.data();
        for (size_t begin = 0; begin < count; begin += kBlock) {
            const size_t end = std::min(count, begin + kBlock);
            for (size_t k = 0; k < m_; ++k) {
                const double factor = sign * x[k], *ck = cost_t_.data() + k * count;
                if (factor != 0)
                    for (size_t p = begin; p < end; ++p) o[p] += factor * ck[p];
            }
        }
    }

    // The t in [0, t_max] minimising L(lambda_ + t dir). Each site's term is the upper envelope of the
    // lines r - t s (r its reduced value, s = dir.c), so L is convex and piecewise linear in t, and its
    // minimum is where its slope, dir.B - sum over sites of the current line's s, turns >= 0. Returns t_max
    // (perhaps infinite) if it never does.
    double line_search(const std::vector<double>& dir, double t_max) {
        double slope = 0;
        for (size_t k = 0; k < m_; ++k) slope += dir[k] * cap_[k];
        set_slopes(dir);
        top_ = best_;
        for (const auto& [i, p] : ties_)  // a tied site's line at t = 0 is its tied option of least s
            if (s_[p] < s_[top_[i]]) top_[i] = p;
        firsts_.clear();
        breaks_.clear();
        second_ = kInf;
        for (size_t i = 0; i < n_; ++i) slope -= envelope(i, t_max);
        if (slope >= 0) return 0;
        // Mostly the slope turns before any site's second breakpoint: then the first ones decide.
        const double t = crossing(firsts_, slope, t_max);
        if (t < t_max && t <= second_) return t;
        breaks_.insert(breaks_.end(), firsts_.begin(), firsts_.end());
        return crossing(breaks_, slope, t_max);
    }

    // Site i's envelope for t in [0, t_max): the upper convex hull of its options' points (s, r), from
    // its line at t = 0 (top_[i]) towards less s; each vertex takes over from the one before at the slope
    // of the edge between them. Adds those breakpoints, with the fall in s at each, to firsts_ (the first)
    // and breaks_ (the others, the earliest of which second_ keeps), and returns s of the line at t = 0.
    double envelope(size_t i, double t_max) {
        const size_t begin = first_[i], end = first_[i + 1], top = top_[i];
        // b stays a vertex of the upper hull between a and p (s rising) when the edge a-b is steeper than
        // b-p, with the divisions by the (positive) differences in s multiplied out.
        auto vertex = [&](size_t a, size_t b, size_t p) {
            return (r_[b] - r_[a]) * (s_[p] - s_[b]) > (r_[p] - r_[b]) * (s_[b] - s_[a]);
        };
        hull_.clear();
        auto add = [&](size_t p) {  // the options come by s rising; true once the line at t = 0 is in
            if (!hull_.empty() && !(s_[p] > s_[hull_.back()])) {  // of equal s, the greatest r stands
                if (p != top && !(r_[p] > r_[hull_.back()])) return false;
                hull_.pop_back();
            }
            while (hull_.size() >= 2 && !vertex(hull_.end()[-2], hull_.back(), p)) hull_.pop_back();
            hull_.push_back(p);
            return p == top;
        };
        bool rising = true, falling = true;  // the options often come by s (by size, dir >= 0) or reversed
        for (size_t p = begin + 1; p < end; ++p) {
            rising = rising && !(s_[p] < s_[p - 1]);
            falling = falling && !(s_[p] > s_[p - 1]);
        }
        if (rising) {
            for (size_t p = begin; p < end && !add(p);) ++p;
        } else if (falling) {
            for (size_t p = end; p-- > begin && !add(p);) {}
        } else {
            order_.resize(end - begin);
            std::iota(order_.begin(), order_.end(), begin);
            for (size_t j = 1; j < order_.size(); ++j)  // insertion sort by s
                for (size_t at = j; at > 0 && s_[order_[at]] < s_[order_[at - 1]]; --at)
                    std::swap(order_[at - 1], order_[at]);
            for (size_t j = 0; j < order_.size() && !add(order_[j]);) ++j;
        }
        for (size_t j = hull_.size() - 1; j > 0; --j) {
            const double t = (r_[hull_[j]] - r_[hull_[j - 1]]) / (s_[hull_[j]] - s_[hull_[j - 1]]);
            if (!(t < t_max)) break;
            if (j + 1 == hull_.size()) {
                firsts_.emplace_back(t, s_[hull_[j]] - s_[hull_[j - 1]]);
            } else {
                second_ = std::min(second_, t);
                breaks_.emplace_back(t, s_[hull_[j]] - s_[hull_[j - 1]]);
            }
        }
        return s_[hull_.back()];
    }

    // The first breakpoint, in order of t, at which the slope plus the rises of the breakpoints up to it
    // turns >= 0 (t_max if none does). Halves the breakpoints by selection (nth_element) rather than
    // sorting them all: linear time in their number.
    static double crossing(std::vector<std::pair<double, double>>& breaks, double slope, double t_max) {
        auto earlier = [](const std::pair<double, double>& a, const std::pair<double, double>& b) {
            return a.first < b.first;
        };
        auto lo = breaks.begin(), hi = breaks.end();
        while (hi - lo > 32) {
            const auto mid = lo + (hi - lo) / 2;
            std::nth_element(lo, mid, hi, earlier);
            double rise = 0;
            for (auto it = lo; it <= mid; ++it) rise += it->second;
            if (slope + rise >= 0) {
                hi = mid + 1;
            } else {
                slope += rise;
                lo = mid + 1;
            }
        }
        std::sort(lo, hi, earlier);
        for (auto it = lo; it != hi; ++it)
            if ((slope += it->second) >= 0) return it->first;
        return t_max;
    }

    // Moves lambda_ along dir by an exact line search, as far as it stays >= 0, if that lowers L. Costs
    // O(budgets) when the costs of the plan of each site's best option already show that L does not fall
    // along dir: L's slope there is at least dir.(B - used).
    void step(const std::vector<double>& dir) {
        double t_max = kInf, slope = 0;
        for (size_t k = 0; k < m_; ++k) {
            if (dir[k] < 0) t_max = std::min(t_max, lambda_[k] / -dir[k]);
            slope += dir[k] * (cap_[k] - used_[k]);
        }
        auto s = [&](size_t p) {
            double x = 0;
            for (size_t k = 0; k < m_; ++k) x += dir[k] * c(p, k);
            return x;
        };
        for (size_t j = 0; j < ties_.size();) {  // a tied site's line at t = 0 is its tied option of least s
            const size_t site = ties_[j].first;
            double fall = 0;
            for (; j < ties_.size() && ties_[j].first == site; ++j)
                fall = std::max(fall, s(best_[site]) - s(ties_[j].second));
            slope += fall;
        }
        if (!(t_max > 0) || slope >= 0 || std::all_of(dir.begin(), dir.end(), [](double x) { return x == 0; }))
            return;
        const double t = line_search(dir, t_max);
        if (!(t > 0) || !std::isfinite(t)) return;
        trial_ = lambda_;
        for (size_t k = 0; k < m_; ++k) trial_[k] = std::max(0.0, trial_[k] + t * dir[k]);
        trial_r_.assign(value_.begin(), value_.end());
        by_budget(trial_, -1, trial_r_);
        const double value = dual(trial_, trial_r_, trial_best_, trial_used_, trial_ties_);
        if (value < bound_) {
            bound_ = value;
            lambda_.swap(trial_), r_.swap(trial_r_), best_.swap(trial_best_), used_.swap(trial_used_);
            ties_.swap(trial_ties_);
        }
    }

    // lambda_ = 0, then the best multiple of 1 / B (a step that prices each budget for its size).
    void start_multipliers() {
        set_multipliers(std::vector<double>(m_, 0.0));
        std::vector<double> dir(m_);
        for (size_t k = 0; k < m_; ++k) dir[k] = 1 / scale_[k];
        if (std::all_of(dir.begin(), dir.end(), [](double x) { return std::isfinite(x); })) step(dir);
    }

    // Lowers L(lambda_) by rounds of exact line searches: along lambda (all multipliers in proportion),
    // shifting each multiplier's share (rotate()), up and down each multiplier, along the projected
    // subgradient, then along the round's whole move (which cuts across the valleys that other steps
    // zigzag in). Offers the heuristic plan at lambda_ to `best` at the start and whenever L has about
    // settled (a round, or its first half, took little off it); stops as soon as L proves that plan within
    // kGapTolerance of the optimum, or when a round no longer lowers L, or after kMultiplierRounds. Any
    // lambda >= 0 gives a valid bound; the closer to the minimum, the tighter.
    void descend(Incumbent& best) {
        std::vector<double> dir(m_), origin;
        double tried_at = std::numeric_limits<double>::quiet_NaN();  // L when last offered (L falls at each move)
        auto proven = [&] {
            if (bound_ != tried_at) tried_at = bound_, offer(best, heuristic());
            return bound_ <= best.threshold;
        };
        auto settled = [&](double from) {  // the moves since `from` took little off L
            return bound_ < from && from - bound_ <= 2 * kGapTolerance * std::abs(bound_);
        };
        if (proven()) return;
        for (int round = 0; m_ > 0 && round < kMultiplierRounds; ++round) {
            const double start = bound_;
            origin = lambda_;
            for (double sign : {1.0, -1.0}) {
                for (size_t k = 0; k < m_; ++k) dir[k] = sign * lambda_[k];
                step(dir);
            }
            for (size_t k = 0; k < (m_ == 2 ? 1 : m_); ++k)  // with two budgets, one shift covers both
                for (double sign : {1.0, -1.0}) rotate(k, sign, dir), step(dir);
            if (settled(start) && proven()) return;
            for (size_t k = 0; k < m_; ++k)
                for (double sign : {1.0, -1.0}) {
                    std::fill(dir.begin(), dir.end(), 0.0);
                    dir[k] = sign;
                    step(dir);
                }
            for (size_t k = 0; k < m_; ++k)  // L's subgradient is B - used (here with the budgets scaled to 1)
                dir[k] = lambda_[k] > 0 || used_[k] > cap_[k] ? (used_[k] - cap_[k]) / (scale_[k] * scale_[k]) : 0;
            step(dir);
            for (size_t k = 0; k < m_; ++k) dir[k] = lambda_[k] - origin[k];
            step(dir);
            if (!(bound_ < start - 1e-12 * std::abs(start))) break;
            if (settled(start) && proven()) return;
        }
        proven();
    }

    // Into dir, the move of lambda that shifts the price of budget k relative to the others' (up for
    // sign 1), at right angles to lambda with the budgets scaled to 1 (nu_j = lambda_j B_j): nu moves
    // along e_k less its part along nu.
    void rotate(size_t k, double sign, std::vector<double>& dir) const {
        double norm = 0;
        for (size_t j = 0; j < m_; ++j) norm += lambda_[j] * scale_[j] * lambda_[j] * scale_[j];
        const double along = norm > 0 ? lambda_[k] * scale_[k] / norm : 0;
        for (size_t j = 0; j < m_; ++j) dir[j] = sign * ((j == k) - along * lambda_[j] * scale_[j]) / scale_[j];
    }

    // The search also bounds partial plans at multipliers around lambda, which charge one that spends
    // more (or less) than its share of a budget for what that leaves the sites after it.
    void set_probes() {
        probes_ = {lambda_, std::vector<double>(m_, 0.0)};
        for (double scale : {0.5, 0.75, 4.0 / 3, 2.0}) {
            if (m_ == 0) break;
            probes_.push_back(lambda_);
            for (double& x : probes_.back()) x *= scale;
            for (size_t k = 0; k < m_ && m_ > 1; ++k) {
                probes_.push_back(lambda_);
                probes_.back()[k] *= scale;
            }
        }
    }

    bool fits(const std::vector<size_t>& plan) const {
        for (size_t k = 0; k < m_; ++k) {
            double total = 0;
            for (size_t p : plan) total += c(p, k);
            if (total > cap_[k]) return false;
        }
        return true;
    }

    // Site i's next line after `cur` as t grows past `t`, for the lines r - t s: of those of smaller s, the
    // one that overtakes it first (of simultaneous ones, the smallest s), and when; cur itself and
    // infinity when none does.
    std::pair<double, size_t> overtake(size_t i, size_t cur, double t) const {
        size_t next = cur;
        double t_next = kInf;
        for (size_t j = first_[i]; j < first_[i + 1]; ++j) {
            if (!(s_[j] < s_[cur])) continue;  // s falls at every step (NaN never passes), so a walk ends
            const double tj = std::max(t, (r_[cur] - r_[j]) / (s_[cur] - s_[j]));
            if (tj < t_next || (tj == t_next && s_[j] < s_[next])) next = j, t_next = tj;
        }
        return {t_next, next};
    }

    // A plan, fitting if it can find one: each site's best option at lambda_ (of tied ones, the cheapest,
    // each budget's cost relative to its size); while that overruns, the
    // plan of each site's best option at multipliers raised in the budgets overrun (lambda_ + t d, d_k =
    // 1 / B_k for those), for the least t at which it fits; then upgrades that still fit, most value
    // first. If raising the multipliers cannot make it fit, swaps that lose the least value per unit of
    // overrun removed. May still overrun when there are several budgets.
    std::vector<size_t> heuristic() {
        std::vector<size_t> plan = best_;
        std::vector<double> used(m_, 0.0), dir(m_, 0.0);
        auto overrun = [&] {
            bool over = false;
            for (size_t k = 0; k < m_; ++k) {
                dir[k] = used[k] > cap_[k] ? 1 / scale_[k] : 0.0;
                over = over || used[k] > cap_[k];
            }
            return over;
        };
        auto weight = [&](size_t p) {
            double w = 0;
            for (size_t k = 0; k < m_; ++k) w += c(p, k) / scale_[k];
            return w;
        };
        for (const auto& [i, p] : ties_)
            if (weight(p) < weight(plan[i])) plan[i] = p;
        for (size_t i = 0; i < n_; ++i)
            for (size_t k = 0; k < m_; ++k) used[k] += c(plan[i], k);
        if (overrun()) {
            set_slopes(dir);
            raise_multipliers(plan, used);
        }
        if (overrun()) repair(plan, used);
        if (!overrun()) fill(plan, used);
        return plan;
    }

    // Walks each site's line r - t s (s as set by heuristic()) down its envelope in order of t, from a
    // heap of each site's next breakpoint, until the plan fits every budget or no line is left to take.
    void raise_multipliers(std::vector<size_t>& plan, std::vector<double>& used) {
        std::vector<std::pair<double, size_t>> events;
        std::vector<size_t> next(n_);
        auto schedule = [&](size_t i, double t) {
            const auto [t_next, p] = overtake(i, plan[i], t);
            if (p == plan[i]) return false;
            next[i] = p;
            events.emplace_back(t_next, i);
            return true;
        };
        for (size_t i = 0; i < n_; ++i) schedule(i, 0);
        const auto later = std::greater<std::pair<double, size_t>>();
        std::make_heap(events.begin(), events.end(), later);
        auto fits = [&] {
            for (size_t k = 0; k < m_; ++k)
                if (used[k] > cap_[k]) return false;
            return true;
        };
        while (!events.empty() && !fits()) {
            std::pop_heap(events.begin(), events.end(), later);
            const auto [t, i] = events.back();
            events.pop_back();
            for (size_t k = 0; k < m_; ++k) used[k] += c(next[i], k) - c(plan[i], k);
            plan[i] = next[i];
            if (schedule(i, t)) std::push_heap(events.begin(), events.end(), later);
        }
    }

    // While a budget is overrun, the swap losing the least value per unit of overrun removed.
    void repair(std::vector<size_t>& plan, std::vector<double>& used) const {
        auto overrun = [&](size_t i, size_t p) {  // weighted by budget, if site i swapped plan[i] for p
            double over = 0;
            for (size_t k = 0; k < m_; ++k)
                over += std::max(0.0, used[k] - c(plan[i], k) + c(p, k) - cap_[k]) / scale_[k];
            return over;
        };
        for (size_t swaps = 0; swaps < 4 * n_ + 16; ++swaps) {
            const double over = overrun(0, plan[0]);
            if (over <= 0) break;
            size_t site = n_, pick = 0;
            double best_score = kInf;
            for (size_t i = 0; i < n_; ++i)
                for (size_t p = first_[i]; p < first_[i + 1]; ++p) {
                    const double relief = over - overrun(i, p);
                    if (p == plan[i] || !(relief > 0)) continue;
                    const double score = (value_[plan[i]] - value_[p]) / relief;
                    if (score < best_score) best_score = score, site = i, pick = p;
                }
            if (site == n_) break;
            for (size_t k = 0; k < m_; ++k) used[k] += c(pick, k) - c(plan[site], k);
            plan[site] = pick;
        }
    }

    // Upgrades that fit: in a sweep, each site's that adds the most value, the sites in order of it, while
    // each still fits; then sweeps of the sites that had one, until none has.
    void fill(std::vector<size_t>& plan, std::vector<double>& used) const {
        auto fits = [&](size_t i, size_t p) {
            for (size_t k = 0; k < m_; ++k)
                if (used[k] - c(plan[i], k) + c(p, k) > cap_[k]) return false;
            return true;
        };
        std::vector<std::pair<double, size_t>> upgrades;  // (value added, site): each site's best that fits
        std::vector<size_t> sites(n_), pick(n_);
        std::iota(sites.begin(), sites.end(), size_t{0});
        while (!sites.empty()) {  // each sweep takes at least its first upgrade, so this ends
            upgrades.clear();
            for (size_t i : sites) {
                double most = 0;
                if (rising_[i]) {  // the upgrades that fit come first, those of more value later
                    for (size_t p = plan[i] + 1; p < first_[i + 1] && fits(i, p); ++p)
                        most = value_[p] - value_[plan[i]], pick[i] = p;
                } else {
                    for (size_t p = first_[i]; p < first_[i + 1]; ++p) {
                        const double gain = value_[p] - value_[plan[i]];
                        if (gain > most && fits(i, p)) most = gain, pick[i] = p;
                    }
                }
                if (most > 0) upgrades.emplace_back(most, i);
            }
            std::sort(upgrades.begin(), upgrades.end(), [](const auto& a, const auto& b) {
                return a.first != b.first ? a.first > b.first : a.second < b.second;
            });
            sites.clear();
            for (const auto& [gain, i] : upgrades) {
                sites.push_back(i);
                if (!fits(i, pick[i])) continue;
                for (size_t k = 0; k < m_; ++k) used[k] += c(pick[i], k) - c(plan[i], k);
                plan[i] = pick[i];
            }
        }
    }

    // Takes the plan if it fits and beats the incumbent.
    bool offer(Incumbent& best, const std::vector<size_t>& plan) const {
        double value = 0;
        for (size_t p : plan) value += value_[p];
        if (!(value > best.value) || !fits(plan)) return false;
        best = {plan, value, value + kGapTolerance * std::abs(value)};
        return true;
    }

    // A partial plan: its value, its reduced value (value - lambda . cost), its bound and its last choice.
    struct Partial {
        double value;
        double reduced;
        double bound;
        size_t trail;  // entry of trail_: the option chosen at the last site, and the entry before
    };
    static constexpr size_t kNoTrail = std::numeric_limits<size_t>::max();

    // Passes of growing width (see pass()) from the heuristic plan, until one is exact; none when
    // L(lambda) already proves that plan within kGapTolerance of the optimum.
    std::vector<size_t> search(Incumbent& best) {
        bool exact = bound_ <= best.threshold;
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
        const size_t n = n_, m = m_;
        const double threshold = best.threshold, upper = bound_;
        if (upper <= threshold) return true;
        double lambda_cap = 0;
        for (size_t k = 0; k < m; ++k) lambda_cap += lambda_[k] * cap_[k];
        // Site i's viable options are sorted[first_[i]] .. sorted[first_[i] + count[i] - 1], by reduced
        // value, best first.
        std::vector<size_t> sorted(options()), count(n);
        std::iota(sorted.begin(), sorted.end(), size_t{0});
        auto viable = [&](size_t i) {
            const auto begin = sorted.begin() + static_cast<std::ptrdiff_t>(first_[i]);
            return std::make_pair(begin, begin + static_cast<std::ptrdiff_t>(count[i]));
        };
        std::vector<size_t> fixed(n), core;
        std::vector<double> gap(n, kInf);
        Partial root{0, 0, kInf, kNoTrail};
        std::vector<double> root_cost(m, 0.0);
        for (size_t i = 0; i < n; ++i) {
            const auto begin = sorted.begin() + static_cast<std::ptrdiff_t>(first_[i]);
            const auto end = sorted.begin() + static_cast<std::ptrdiff_t>(first_[i + 1]);
            std::stable_sort(begin, end, [&](size_t a, size_t b) { return r_[a] > r_[b]; });
            const double top = r_[*begin];
            count[i] = static_cast<size_t>(
                std::find_if(begin, end, [&](size_t p) { return upper - (top - r_[p]) <= threshold; }) - begin);
            if (count[i] > 1) {
                gap[i] = top - r_[begin[1]];
                core.push_back(i);
                continue;
            }
            fixed[i] = *begin;
            root.value += value_[*begin];
            root.reduced += r_[*begin];
            for (size_t k = 0; k < m; ++k) root_cost[k] += c(*begin, k);
        }
        std::stable_sort(core.begin(), core.end(), [&](size_t a, size_t b) {
            return count[a] != count[b] ? count[a] > count[b] : gap[a] > gap[b];
        });

        // What the core sites from the d-th on add at most to value - probe . cost, for each probe, and
        // at least to each cost.
        const size_t depth = core.size(), probes = probes_.size();
        std::vector<double> probe_cap(probes, 0.0), rest((depth + 1) * probes, 0.0), rest_cost((depth + 1) * m, 0.0);
        for (size_t p = 0; p < probes; ++p)
            for (size_t k = 0; k < m; ++k) probe_cap[p] += probes_[p][k] * cap_[k];
        for (size_t d = depth; d-- > 0;) {
            const auto [begin, end] = viable(core[d]);
            for (size_t p = 0; p < probes; ++p) {
                double most = -kInf;
                for (auto it = begin; it != end; ++it) {
                    double x = value_[*it];
                    for (size_t k = 0; k < m; ++k) x -= probes_[p][k] * c(*it, k);
                    most = std::max(most, x);
                }
                rest[d * probes + p] = rest[(d + 1) * probes + p] + most;
            }
            for (size_t k = 0; k < m; ++k) {
                double least = kInf;
                for (auto it = begin; it != end; ++it) least = std::min(least, c(*it, k));
                rest_cost[d * m + k] = rest_cost[(d + 1) * m + k] + least;
            }
        }

        std::vector<Partial> states, children, next;
        std::vector<double> cost, child_cost, next_cost, spent(m);
        std::vector<std::pair<size_t, size_t>> origin;  // per child: its parent state and its option
        trail_.clear();
        bool exact = true;
        bool room = true;
        for (size_t k = 0; k < m; ++k) room = room && root_cost[k] + rest_cost[k] <= cap_[k];
        if (room) states.push_back(root), cost = root_cost;
        for (size_t d = 0; d < depth && !states.empty(); ++d) {
            children.clear();
            child_cost.clear();
            origin.clear();
            const auto [begin, end] = viable(core[d]);
            for (size_t s = 0; s < states.size(); ++s) {
                for (auto it = begin; it != end; ++it) {
                    const size_t option = *it;
                    const double reduced = states[s].reduced + r_[option];
                    if (reduced + rest[(d + 1) * probes] + lambda_cap <= threshold) break;  // and the rest
                    bool fit = true;
                    for (size_t k = 0; k < m && fit; ++k) {
                        spent[k] = cost[s * m + k] + c(option, k);
                        fit = spent[k] + rest_cost[(d + 1) * m + k] <= cap_[k];
                    }
                    if (!fit) continue;
                    const double value = states[s].value + value_[option];
                    double bound = kInf;
                    for (size_t p = 0; p < probes && !(bound <= threshold); ++p) {
                        double b = value + rest[(d + 1) * probes + p] + probe_cap[p];
                        for (size_t k = 0; k < m; ++k) b -= probes_[p][k] * spent[k];
                        bound = std::min(bound, b);
                    }
                    if (bound <= threshold) continue;
                    children.push_back({value, reduced, bound, kNoTrail});
                    child_cost.insert(child_cost.end(), spent.begin(), spent.end());
                    origin.emplace_back(s, option);
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
            next.clear();
            next_cost.clear();
            for (size_t k : keep) {
                trail_.emplace_back(states[origin[k].first].trail, origin[k].second);
                next.push_back({children[k].value, children[k].reduced, children[k].bound, trail_.size() - 1});
                next_cost.insert(next_cost.end(), child_cost.begin() + static_cast<std::ptrdiff_t>(k * m),
                                 child_cost.begin() + static_cast<std::ptrdiff_t>((k + 1) * m));
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
        const size_t m = m_;
        struct Key {
            double c0, c1, value;  // costs in budgets 0 and 1 (0 if none)
            size_t plan;
        };
        std::vector<Key> keys(plans.size());
        for (size_t s = 0; s < plans.size(); ++s)
            keys[s] = {m > 0 ? costs[s * m] : 0.0, m > 1 ? costs[s * m + 1] : 0.0, plans[s].value, s};
        std::vector<size_t> keep;
        if (m <= 2) {
            std::sort(keys.begin(), keys.end(), [](const Key& a, const Key& b) {
                if (a.c0 != b.c0) return a.c0 < b.c0;
                if (a.c1 != b.c1) return a.c1 < b.c1;
                if (a.value != b.value) return a.value > b.value;
                return a.plan < b.plan;
            });
            // Among the plans kept so far (no costlier in budget 0), the highest value at each cost in
            // budget 1: (c1, value) pairs, both rising.
            std::vector<std::pair<double, double>> stair;
            for (const Key& key : keys) {
                auto it = std::upper_bound(stair.begin(), stair.end(), key.c1,
                                           [](double c1, const std::pair<double, double>& e) { return c1 < e.first; });
                if (it != stair.begin() && std::prev(it)->second >= key.value) continue;
                auto from = std::lower_bound(stair.begin(), stair.end(), key.c1,
                                             [](const std::pair<double, double>& e, double c1) {
                                                 return e.first < c1;
                                             });
                auto to = from;
                while (to != stair.end() && to->second <= key.value) ++to;
                stair.insert(stair.erase(from, to), {key.c1, key.value});
                keep.push_back(key.plan);
            }
            return keep;
        }
        std::sort(keys.begin(), keys.end(), [](const Key& a, const Key& b) {
            return a.value != b.value ? a.value > b.value : a.plan < b.plan;
        });
        for (const Key& key : keys) {
            const size_t s = key.plan;
            bool dominated = false;
            for (size_t j = keep.size(); j-- > keep.size() - std::min(keep.size(), kDominanceWindow) && !dominated;) {
                dominated = true;
                for (size_t k = 0; k < m && dominated; ++k) dominated = costs[keep[j] * m + k] <= costs[s * m + k];
            }
            if (!dominated) keep.push_back(s);
        }
        return keep;
    }
};

}  // namespace

void check(const Problem& problem) {
    const size_t rows = problem.values.size, m = problem.budgets.size;
    const auto& names = problem.budget_names;
    if (!names.empty() && names.size() != m)
        fail("budget_names has " + str(names.size()) + " names but there are " + str(m) + " budgets");
    auto label = [&](size_t k) { return "budget " + (names.empty() ? str(k) : names[k]); };
    if (problem.cost_rows != rows)
        fail("costs has " + str(problem.cost_rows) + " rows but values has " + str(rows) + " options");
    if (problem.cost_columns != m)
        fail("costs has " + str(problem.cost_columns) + " columns but there are " + str(m) + " budgets");
    for (size_t k = 0; k < m; ++k) {
        const double b = problem.budgets.data[k];
        if (!valid(b)) fail(label(k) + " is " + repr(b) + "; budgets must be finite and >= 0");
    }

    const std::int64_t* offset = problem.offsets.data;
    if (problem.offsets.size < 2)
        fail(rows == 0 ? "no sites: values is empty" : "no sites: offsets must hold at least 2 entries");
    const size_t n = problem.offsets.size - 1;
    if (offset[0] != 0) fail("offsets must start at 0, got " + str(offset[0]));
    for (size_t i = 0; i < n; ++i) {
        if (offset[i + 1] < offset[i])
            fail("offsets must be non-decreasing, but offsets[" + str(i + 1) + "] = " + str(offset[i + 1]) +
                 " < offsets[" + str(i) + "] = " + str(offset[i]));
        if (offset[i + 1] == offset[i]) fail("site " + str(i) + " has no options");
    }
    if (offset[n] != static_cast<std::int64_t>(rows))
        fail("offsets must end at the number of options, " + str(rows) + ", got " + str(offset[n]));

    // Site and option of each row, for messages; only looked up once a defect is found.
    auto where = [&](size_t row) {
        const size_t i = static_cast<size_t>(
            std::upper_bound(offset, offset + n + 1, static_cast<std::int64_t>(row)) - offset - 1);
        return " at site " + str(i) + ", option " + str(static_cast<std::int64_t>(row) - offset[i]) + " is ";
    };
    const double* values = problem.values.data;
    const double* costs = problem.costs;
    for (size_t row = 0; row < rows; ++row)
        if (!valid(values[row])) fail("value" + where(row) + repr(values[row]) + "; values must be finite and >= 0");

    // One pass over the costs: each must be valid(), and the plan of the cheapest option at every site must fit
    // each budget alone.
    std::vector<double> cheapest(m, 0.0), least(m);
    bool costs_valid = true;
    for (size_t i = 0; i < n; ++i) {
        const double* row = costs + static_cast<size_t>(offset[i]) * m;
        const double* const end = costs + static_cast<size_t>(offset[i + 1]) * m;
        std::copy(row, row + m, least.begin());
        for (; row != end; row += m)
            for (size_t k = 0; k < m; ++k) {
                costs_valid &= valid(row[k]);
                least[k] = std::min(least[k], row[k]);
            }
        for (size_t k = 0; k < m; ++k) cheapest[k] += least[k];
    }
    if (!costs_valid)
        for (size_t j = 0; j < rows * m; ++j)
            if (!valid(costs[j]))
                fail("cost " + label(j % m) + where(j / m) + repr(costs[j]) + "; costs must be finite and >= 0");
    for (size_t k = 0; k < m; ++k) {
        const double b = problem.budgets.data[k];
        if (cheapest[k] > b * (1 + kBudgetTolerance))
            fail("no plan fits " + label(k) + ": the cheapest option at every site already costs " +
                 general(cheapest[k]) + " > " + general(b));
    }
}

Solution solve(const Problem& problem) {
    check(problem);
    Instance in;
    in.n = problem.offsets.size - 1;
    in.m = problem.budgets.size;
    in.value = problem.values.data;
    in.cost = problem.costs;
    in.offset = problem.offsets.data;
    in.budget = problem.budgets.data;
    static thread_local Workspace work;
    const std::vector<size_t> plan = Solver(in, work).solve();
    Solution solution;
    solution.choice.resize(in.n);
    for (size_t i = 0; i < in.n; ++i) {
        solution.choice[i] = static_cast<std::int64_t>(plan[i]) - in.offset[i];
        solution.objective += in.value[plan[i]];
    }
    return solution;
}

}  // namespace layerlens
