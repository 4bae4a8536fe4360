"""Code generation: printer, determinism, committed generated/, strict compilation, C test program."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sympy

from bnsym import _paths, codegen, compiler
from bnsym.printer import make_printer

ROOT = Path(__file__).resolve().parents[1]
CC = shutil.which("cc") or shutil.which("gcc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler")
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]


@pytest.fixture(scope="module")
def files():
    return codegen.render()


# ---- printer ---------------------------------------------------------------------------------


def test_printer_never_emits_pow():
    a, b = sympy.symbols("a b")
    cases = [
        1 / sympy.sqrt(a + b),
        (a + b) ** sympy.Rational(-3, 2),
        (a + b) ** sympy.Rational(3, 2),
        a * b**3,
        a / b**2,
        (a - b) ** 2,
        a**-1,
        sympy.sqrt(a),
    ]
    for ctype in ("double", "float"):
        p = make_printer(ctype)
        for e in cases:
            text = p.doprint(e)
            assert "pow" not in text, (e, text)
    assert make_printer("double").doprint(1 / sympy.sqrt(a + b)) == "1.0/sqrt(a + b)"
    assert make_printer("float").doprint(1 / sympy.sqrt(a + b)) == "1.0F/sqrtf(a + b)"
    assert make_printer("double").doprint((a - b) ** 2) == "(a - b)*(a - b)"
    assert make_printer("double").doprint(-1 / b**2) == "-1/(b*b)"


def test_printer_values():
    """The printed forms evaluate to the same numbers as the SymPy expressions."""
    a, b = sympy.symbols("a b")
    vals = {a: 1.7, b: 0.3}
    p = make_printer("double")
    for e in [(a + b) ** sympy.Rational(-3, 2), a * b**3 / (a - b) ** 2, 1 / sympy.sqrt(a) - b**-2]:
        text = p.doprint(e).replace("sqrt", "math.sqrt")
        import math  # noqa: F401 - used by eval

        got = eval(text, {"math": math, "a": 1.7, "b": 0.3})
        assert got == pytest.approx(float(e.subs(vals)), rel=1e-14)


# ---- generation --------------------------------------------------------------------------------


# ---- the float reduction pass's channel sums ----------------------------------------------------


def _summands(plan):
    """The plan's Sum summands with the element defs substituted, its element-load symbols and
    per-channel symbols (as codegen sees them)."""
    sums = [r for r in plan.reductions if type(r).__name__ == "Sum"]
    out = []
    for r in sums:
        e = sympy.sympify(r.summand)
        for d in reversed(plan.element_defs):
            e = e.xreplace({d.symbol: d.expr})
        out.append(e)
    elem = {ld.symbol for ld in plan.element_loads}
    chan = set().union(*(e.free_symbols for e in out)) - elem
    return out, elem, chan


@pytest.mark.parametrize("name", ["backward_train", "backward_eval"])
def test_float_pass_sums_rebuild_the_plan_sums_exactly(name):
    """The float pass sums each summand ``F*G`` as ``G`` at the per-channel inputs' float values
    ``c_hi`` and rebuilds ``F*(sum G(c_hi) + (c - c_hi)*kappa*sum G_j)`` per channel: exactly the
    plan's sum, for any ``c_hi`` (SymPy, m = 1..4, every value a symbol)."""
    plan = codegen.load_plans()[name]
    summands, elem, chan = _summands(plan)
    posts = codegen._float_sum_posts(summands, elem, chan)
    assert posts is not None and all(p is not None for p in posts)
    assert any(p[2] for p in posts)  # some sum drops a lo part
    for m in range(1, 5):
        subs = [{s: sympy.Symbol(f"{s.name}_{i}") for s in elem} for i in range(m)]
        his = {c: sympy.Symbol(f"{c.name}_hi") for c in chan}
        raw = [sum(p[1].xreplace(his).xreplace(sub) for sub in subs) for p in posts]
        for k, (f, g, corr) in enumerate(posts):
            rebuilt = f * (raw[k] + sum((c - his[c]) * kappa * raw[j] for c, kappa, j in corr))
            exact = sum(summands[k].xreplace(sub) for sub in subs)
            assert sympy.expand(rebuilt - exact) == 0, (name, k, m)


