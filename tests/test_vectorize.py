"""The compiler vectorizes every marked loop of the generated kernels (GCC's -fopt-info-vec).

Every loop the templates mark (``BNSYM_SIMD``, ``BNSYM_SIMD_PRAGMA(omp simd ...)``) must be
reported vectorized by GCC with the build's flags, with OpenMP and with the build's fallback
without it (``-fopenmp-simd``). A template change that leaves a loop scalar (a call in its body,
a possible alias, a pragma lost) fails here instead of showing up, maybe, as a slower benchmark.
"""

import textwrap

import pytest

from bnsym import vectorize
from bnsym._paths import generated_dir


def _report_or_skip(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except vectorize.Unavailable as exc:
        pytest.skip(str(exc))


def test_marked_loops_pairs_each_marker_with_its_for():
    text = textwrap.dedent("""\
        static void f(float *y, const float *x, int64_t n)
        {
            int64_t j;
            BNSYM_SIMD
            for (j = 0; j < n; ++j)
                y[j] = x[j];
            for (j = 0; j < n; ++j)
                y[j] += 1;
        }
        int g(double *s, const double *x, int64_t n)
        {
            int64_t j;
            double t = 0;
                    BNSYM_SIMD_PRAGMA(omp simd reduction(+:t))
            for (j = 0; j < n; ++j)
                t += x[j];
            *s = t;
            return 0;
        }
    """)
    assert vectorize.marked_loops(text) == [
        (5, "f", "for (j = 0; j < n; ++j)"),
        (15, "g", "for (j = 0; j < n; ++j)"),
    ]


def test_report_tells_a_scalar_loop_from_a_vector_one(tmp_path):
    """The check can fail: a marked loop that calls an opaque function stays scalar."""
    (tmp_path / "probe.c").write_text(textwrap.dedent("""\
        #include <stdint.h>
        #if defined(_OPENMP) || defined(BNSYM_OPENMP_SIMD)
        #define BNSYM_SIMD _Pragma("omp simd")
        #else
        #define BNSYM_SIMD
        #endif
        double opaque(double v);
        void scaled(double *restrict y, const double *restrict x, int64_t n)
        {
            int64_t j;
            BNSYM_SIMD
            for (j = 0; j < n; ++j)
                y[j] = 2.0 * x[j] + 1.0;
        }
        void called(double *restrict y, const double *restrict x, int64_t n)
        {
            int64_t j;
            BNSYM_SIMD
            for (j = 0; j < n; ++j)
                y[j] = opaque(x[j]);
        }
    """))
    loops = _report_or_skip(vectorize.report, tmp_path / "probe.c")
    assert [(lp.function, lp.vectorized) for lp in loops] == [("scaled", True), ("called", False)]
    assert loops[0].widths and all(w >= 16 for w in loops[0].widths)


def test_report_counts_library_calls_and_unused_functions(tmp_path):
    """A marked copy loop that GCC turns into ``memcpy`` is vector code, and a marked loop of a
    function nothing calls (a kernel set of one layout has such) is compiled and judged, not
    dropped unreported: both once failed ``bnsym vectorized`` on sets from ``generate --out``."""
    (tmp_path / "probe.c").write_text(textwrap.dedent("""\
        #include <stdint.h>
        #if defined(_OPENMP) || defined(BNSYM_OPENMP_SIMD)
        #define BNSYM_SIMD _Pragma("omp simd")
        #else
        #define BNSYM_SIMD
        #endif
        void copied(double *restrict y, const double *restrict x, int64_t n)
        {
            int64_t j;
            BNSYM_SIMD
            for (j = 0; j < n; ++j)
                y[j] = x[j];
        }
        static void unused(double *restrict y, const double *restrict x, int64_t n)
        {
            int64_t j;
            BNSYM_SIMD
            for (j = 0; j < n; ++j)
                y[j] = 3.0 * x[j];
        }
    """))
    loops = _report_or_skip(vectorize.report, tmp_path / "probe.c")
    assert [(lp.function, lp.library_call, bool(lp.widths)) for lp in loops] == [
        ("copied", True, False), ("unused", False, True)]
    assert all(lp.vectorized for lp in loops)


def test_a_kernel_set_of_one_layout_is_vectorized(tmp_path):
    """``bnsym generate --out DIR --layouts nsc`` (the README's own variant): every marked loop of
    its backward evaluation kernel, the one where GCC dropped unused functions, is vectorized."""
    from bnsym import codegen

    files = codegen.render(dtypes=("float32",), layouts=("nsc",), prefix="mybn_")
    for name in ("mybn.h", "mybn_backward_eval.c"):
        (tmp_path / name).write_text(files[name])
    loops = _report_or_skip(vectorize.report, tmp_path / "mybn_backward_eval.c")
    assert len(loops) > 10
    scalar = [f"line {lp.line} in {lp.function}: {lp.text}" for lp in loops if not lp.vectorized]
    assert not scalar, "marked loops left scalar:\n" + "\n".join(scalar)


@pytest.mark.parametrize("openmp", [True, False], ids=["openmp", "serial-omp-simd"])
def test_every_marked_loop_of_the_kernels_is_vectorized(openmp):
    result = _report_or_skip(vectorize.report_dir, generated_dir(), openmp=openmp)
    assert len(result) == 4
    for name, loops in result.items():
        text = (generated_dir() / name).read_text()
        markers = sum(1 for line in text.split("\n") if vectorize._MARKER.match(line))
        assert markers > 10 and len(loops) == markers, name  # every marker found its loop
        scalar = [f"line {lp.line} in {lp.function}: {lp.text}" for lp in loops if not lp.vectorized]
        assert not scalar, f"{name}: marked loops left scalar:\n" + "\n".join(scalar)


def test_cli_explains_an_empty_folder_and_a_compile_error(tmp_path, capsys):
    from bnsym.cli import main

    assert main(["vectorized", str(tmp_path)]) == 2
    assert "no *.c kernels" in capsys.readouterr().err
    (tmp_path / "broken.c").write_text("int f(void) { return undeclared_name; }\n")
    rc = main(["vectorized", str(tmp_path)])
    err = capsys.readouterr().err
    if "gives no GCC vectorization remarks" in err:
        pytest.skip("not GCC")
    assert rc == 1
    assert "compiling broken.c failed" in err and "undeclared_name" in err
    assert "-fopt-info-vec-loop-optimized=" in err  # the command that failed
