// Native core of LayerLens's planner. For now it exposes only build_info(), which the
// pipeline records with every run so that results name the native build they came from.
#include <pybind11/pybind11.h>

#include <string>

namespace py = pybind11;

namespace {

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

}  // namespace

PYBIND11_MODULE(_rank_alloc, m) {
    m.doc() = "LayerLens native allocator";
    m.def("build_info", &build_info, "Compiler, language standard and pybind11 version of this build.");
}
