"""The C entry points (``generated/bnsym_python.h``): the common calls of ``_forward`` and
``batch_norm_backward`` checked and run in C.

They only accept: for any call they take, the results (outputs, their layout, which arrays are
returned, the running statistics written) must be bitwise those of the Python path at the same
thread count; for any call they do not take they return None and write nothing; a call the
Python path refuses is never taken. The results themselves are compared with the float64
reference in test_api.py (whose calls go through these entry points) and below.
"""

import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bnsym
from bnsym import api, build
from bnsym import reference as R
from bnsym._paths import generated_dir

F32, F64 = np.float32, np.float64
# examples per property (fewer under the sanitizers: test_sanitizers runs this file there)
EXAMPLES = int(os.environ.get("BNSYM_ENTRY_EXAMPLES", "600"))


@pytest.fixture(scope="module")
def entries(kernels):
    """``(forward, backward)``: the entry points of the compiled module (loaded by a first call)."""
    bnsym.batch_norm(np.ones((2, 3)), np.zeros(3), np.ones(3), training=True)
    assert api._CF is not None and api._CB is not None, "the C entry points were not installed"
    return api._CF, api._CB


@pytest.fixture
def python_path(monkeypatch):
    """Run a call with the entry points switched off (the Python path alone)."""

    def run(fn, *args, **kw):
        with monkeypatch.context() as m:
            m.setattr(api, "_CF", None)
            m.setattr(api, "_CB", None)
            return fn(*args, **kw)

    return run


def _fwd(entries, x, w, b, rm, rv, training, momentum=0.1, eps=1e-5, out=None, sm=None, si=None,
         want_save=True, skip=False):
    return entries[0](x, w, b, rm, rv, training, momentum, eps, out, sm, si, want_save, skip,
                      api._EMPTIES, api.get_num_threads())


def _bwd(entries, dy, x, w, rm, rv, sm, si, training, eps=1e-5, mask=(True, True, True), out=None):
    return entries[1](dy, x, w, rm, rv, sm, si, training, eps, mask, out, api.get_num_threads())


def _same(a, b, what):
    """Bitwise the same result: both None, or arrays of one dtype, shape, strides and bits."""
    if a is None or b is None:
        assert a is None and b is None, what
        return
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert a.strides == b.strides, (what, a.strides, b.strides)
    assert a.tobytes() == b.tobytes(), what


# --------------------------------------------------------------------------- forward


# How each operand is made: the variants a careful caller may pass, some of which the entry
# point must leave to the Python path (views, aliases, read-only statistics, other types).
# Each list repeats the common choice, so that about half the calls are taken.
_CHAN = ["own"] * 6 + ["none"] * 2 + ["view", "readonly", "f16"]
_OUT = ["none"] * 4 + ["own"] * 3 + ["inplace", "view_of_input", "other_view", "wrong_layout"]
_SAVE = ["none"] * 3 + ["own"] * 3 + ["view", "alias"]


def _forward_call(make, seed, shape, dtype, layout, training, ws, rms, out_kind, save_kind,
                  momentum, eps, want_save, skip, stat_alias):
    """The arguments of one forward call, built afresh (so that two calls get equal copies);
    ``make``: conftest's input factory."""
    rng = np.random.default_rng(seed)
    x = make(shape, dtype, layout, seed)
    C = shape[1]

    def chan(kind, lo=0.0):
        if kind == "none":
            return None
        v = (lo + rng.random(C) + 0.25).astype(dtype)
        if kind == "view":
            big = np.concatenate([v, v]).astype(dtype)
            return big[:C]
        if kind == "readonly":
            v.flags.writeable = False
        if kind == "f16":
            return v.astype(np.float16)
        return v

    w, b = chan(ws), chan(ws)
    rm, rv = chan(rms), chan(rms, 0.5)
    if stat_alias == "rm_is_w" and rm is not None:
        w = rm
    elif stat_alias == "rv_is_rm" and rm is not None:
        rv = rm
    out = None
    if out_kind == "own":
        out = np.empty_like(x) if layout != "strided" else np.empty(shape, dtype)
    elif out_kind == "inplace":
        out = x
    elif out_kind == "view_of_input":
        out = x.view()  # the input's memory exactly, another object
    elif out_kind == "other_view":
        big = np.empty((2 * shape[0],) + shape[1:], dtype)
        out = big[: shape[0]]
    elif out_kind == "wrong_layout":
        out = np.empty(shape, dtype) if layout == "nsc" else None
    sm = si = None
    if save_kind == "own":
        sm, si = np.empty(C, dtype), np.empty(C, dtype)
    elif save_kind == "view":
        sm = np.empty(2 * C, dtype)[:C]
    elif save_kind == "alias":
        sm = si = np.empty(C, dtype)
    return (x, w, b, rm, rv, training, momentum, eps, out, sm, si, want_save, skip)