def test_float_pass_sums_by_plan():
    """What the float pass sums for the two backward plans: ``dy*(x - mean)`` without invstd, and
    ``dy*(x - running_mean)`` without the lo part; the kernels' float lanes hold the means' float
    values alone, and a rebuild step writes the formulas in a comment."""
    plans = codegen.load_plans()
    train = codegen._kernel_data(plans["backward_train"], "float32", "bnsym_")
    assert [lt["name"] for lt in train["lanes_t_rin"]] == ["bn_mean_hi"]
    assert train["red_variants"][1]["terms"] == ["dy", "bn_rh0*dy"]
    assert [st["acc"] for st in train["t_post"]["stores"]] == [1]
    evl = codegen._kernel_data(plans["backward_eval"], "float32", "bnsym_")
    assert [lt["name"] for lt in evl["lanes_t_rin"]] == ["bn_running_mean_v_hi"]
    fwd = codegen._kernel_data(plans["forward_train"], "float32", "bnsym_")
    assert fwd["t_post"] is None
    assert codegen._kernel_data(plans["backward_train"], "float64", "bnsym_")["t_post"] is None


def test_float_pass_sums_only_where_exact():
    """A summand not linear in its per-channel input, or whose slope is no other sum's summand,
    keeps its form (None); nothing to gain gives None for the whole."""
    dy, x, mean, k = sympy.symbols("dy x mean k")
    elem, chan = {dy, x}, {mean, k}
    assert codegen._float_sum_posts([dy, dy * (x - mean) ** 2], elem, chan) is None
    assert codegen._float_sum_posts([dy * (x - mean)], elem, chan) is None
    assert codegen._float_sum_posts([dy], elem, chan) is None
    posts = codegen._float_sum_posts([dy, k * dy * (x - mean), x * (x - mean)], elem, chan)
    assert posts[0] == (1, dy, [])
    assert posts[1] == (k, dy * (x - mean), [(mean, -1, 0)])
    assert posts[2] is None


def test_render_deterministic(files):
    again = codegen.render()
    assert again == files
    assert set(files) == {
        "bnsym.h",
        "bnsym_forward_train.c",
        "bnsym_forward_eval.c",
        "bnsym_backward_train.c",
        "bnsym_backward_eval.c",
        "bnsym_python.h",
    }


def test_generated_is_committed_and_current(files):
    """generated/ must equal a fresh generation byte for byte (run `bnsym generate --update`)."""
    differ = codegen.check(_paths.generated_dir(), files)
    assert differ == [], f"generated/ is stale: {differ}; run 'bnsym generate --update'"


def test_banner_and_no_pow(files):
    for name, text in files.items():
        assert text.startswith(f"/* {name}: Generated by bnsym -- do not edit."), name
        assert "pow(" not in text, name
        assert not re.search(r"\d{4}-\d{2}-\d{2}", text), f"{name} carries a date"
        assert "sympy 1." not in text.lower()


def test_abi_prototypes(files):
    h = files["bnsym.h"]
    for dt in ("f32", "f64"):
        T = "float" if dt == "f32" else "double"
        for lay in ("ncs", "nsc"):
            assert f"int bnsym_forward_train_{dt}_{lay}(int64_t N, int64_t C, int64_t S," in h
            proto = re.search(rf"int bnsym_forward_train_{dt}_{lay}\((.*?)\);", h, re.S).group(1)
            assert " ".join(proto.split()) == (
                f"int64_t N, int64_t C, int64_t S, const {T} *x, {T} *y, const {T} *weight, const {T} *bias, "
                f"{T} *running_mean, {T} *running_var, {T} *save_mean, {T} *save_invstd, double eps, "
                "double momentum, int skip_nonfinite, int num_threads"
            )
            proto = re.search(rf"int bnsym_backward_eval_{dt}_{lay}\((.*?)\);", h, re.S).group(1)
            assert " ".join(proto.split()) == (
                f"int64_t N, int64_t C, int64_t S, const {T} *grad_output, const {T} *x, const {T} *weight, "
                f"const {T} *running_mean, const {T} *running_var, {T} *grad_input, {T} *grad_weight, "
                f"{T} *grad_bias, double eps, int num_threads"
            )


def test_float_kernels_use_float_math(files):
    text = files["bnsym_forward_train.c"]
    f32 = text[text.index("bnsym_forward_train_f32_ctx;"): text.index("bnsym_forward_train_f64_ctx;")]
    assert "const float xmu" in f32 or "const float" in f32
    # per-channel math in double: sqrt (not sqrtf) in the channel phase
    assert "1.0/sqrt(" in f32


