from layerlens import _rank_alloc


def test_native_module_is_built_and_reports_its_build():
    info = _rank_alloc.build_info()
    assert info.startswith("layerlens._rank_alloc (")
    assert "pybind11" in info