_shapes = st.sampled_from([(2, 3), (5, 1), (3, 4, 5), (2, 3, 1, 1), (4, 2, 3, 2), (1, 3, 2, 2),
                           (2, 5, 3, 2, 2)])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), shape=_shapes, dtype=st.sampled_from([F32, F64]),
       layout=st.sampled_from(["ncs", "nsc"] * 3 + ["strided"]),
       training=st.sampled_from([True, False] * 3 + [1]),
       ws=st.sampled_from(_CHAN), rms=st.sampled_from(_CHAN), out_kind=st.sampled_from(_OUT),
       save_kind=st.sampled_from(_SAVE),
       momentum=st.sampled_from([0.1] * 8 + [0.0, 1.0, 0, None, 1.5]),
       eps=st.sampled_from([1e-5] * 8 + [0.5, 0.0, 1, float("inf")]), want_save=st.booleans(),
       skip=st.sampled_from([False] * 4 + [True, 0]),
       stat_alias=st.sampled_from(["none"] * 8 + ["rm_is_w", "rv_is_rm"]),
       threads=st.sampled_from([1, 2]))
def test_forward_entry_is_the_python_path(entries, python_path, make_input, seed, shape, dtype,
                                          layout, training, ws, rms, out_kind, save_kind, momentum,
                                          eps, want_save, skip, stat_alias, threads):
    if layout == "nsc" and len(shape) < 3:
        layout = "ncs"
    make = lambda: _forward_call(make_input, seed, shape, dtype, layout, training,  # noqa: E731
                                 ws, rms, out_kind, save_kind, momentum, eps, want_save, skip,
                                 stat_alias)
    saved_threads = api.get_num_threads()
    bnsym.set_num_threads(threads)
    try:
        a = make()
        before = [None if v is None or not isinstance(v, np.ndarray) else v.copy() for v in a]
        with np.errstate(all="ignore"):
            r = entries[0](*a, api._EMPTIES, threads)
        b = make()
        try:
            with np.errstate(all="ignore"):
                expected = python_path(api._forward, *b, "c")
        except (TypeError, ValueError):
            assert r is None, "the entry point took a call the Python path refuses"
            expected = None
        if r is None:
            for v, old in zip(a, before):
                if old is not None:
                    assert v.tobytes() == old.tobytes(), "a declined call wrote into an argument"
            return
        assert type(r) is tuple and len(r) == 4
        for k, what in enumerate(("output", "save_mean", "save_invstd")):
            _same(r[k], expected[k], what)
        assert r[3] is expected[3]
        if out_kind in ("own", "inplace") and a[8] is not None:
            assert r[0] is a[8], "out= must be returned"
        if not training:
            assert r[1] is r[2] is api._EMPTY[np.dtype(dtype)]
        for k in (3, 4):  # running statistics, written in place
            _same(a[k], b[k], "running statistics")
        if save_kind == "own" and training and want_save:
            assert r[1] is a[9] and r[2] is a[10]
    finally:
        bnsym.set_num_threads(saved_threads)