def test_templates_hold_no_formulas():
    tdir = _paths.templates_dir()
    names = sorted(p.name for p in tdir.glob("*.j2"))
    assert "header.h.j2" in names and "kernel_source.c.j2" in names
    for p in tdir.glob("*.j2"):
        text = p.read_text()
        # the Python entry point checks the arguments eps and momentum by name (their type and
        # range, as the Python path does) and passes them on: no formula uses them there
        allowed = {"eps", "momentum"} if p.name == "python_entry.h.j2" else set()
        for word in ("sqrt", "pow", "eps", "momentum", "invstd", "gamma", "beta", "exp", "log", "fabs"):
            if word not in allowed:
                assert not re.search(rf"\b{word}\b", text), f"{p.name} contains {word!r}: arithmetic belongs in the plan"
        assert "sqrt" not in text


def test_custom_set(tmp_path):
    files = codegen.render(dtypes=("float64",), layouts=("nsc",), prefix="mybn_")
    assert set(files) == {"mybn.h", "mybn_forward_train.c", "mybn_forward_eval.c",
                          "mybn_backward_train.c", "mybn_backward_eval.c", "mybn_python.h"}
    assert "mybn_forward_train_f64_nsc" in files["mybn.h"]
    assert "_f32_" not in files["mybn.h"] and "_ncs(" not in files["mybn.h"]
    # the Python entry point dispatches to the one (dtype, layout) generated, declines the others
    entry = files["mybn_python.h"]
    assert "mybn_py_generated[4] = {0, 0, 0, 1};" in entry
    assert "mybn_forward_train_f64_nsc(" in entry and "_f32_" not in entry and "_ncs(" not in entry
    codegen.write(tmp_path, files)
    if CC:
        for name in files:
            if name.endswith(".c"):
                subprocess.run([CC, *STRICT, "-c", name, "-o", "/dev/null"], cwd=tmp_path, check=True)
        # the entry point, strict too (Python's and NumPy's headers as system headers)
        import numpy
        import sysconfig

        (tmp_path / "entry.c").write_text('#include <Python.h>\n#include "mybn_python.h"\n')
        subprocess.run([CC, *STRICT, "-fsyntax-only", "-I.",
                        "-isystem", sysconfig.get_paths()["include"],
                        "-isystem", numpy.get_include(), "entry.c"], cwd=tmp_path, check=True)


def test_cli_check_and_out(tmp_path):
    exe = [sys.executable, "-m", "bnsym.cli"]
    r = subprocess.run(exe + ["generate", "--check"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(exe + ["generate", "--out", str(tmp_path), "--dtypes", "float32", "--layouts", "ncs"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "bnsym.h").is_file() and (tmp_path / "bnsym_backward_train.c").is_file()
    # --check notices a modified file
    ref = tmp_path / "ref"
    codegen.write(ref, codegen.render())
    (ref / "bnsym_forward_eval.c").write_text("/* edited */\n")
    assert codegen.check(ref) == ["bnsym_forward_eval.c"]


# ---- compilation and the C test program -------------------------------------------------------


@needs_cc
@pytest.mark.parametrize("openmp", [False, "simd", True], ids=["serial", "serial-omp-simd", "openmp-native"])
def test_generated_compiles_strict(openmp):
    """Strict C99 without OpenMP (generic code), with the omp simd pragmas alone (the build's
    fallback without OpenMP), and with OpenMP and -march=native as the kernels are built (on
    x86-64 with AVX that includes the streaming stores' vector code)."""
    gdir = _paths.generated_dir()
    flags = STRICT + ["-O2"] + (["-fopenmp", "-march=native"] if openmp is True
                                else compiler.OPENMP_SIMD_CFLAGS if openmp == "simd" else [])
    for src in sorted(gdir.glob("*.c")):
        r = subprocess.run([CC, *flags, "-c", str(src), "-o", "/dev/null"], capture_output=True, text=True)
        if r.returncode != 0 and openmp is True and "march" in r.stderr:  # a compiler without -march=native
            r = subprocess.run([CC, *STRICT, "-O2", "-fopenmp", "-c", str(src), "-o", "/dev/null"],
                               capture_output=True, text=True)
        assert r.returncode == 0, f"{src.name} ({'openmp' if openmp else 'serial'}):\n{r.stderr}"


@needs_cc
@pytest.mark.slow
@pytest.mark.parametrize("openmp", [False, True], ids=["serial", "openmp"])
def test_c_program(tmp_path, openmp):
    gdir = _paths.generated_dir()
    exe = tmp_path / "test_kernels"
    cmd = [CC, *STRICT, "-O2", "-I", str(gdir), str(ROOT / "tests" / "c" / "test_kernels.c"),
           *map(str, sorted(gdir.glob("*.c"))), "-lm", "-o", str(exe)]
    if openmp:
        cmd.insert(1, "-fopenmp")
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:]
    assert " 0 failures" in r.stdout