@pytest.mark.parametrize("layout", ["ncs", "nsc"])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_forward_entry_takes_the_common_calls(entries, make_input, layout, dtype, assert_close):
    """Plain calls (fresh arrays; out=, save_*= preallocated; in place; evaluation with read-only
    statistics) are taken, and their results match the float64 reference."""
    rng = np.random.default_rng(7)
    shape = (6, 5, 4, 3)
    x = make_input(shape, dtype, layout, 7)
    w, b = rng.standard_normal(5).astype(dtype), rng.standard_normal(5).astype(dtype)
    rm0, rv0 = rng.standard_normal(5).astype(dtype), (rng.random(5) + 0.5).astype(dtype)
    yr, mean, var, invstd = R.forward_train(x, w, b, 1e-5)
    nm, nv = R.update_running(rm0, rv0, mean, var, x.size // 5, 0.1)
    for out, sm, si in ((None, None, None),
                        (np.empty_like(x), np.empty(5, dtype), np.empty(5, dtype))):
        rm, rv = rm0.copy(), rv0.copy()
        r = _fwd(entries, x, w, b, rm, rv, True, out=out, sm=sm, si=si)
        assert r is not None
        assert_close(r[0], yr, dtype, "y")
        assert_close(r[1], mean, dtype, "save_mean")
        assert_close(r[2], invstd, dtype, "save_invstd")
        assert_close(rm, nm, dtype, "running_mean")
        assert_close(rv, nv, dtype, "running_var")
        assert (layout == "nsc") == (not r[0].flags.c_contiguous)
    xi = x.copy(order="K")
    r = _fwd(entries, xi, w, b, None, None, True, out=xi, want_save=False)
    assert r is not None and r[0] is xi and r[1] is None
    assert_close(xi, yr, dtype, "in place")
    rm, rv = rm0.copy(), rv0.copy()
    rm.flags.writeable = rv.flags.writeable = False
    r = _fwd(entries, x, w, b, rm, rv, False)
    assert r is not None
    assert_close(r[0], R.forward_eval(x, w, b, rm0, rv0, 1e-5), dtype, "eval")


def test_forward_entry_declines(entries):
    """Calls left to the Python path: each one returns None and writes nothing."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 5))
    w, b, rm, rv = (rng.random(3) + 0.5 for _ in range(4))

    class Sub(np.ndarray):
        pass

    ro = rm.copy()
    ro.flags.writeable = False
    view = np.concatenate([rm, rm])[:3]
    cases = {
        "float16 input": dict(x=x.astype(np.float16)),
        "int input": dict(x=np.ones((4, 3), np.int64)),
        "subclass input": dict(x=x.view(Sub)),
        "1-D input": dict(x=x[0, 0]),
        "strided input": dict(x=x[:, :, ::2]),
        "empty input": dict(x=x[:0]),
        "mixed dtypes": dict(w=w.astype(F32)),
        "weight of another length": dict(w=np.ones(4)),
        "read-only running_mean": dict(rm=ro),
        "running_mean a view": dict(rm=view),
        "running_mean is weight": dict(rm=w),
        "running_var is running_mean": dict(rv=rm),
        "momentum an int": dict(momentum=0),
        "momentum None": dict(momentum=None),
        "momentum above 1": dict(momentum=1.5),
        "eps an int": dict(eps=1),
        "eps 0": dict(eps=0.0),
        "eps inf": dict(eps=float("inf")),
        "eps nan": dict(eps=float("nan")),
        "training an int": dict(training=1),
        "skip_nonfinite an int": dict(skip=0),
        "one value per channel": dict(x=x[:1, :, :1].copy()),
        "out another view of the input": dict(out=x.view()),
        "out of another shape": dict(out=np.empty((4, 3, 6))),
        "out read-only": dict(out=np.zeros_like(x)),
        "out of another dtype": dict(out=np.empty_like(x, F32)),
        "out channels-last for a contiguous input": dict(
            out=np.empty((4, 5, 3)).transpose(0, 2, 1)),
        "save_mean a view": dict(sm=np.empty(6)[:3]),  # (the Python path compares pointers)
        "save_mean is save_invstd": dict(sm=(s := np.empty(3)), si=s),
        "save_invstd is running_var": dict(si=rv),
    }
    cases["out read-only"]["out"].flags.writeable = False
    for what, kw in cases.items():
        args = dict(x=x, w=w, b=b, rm=rm, rv=rv, training=True, momentum=0.1, eps=1e-5, out=None,
                    sm=None, si=None, want_save=True, skip=False)
        args.update(kw)
        saved = {k: v.copy() for k, v in args.items() if isinstance(v, np.ndarray)}
        r = entries[0](*args.values(), api._EMPTIES, 1)
        assert r is None, what
        for k, v in saved.items():
            assert args[k].tobytes() == v.tobytes(), (what, k)
    # evaluation: running statistics are required (the Python path raises)
    assert _fwd(entries, x, w, b, None, rv, False) is None


def test_entry_points_error_codes():
    """A kernel's nonzero return code becomes the Python path's exception."""
    with pytest.raises(MemoryError, match="out of memory in forward_train"):
        api._kernel_failed(-1, "forward_train")
    with pytest.raises(RuntimeError, match=r"batch_norm_backward failed \(code 3\)"):
        api._kernel_failed(3, "batch_norm_backward")


def test_entry_point_gives_up_the_gil(entries):
    """The kernel runs without the GIL: two Python threads normalize at the same time and each
    gets its own right answer."""
    import threading

    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((64, 16, 32, 32)).astype(F32) for _ in range(2)]
    results = [None, None]

    def work(i):
        for _ in range(3):
            results[i] = bnsym.batch_norm(xs[i], None, None, training=True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        np.testing.assert_allclose(results[i], R.forward_train(xs[i])[0], atol=2e-5 * 10)


# --------------------------------------------------------------------------- backward

_GOUT = ["none"] * 4 + ["own"] * 4 + ["view", "is_dy", "list", "masked"]


def _backward_call(make, seed, shape, dtype, layout, dy_layout, training, ws, stats, gout, mask,
                   eps):
    rng = np.random.default_rng(seed)
    x = make(shape, dtype, layout, seed)
    dy = make(shape, dtype, dy_layout, seed + 1)
    C = shape[1]

    def chan(kind, lo=0.25):
        if kind == "none":
            return None
        v = (lo + rng.random(C)).astype(dtype)
        if kind == "view":
            return np.concatenate([v, v])[:C]
        if kind == "readonly":
            v.flags.writeable = False
        if kind == "f16":
            return v.astype(np.float16)
        return v

    w = chan(ws)
    rm, rv, sm, si = chan(stats), chan(stats, 0.5), chan(stats), chan(stats, 0.5)
    out = None
    if gout in ("own", "list", "masked"):
        gi = np.empty_like(x) if layout != "strided" else np.empty(shape, dtype)
        out = (gi if mask[0] or gout == "masked" else None, np.empty(C, dtype) if mask[1] else None,
               np.empty(C, dtype) if mask[2] else None)
        if gout == "list":
            out = list(out)
    elif gout == "view":
        out = (None, np.empty(2 * C, dtype)[:C] if mask[1] else None, None)
    elif gout == "is_dy":
        out = (dy if mask[0] else None, None, None)
    return (dy, x, w, rm, rv, sm, si, training, eps, mask, out)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), shape=_shapes, dtype=st.sampled_from([F32, F64]),
       layout=st.sampled_from(["ncs", "nsc"] * 3 + ["strided"]),
       dy_layout=st.sampled_from(["same"] * 6 + ["ncs", "nsc", "strided"]),
       training=st.sampled_from([True, False] * 3 + [0]),
       ws=st.sampled_from(_CHAN), stats=st.sampled_from(_CHAN), gout=st.sampled_from(_GOUT),
       mask=st.sampled_from([(True, True, True)] * 6 + [(True, False, True), (False, True, False),
                                                        (1, True, True), [True, True, True]]),
       eps=st.sampled_from([1e-5] * 8 + [0.0, 1]), threads=st.sampled_from([1, 2]))
def test_backward_entry_is_the_python_path(entries, python_path, make_input, seed, shape, dtype,
                                           layout, dy_layout, training, ws, stats, gout, mask, eps,
                                           threads):
    dy_layout = layout if dy_layout == "same" else dy_layout
    if len(shape) < 3:
        layout = "ncs" if layout == "nsc" else layout
        dy_layout = "ncs" if dy_layout == "nsc" else dy_layout
    make = lambda: _backward_call(make_input, seed, shape, dtype, layout, dy_layout,  # noqa: E731
                                  training, ws, stats, gout, mask, eps)
    saved_threads = api.get_num_threads()
    bnsym.set_num_threads(threads)
    try:
        a = make()
        flat = [v for v in a[:7] if isinstance(v, np.ndarray)] + [
            v for v in (a[10] or ()) if isinstance(v, np.ndarray)]
        before = [v.copy() for v in flat]
        with np.errstate(all="ignore"):
            r = entries[1](*a, threads)
        b = make()
        try:
            with np.errstate(all="ignore"):
                expected = python_path(api.batch_norm_backward, *b[:10], out=b[10])
        except (TypeError, ValueError):
            assert r is None, "the entry point took a call the Python path refuses"
            expected = None
        if r is None:
            for v, old in zip(flat, before):
                assert v.tobytes() == old.tobytes(), "a declined call wrote into an argument"
            return
        assert type(r) is tuple and len(r) == 3
        for k, what in enumerate(("grad_input", "grad_weight", "grad_bias")):
            _same(r[k], expected[k], what)
            if a[10] is not None and a[10][k] is not None:
                assert r[k] is a[10][k], f"out[{k}] must be returned"
    finally:
        bnsym.set_num_threads(saved_threads)


@pytest.mark.parametrize("layout", ["ncs", "nsc"])
@pytest.mark.parametrize("training", [True, False])
def test_backward_entry_takes_the_common_calls(entries, make_input, layout, training, assert_close):
    rng = np.random.default_rng(5)
    shape = (6, 5, 4, 3)
    x, dy = make_input(shape, F64, layout, 5), make_input(shape, F64, layout, 6)
    w = rng.standard_normal(5)
    _, mean, _, invstd = R.forward_train(x)
    rm, rv = rng.standard_normal(5), rng.random(5) + 0.5
    if training:
        expected = R.backward_train(dy, x, w, mean, invstd)
    else:
        expected = R.backward_eval(dy, x, w, rm, rv, 1e-5)
    for out in (None, (np.empty_like(x), np.empty(5), np.empty(5))):
        r = _bwd(entries, dy, x, w, rm, rv, mean, invstd, training, out=out)
        assert r is not None
        for k in range(3):
            assert_close(r[k], expected[k], F64, f"gradient {k}")
        assert (layout == "nsc") == (not r[0].flags.c_contiguous)


def test_backward_entry_declines(entries):
    rng = np.random.default_rng(4)
    x, dy = rng.standard_normal((4, 3, 5)), rng.standard_normal((4, 3, 5))
    w, sm, si = rng.random(3), rng.random(3), rng.random(3) + 0.5
    cases = {
        "grad_output in another layout": dict(dy=np.asfortranarray(dy)),
        "grad_output of another dtype": dict(dy=dy.astype(F32)),
        "grad_output of another shape": dict(dy=dy[:, :, :4]),
        "no save_mean in training": dict(sm=None),
        "output_mask a list": dict(mask=[True, True, True]),
        "output_mask of ints": dict(mask=(1, 1, 1)),
        "out a list": dict(out=[None, None, None]),
        "out of two": dict(out=(None, None)),
        "grad_input given, masked off": dict(mask=(False, True, True),
                                             out=(np.empty_like(x), None, None)),
        "grad_input is grad_output (in place)": dict(out=(dy, None, None)),
        "grad_weight in the weight's allocation": dict(w=(wb := rng.random(6))[:3],
                                                       out=(None, wb[3:], None)),
        "grad_weight is weight": dict(out=(None, w, None)),
        "grad_bias is grad_weight": dict(out=(None, (g := np.empty(3)), g)),
        "eps an int": dict(eps=1),
    }
    for what, kw in cases.items():
        args = dict(dy=dy, x=x, w=w, rm=None, rv=None, sm=sm, si=si, training=True, eps=1e-5,
                    mask=(True, True, True), out=None)
        args.update(kw)
        saved = {k: v.copy() for k, v in args.items() if isinstance(v, np.ndarray)}
        assert entries[1](*args.values(), 1) is None, what
        for k, v in saved.items():
            assert args[k].tobytes() == v.tobytes(), (what, k)
    # evaluation: the running statistics are required
    assert _bwd(entries, dy, x, w, None, None, sm, si, False) is None


@pytest.mark.parametrize("missing", ["bnsym_python.h", "numpy headers"])
def test_kernels_without_the_entry_points(tmp_path, entries, assert_close, monkeypatch, capfd,
                                          missing):
    """A folder of kernels without bnsym_python.h (an older or a hand-made variant), or a NumPy
    without its C headers, builds a module without entry points (the latter says so): every call
    then takes the Python path, with the same results."""
    src = tmp_path / "kernels"
    shutil.copytree(generated_dir(), src)
    if missing == "bnsym_python.h":
        (src / "bnsym_python.h").unlink()
    else:
        monkeypatch.setenv("BNSYM_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setattr(build, "_numpy_include", lambda: ("0", str(tmp_path / "nowhere")))
        with open(src / "bnsym_forward_eval.c", "a") as fh:  # another module than the case above
            fh.write("/* built without NumPy's headers */\n")
    ffi, lib = build.load(src)
    if missing != "bnsym_python.h":
        assert "NumPy's C headers are not installed" in capfd.readouterr().err
    assert not hasattr(lib, "bnsym_py_install")
    selection = api._kernels(ffi, lib)
    assert selection[3] == (None, None)
    saved = api._select_kernels(selection)
    try:
        assert api._CF is None and api._CB is None
        rng = np.random.default_rng(2)
        x = rng.standard_normal((6, 4, 3, 5))
        rm, rv = np.zeros(4), np.ones(4)
        y, sm, si = bnsym.batch_norm_forward(x, None, None, rm, rv, True, 0.1, 1e-5)
        yr, mean, _, invstd = R.forward_train(x)
        assert_close(y, yr, F64, "y")
        gi, _, _ = bnsym.batch_norm_backward(x, x, None, None, None, sm, si, True, 1e-5)
        assert_close(gi, R.backward_train(x, x, None, mean, invstd)[0], F64, "grad_input")
    finally:
        api._select_kernels(saved)
    assert api._CF is not None


def test_entry_points_keep_reference_counts(entries):
    """No reference leaks or losses: after many calls (taken, declined, with and without out=)
    every argument has the references it had, and a fresh result is freed once dropped."""
    import gc
    import sys
    import weakref

    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 3, 2, 2)).astype(F32)
    nsc = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    w, b, rm, rv = (np.ones(3, F32) for _ in range(4))
    y, sm, si = np.empty_like(x), np.empty(3, F32), np.empty(3, F32)
    gi, gw, gb = np.empty_like(x), np.empty(3, F32), np.empty(3, F32)
    ro = rm.copy()
    ro.flags.writeable = False
    calls = [
        lambda: _fwd(entries, x, w, b, rm, rv, True),
        lambda: _fwd(entries, nsc, w, b, rm, rv, True),
        lambda: _fwd(entries, x, w, b, rm, rv, True, out=y, sm=sm, si=si),
        lambda: _fwd(entries, x, w, b, rm, rv, False, out=y),
        lambda: _fwd(entries, x, w, b, ro, rv, True),  # declined
        lambda: _bwd(entries, x, x, w, rm, rv, sm, si, True),
        lambda: _bwd(entries, nsc, nsc, w, rm, rv, sm, si, False),
        lambda: _bwd(entries, x, x, w, rm, rv, sm, si, True, out=(gi, gw, gb)),
        lambda: _bwd(entries, x, x, w, rm, rv, sm, si, True, out=(gi, w, None)),  # declined
    ]
    arrays = (x, nsc, w, b, rm, rv, y, sm, si, gi, gw, gb, ro)
    for call in calls:
        call()
    gc.collect()
    before = [sys.getrefcount(a) for a in arrays]
    none_before = sys.getrefcount(None)
    for call in calls:
        for _ in range(200):
            call()
    gc.collect()
    assert [sys.getrefcount(a) for a in arrays] == before
    assert abs(sys.getrefcount(None) - none_before) < 50  # None is shared: only no drift per call
    r = _fwd(entries, x, w, b, rm, rv, True)
    refs = [weakref.ref(r[0]), weakref.ref(r[1]), weakref.ref(r[2])]
    g = _bwd(entries, nsc, nsc, w, rm, rv, sm, si, True)
    refs += [weakref.ref(a) for a in g]
    del r, g
    gc.collect()
    assert all(ref() is None for ref in refs), "a result of the entry points was never freed"
