"""The functional API (compiled kernels and NumPy backend) against the float64 reference.

Compiled results are compared with :mod:`bnsym.reference` (independent NumPy code), never with
the kernels themselves. Tolerances (conftest.RTOL), relative to the scale of each quantity:
float64 1e-10, float32 2e-5.
"""

import warnings

import numpy as np
import pytest

import bnsym
from bnsym import api
from bnsym import reference as R

F32, F64 = np.float32, np.float64

# m = 2, C = 1, spatial 1x1, sizes that are not multiples of any vector width, 2-D to 5-D;
# (12, 64, 5, 7) channels-last: the double reduction pass row by row over whole super-rows.
SHAPES = [
    (2, 1), (3, 1), (5, 3), (64, 19), (7, 5, 1), (1, 4, 3), (3, 17, 5), (2, 3, 1, 1),
    (2, 5, 3, 7), (4, 3, 2, 3, 5), (8, 33, 17, 9), (12, 64, 5, 7), (35, 150, 3, 5),
]
LAYOUTS = ["ncs", "nsc", "strided"]
BACKENDS = ["c", "numpy"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "c":
        request.getfixturevalue("kernels")
    return request.param


def _params(C, dtype, seed, affine=True, running=True):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(C).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    rm = rng.standard_normal(C).astype(dtype) if running else None
    rv = (rng.random(C) + 0.5).astype(dtype) if running else None
    return w, b, rm, rv


def _expected_strides(x):
    """The strides the output must have (dimensions of size 1 do not count)."""
    s = np.empty(x.shape, x.dtype).strides if x.flags.c_contiguous else x.strides
    return tuple(st for st, n in zip(s, x.shape) if n > 1)


def _strides(a):
    return tuple(st for st, n in zip(a.strides, a.shape) if n > 1)


def _layouts_for(shape):
    return [l for l in LAYOUTS if not (l == "nsc" and len(shape) < 3)]


CASES = [(s, l) for s in SHAPES for l in _layouts_for(s)]


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("shape,layout", CASES)
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("affine,running", [(True, True), (False, False), (True, False), (False, True)])
def test_forward_train_matches_reference(shape, layout, dtype, affine, running, backend,
                                         make_input, assert_close):
    x = make_input(shape, dtype, layout, seed=1, loc=0.5, scale=2.0)
    w, b, rm, rv = _params(shape[1], dtype, 2, affine, running)
    rm0 = None if rm is None else rm.copy()
    rv0 = None if rv is None else rv.copy()
    x0 = x.copy()
    y, sm, si = bnsym.batch_norm_forward(x, w, b, rm, rv, True, 0.1, 1e-5, backend=backend)
    yr, mean, var, invstd = R.forward_train(x, w, b, 1e-5)
    assert y.dtype == dtype and sm.dtype == dtype and si.dtype == dtype
    assert y.shape == shape and sm.shape == (shape[1],) and si.shape == (shape[1],)
    if layout != "strided":
        assert _strides(y) == _expected_strides(x)
    else:
        assert y.flags.c_contiguous
    assert_close(y, yr, dtype, "y")
    assert_close(sm, mean, dtype, "save_mean")
    assert_close(si, invstd, dtype, "save_invstd")
    np.testing.assert_array_equal(x, x0)  # input untouched
    if running:
        nm, nv = R.update_running(rm0, rv0, mean, var, x.size // shape[1], 0.1)
        assert_close(rm, nm, dtype, "running_mean")
        assert_close(rv, nv, dtype, "running_var")


@pytest.mark.parametrize("shape,layout", CASES)
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("affine", [True, False])
def test_forward_eval_matches_reference(shape, layout, dtype, affine, backend, make_input,
                                        assert_close):
    x = make_input(shape, dtype, layout, seed=3)
    w, b, rm, rv = _params(shape[1], dtype, 4, affine)
    rm0, rv0 = rm.copy(), rv.copy()
    y = bnsym.batch_norm(x, rm, rv, w, b, training=False, backend=backend)
    assert_close(y, R.forward_eval(x, w, b, rm, rv, 1e-5), dtype, "y")
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    y2, sm, si = bnsym.batch_norm_forward(x, w, b, rm, rv, False, 0.1, 1e-5, backend=backend)
    np.testing.assert_array_equal(y2, y)
    assert sm.shape == (0,) and si.shape == (0,) and sm.dtype == dtype


@pytest.mark.parametrize("dtype", [F32, F64])
def test_batch_norm_equals_forward_output(dtype, backend, make_input):
    x = make_input((6, 4, 3), dtype)
    w, b, rm, rv = _params(4, dtype, 5)
    rm2, rv2 = rm.copy(), rv.copy()
    y = bnsym.batch_norm(x, rm, rv, w, b, True, 0.3, 1e-3, backend=backend)
    y2, _, _ = bnsym.batch_norm_forward(x, w, b, rm2, rv2, True, 0.3, 1e-3, backend=backend)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(rm, rm2)
    np.testing.assert_array_equal(rv, rv2)


@pytest.mark.parametrize("momentum", [0.0, 1.0, 0.5, 1, 0])
def test_momentum_extremes(momentum, backend, make_input):
    x = make_input((5, 3, 4))
    _, _, rm, rv = _params(3, F64, 6)
    rm0, rv0 = rm.copy(), rv.copy()
    bnsym.batch_norm(x, rm, rv, training=True, momentum=momentum, backend=backend)
    _, mean, var, _ = R.forward_train(x)
    nm, nv = R.update_running(rm0, rv0, mean, var, 20, float(momentum))
    np.testing.assert_allclose(rm, nm, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rv, nv, rtol=1e-12, atol=1e-14)


def test_float32_large_offset_is_accurate(backend, make_input, assert_close):
    # E[x^2] - E[x]^2 would give garbage here; the spread is 1, the offset 1e4.
    x = make_input((16, 4, 8, 8), F32, loc=1e4, scale=1.0)
    y, sm, si = bnsym.batch_norm_forward(x, None, None, None, None, True, 0.1, 1e-5, backend=backend)
    yr, mean, var, invstd = R.forward_train(x, None, None, 1e-5)
    assert_close(si, invstd, F32, "save_invstd")
    np.testing.assert_allclose(y, yr, atol=5e-3)  # float32 input: x - mean has ulp(1e4) ~ 1e-3
    np.testing.assert_allclose(R.batch_stats(y)[1], 1.0, atol=1e-3)


def test_readonly_input_is_accepted(backend, make_input, assert_close):
    x = make_input((4, 3, 5))
    x.flags.writeable = False
    w, b, rm, rv = _params(3, F64, 7)
    for arr in (w, b):
        arr.flags.writeable = False
    y = bnsym.batch_norm(x, rm, rv, w, b, training=True, backend=backend)
    assert_close(y, R.forward_train(x, w, b)[0], F64, "y")


def test_noncontiguous_weight_is_copied(backend, make_input, assert_close):
    x = make_input((4, 3, 5))
    w = np.arange(6.0)[::2] + 1.0
    b = np.arange(6.0)[1::2]
    y = bnsym.batch_norm(x, None, None, w, b, training=True, backend=backend)
    assert_close(y, R.forward_train(x, w, b)[0], F64, "y")


# --------------------------------------------------------------------------- backward


@pytest.mark.parametrize("shape,layout", CASES)
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_backward_matches_reference(shape, layout, dtype, training, affine, backend, make_input,
                                    assert_close):
    x = make_input(shape, dtype, layout, seed=8)
    dy = make_input(shape, dtype, layout, seed=9)
    w, b, rm, rv = _params(shape[1], dtype, 10, affine)
    _, mean, _, invstd = R.forward_train(x, w, b, 1e-5)
    sm, si = mean.astype(dtype), invstd.astype(dtype)
    if training:
        gi, gw, gb = bnsym.batch_norm_backward(dy, x, w, None, None, sm, si, True, 1e-5,
                                               backend=backend)
        ri, rw, rb = R.backward_train(dy, x, w, sm, si)
    else:
        gi, gw, gb = bnsym.batch_norm_backward(dy, x, w, rm, rv, None, None, False, 1e-5,
                                               backend=backend)
        ri, rw, rb = R.backward_eval(dy, x, w, rm, rv, 1e-5)
    assert gi.dtype == gw.dtype == gb.dtype == dtype
    if layout != "strided":
        assert _strides(gi) == _expected_strides(x)
    # grad_input of the training backward is a difference of O(1) terms: compare at that scale.
    assert_close(gi, ri, dtype, "grad_input")
    assert_close(gw, rw, dtype, "grad_weight")
    assert_close(gb, rb, dtype, "grad_bias")


@pytest.mark.parametrize("mask", [(True, False, False), (False, True, False), (False, False, True),
                                  (False, True, True), (True, True, False), (False, False, False)])
@pytest.mark.parametrize("training", [True, False])
def test_output_mask(mask, training, backend, make_input):
    x, dy = make_input((4, 3, 5), seed=1), make_input((4, 3, 5), seed=2)
    w, b, rm, rv = _params(3, F64, 3)
    sm, si = R.forward_train(x)[1], R.forward_train(x)[3]
    full = bnsym.batch_norm_backward(dy, x, w, rm, rv, sm, si, training, 1e-5, backend=backend)
    part = bnsym.batch_norm_backward(dy, x, w, rm, rv, sm, si, training, 1e-5, list(mask),
                                     backend=backend)
    for want, f, p in zip(mask, full, part):
        if want:
            np.testing.assert_array_equal(p, f)
        else:
            assert p is None


def test_backward_gradoutput_layout_differs(backend, make_input, assert_close):
    x = make_input((3, 4, 5, 2), layout="nsc", seed=1)
    dy = make_input((3, 4, 5, 2), layout="ncs", seed=2)
    _, mean, _, invstd = R.forward_train(x)
    gi, gw, gb = bnsym.batch_norm_backward(dy, x, None, None, None, mean, invstd, True, 1e-5,
                                           backend=backend)
    ri, rw, rb = R.backward_train(dy, x, None, mean, invstd)
    assert gi.strides == x.strides
    assert_close(gi, ri, F64, "grad_input")
    assert_close(gw, rw, F64, "grad_weight")


# ----------------------------------------------------- finite differences through the kernels


def _fd(f, v, d, h=1e-6):
    return (f(v + h * d) - f(v - h * d)) / (2 * h)


@pytest.mark.parametrize("shape,layout", [((2, 1), "ncs"), ((5, 3), "ncs"), ((3, 4, 5), "nsc"),
                                          ((2, 3, 4, 3), "ncs"), ((2, 3, 2, 3, 2), "nsc")])
@pytest.mark.parametrize("training", [True, False])
def test_compiled_backward_matches_finite_differences(shape, layout, training, kernels,
                                                      make_input):
    rng = np.random.default_rng(11)
    C = shape[1]
    x = make_input(shape, F64, layout, seed=12)
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.random(C) + 0.5
    r = rng.standard_normal(shape)

    def loss(x_, w_=w, b_=b):
        y = bnsym.batch_norm(np.ascontiguousarray(x_), rm.copy(), rv.copy(), w_, b_,
                             training=training, eps=1e-3)
        return float(np.sum(r * y))

    y, sm, si = bnsym.batch_norm_forward(x, w, b, rm.copy(), rv.copy(), training, 0.1, 1e-3)
    gi, gw, gb = bnsym.batch_norm_backward(r, x, w, rm, rv, sm, si, training, 1e-3)
    d, dc = rng.standard_normal(shape), rng.standard_normal(C)
    assert np.sum(gi * d) == pytest.approx(_fd(loss, x, d), rel=1e-6, abs=1e-8)
    assert np.sum(gw * dc) == pytest.approx(_fd(lambda w_: loss(x, w_, b), w, dc), rel=1e-6, abs=1e-8)
    assert np.sum(gb * dc) == pytest.approx(_fd(lambda b_: loss(x, w, b_), b, dc), rel=1e-6, abs=1e-8)


# --------------------------------------------------------------------------- out= and in place


@pytest.mark.parametrize("layout", ["ncs", "nsc"])
def test_out_and_inplace_forward(layout, backend, make_input, assert_close):
    x = make_input((4, 3, 5, 2), F32, layout)
    w, b, rm, rv = _params(3, F32, 1)
    expected = R.forward_train(x, w, b)[0]
    out = np.empty_like(x)
    y = bnsym.batch_norm(x, rm.copy(), rv.copy(), w, b, True, out=out, backend=backend)
    assert y is out
    assert_close(out, expected, F32, "out")
    sm, si = np.empty(3, F32), np.empty(3, F32)
    y, sm2, si2 = bnsym.batch_norm_forward(x, w, b, rm.copy(), rv.copy(), True, 0.1, 1e-5,
                                           out=out, save_mean=sm, save_invstd=si, backend=backend)
    assert sm2 is sm and si2 is si
    xin = x.copy() if layout == "ncs" else np.empty_like(x)
    xin[...] = x
    y = bnsym.batch_norm(xin, rm.copy(), rv.copy(), w, b, True, out=xin, backend=backend)
    assert y is xin
    assert_close(xin, expected, F32, "in place")


def test_out_backward_and_inplace_grad(backend, make_input, assert_close):
    x, dy = make_input((4, 3, 5), seed=1), make_input((4, 3, 5), seed=2)
    _, mean, _, invstd = R.forward_train(x)
    ri, rw, rb = R.backward_train(dy, x, None, mean, invstd)
    outs = (np.empty_like(x), np.empty(3), np.empty(3))
    res = bnsym.batch_norm_backward(dy, x, None, None, None, mean, invstd, True, 1e-5, out=outs,
                                    backend=backend)
    assert all(r is o for r, o in zip(res, outs))
    assert_close(res[0], ri, F64, "grad_input")
    dy2 = dy.copy()
    gi, _, _ = bnsym.batch_norm_backward(dy2, x, None, None, None, mean, invstd, True, 1e-5,
                                         out=(dy2, None, None), backend=backend)
    assert gi is dy2
    assert_close(dy2, ri, F64, "in-place grad_input")


def test_out_allows_nothing_allocated_in_a_loop(kernels, make_input):
    x = make_input((8, 4, 6), F32)
    w, b, rm, rv = _params(4, F32, 1)
    out, sm, si = np.empty_like(x), np.empty(4, F32), np.empty(4, F32)
    gi, gw, gb = np.empty_like(x), np.empty(4, F32), np.empty(4, F32)
    for _ in range(3):
        y, sm_, si_ = bnsym.batch_norm_forward(x, w, b, rm, rv, True, 0.1, 1e-5, out=out,
                                               save_mean=sm, save_invstd=si)
        res = bnsym.batch_norm_backward(y, x, w, None, None, sm, si, True, 1e-5, out=(gi, gw, gb))
        assert y is out and sm_ is sm and res[0] is gi and res[1] is gw and res[2] is gb


# --------------------------------------------------------------------------- empty input


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4), (2, 3, 0), (2, 3, 4, 0)])
def test_empty_input(shape, backend):
    x = np.empty(shape, F32)
    w, b, rm, rv = _params(3, F32, 1)
    rm0, rv0 = rm.copy(), rv.copy()
    y = bnsym.batch_norm(x, rm, rv, w, b, training=True, backend=backend)
    assert y.shape == shape and y.dtype == F32
    np.testing.assert_array_equal(rm, rm0)  # PyTorch: running statistics untouched
    np.testing.assert_array_equal(rv, rv0)
    y = bnsym.batch_norm(x, rm, rv, w, b, training=False, backend=backend)
    assert y.shape == shape
    for training in (True, np.True_):  # a NumPy bool, accepted everywhere, too
        with pytest.raises(ValueError, match="at least one element"):
            bnsym.batch_norm_forward(x, w, b, rm, rv, training, 0.1, 1e-5, backend=backend)
    y, sm, si = bnsym.batch_norm_forward(x, w, b, rm, rv, False, 0.1, 1e-5, backend=backend)
    assert y.shape == shape and sm.shape == (0,)
    gi, gw, gb = bnsym.batch_norm_backward(x, x, w, rm, rv, rm, rv, True, 1e-5, backend=backend)
    assert gi.shape == shape
    np.testing.assert_array_equal(gw, np.zeros(3))
    np.testing.assert_array_equal(gb, np.zeros(3))


# --------------------------------------------------------------------------- skip_nonfinite


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_skip_nonfinite(bad, backend, make_input):
    x = make_input((4, 3, 5))
    x[1, 2, 3] = bad
    _, _, rm, rv = _params(3, F64, 1)
    rm0, rv0 = rm.copy(), rv.copy()
    with pytest.warns(api.NonFiniteBatchWarning):
        y = bnsym.batch_norm(x, rm, rv, training=True, skip_nonfinite=True, backend=backend)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    assert np.isfinite(y[:, :2]).all()  # the finite channels are still normalized
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bnsym.batch_norm(x, rm, rv, training=True, backend=backend)  # default: no skip, no warning
    assert not np.isfinite(rm[2]) or not np.isfinite(rv[2])
    np.testing.assert_allclose(rm[:2], (0.9 * rm0 + 0.1 * R.batch_stats(x)[0])[:2])


def test_skip_nonfinite_finite_batch_updates(backend, make_input):
    x = make_input((4, 3, 5))
    _, _, rm, rv = _params(3, F64, 1)
    rm0 = rm.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bnsym.batch_norm(x, rm, rv, training=True, skip_nonfinite=True, backend=backend)
    assert not np.array_equal(rm, rm0)


# --------------------------------------------------------------------------- threads


def test_threads_setting_and_results(kernels, make_input, assert_close):
    before = bnsym.get_num_threads()
    assert before >= 1
    x = make_input((16, 8, 32, 32), F32, seed=5)
    try:
        results = []
        for n in (1, 2, 3):
            bnsym.set_num_threads(n)
            assert bnsym.get_num_threads() == n
            results.append(bnsym.batch_norm(x, None, None, training=True))
        for y in results:
            assert_close(y, R.forward_train(x)[0], F32, "threads")
    finally:
        bnsym.set_num_threads(before)
    for bad in (0, -1, 2**31, 2**63):  # the kernels take a C int: refused here, not by a later call
        with pytest.raises(ValueError, match="num_threads"):
            bnsym.set_num_threads(bad)
        assert bnsym.get_num_threads() == before
    for bad in (1.5, "2", None, True):
        with pytest.raises(TypeError):
            bnsym.set_num_threads(bad)


@pytest.mark.parametrize("dtype,shape", [(F32, (2, 8, 512, 520)), (F64, (3, 4, 512, 350)),
                                         (F32, (4, 64, 128, 130))])
def test_large_input_channel_blocks(dtype, shape, kernels, make_input, assert_close):
    """Inputs over the kernels' cache size (16 MiB) run in channel blocks when C >= threads: same
    results as the reference at every thread count, and (each channel summed by one thread in
    one order) bitwise the same at 1 and 2 threads. 3 threads with C = 8 or 4 take the other
    schedule. (4, 64, 128, 130): 7 channels per block of 2 MiB per array, so each thread's range
    holds several blocks and a shorter last one (64 channels over 1, 2 and 3 threads)."""
    assert np.prod(shape) * np.dtype(dtype).itemsize > 16 << 20
    C = shape[1]
    x = make_input(shape, dtype, seed=21, loc=3.0, scale=0.5)
    dy = make_input(shape, dtype, seed=22)
    w, b, rm, rv = _params(C, dtype, 23)
    ry, rmean, rvar, rinv = R.forward_train(x, w, b, 1e-5)
    sm, si = rmean.astype(dtype), rinv.astype(dtype)
    rgi, rgw, rgb = R.backward_train(dy, x, w, sm, si)
    egi, egw, egb = R.backward_eval(dy, x, w, rm, rv, 1e-5)
    before = bnsym.get_num_threads()
    got = {}
    try:
        for n in (1, 2, 3):
            bnsym.set_num_threads(n)
            rm1, rv1 = rm.copy(), rv.copy()
            y, m, inv = bnsym.batch_norm_forward(x, w, b, rm1, rv1, True, 0.1, 1e-5)
            gi, gw, gb = bnsym.batch_norm_backward(dy, x, w, None, None, sm, si, True, 1e-5)
            ei, ew, eb = bnsym.batch_norm_backward(dy, x, w, rm, rv, None, None, False, 1e-5)
            assert_close(y, ry, dtype, f"output, {n} threads")
            assert_close(m, rmean, dtype, f"save_mean, {n} threads")
            assert_close(inv, rinv, dtype, f"save_invstd, {n} threads")
            m_count = x.size // C
            assert_close(rm1, 0.9 * rm + 0.1 * rmean, dtype, "running_mean")
            assert_close(rv1, 0.9 * rv + 0.1 * rvar * m_count / (m_count - 1), dtype, "running_var")
            for a, e, what in ((gi, rgi, "grad_input"), (gw, rgw, "grad_weight"),
                               (gb, rgb, "grad_bias"), (ei, egi, "eval grad_input"),
                               (ew, egw, "eval grad_weight"), (eb, egb, "eval grad_bias")):
                assert_close(a, e, dtype, f"{what}, {n} threads")
            got[n] = (y, m, inv, gi, gw, gb)
    finally:
        bnsym.set_num_threads(before)
    for a, b1 in zip(got[1], got[2]):
        assert np.array_equal(a, b1), "1 and 2 threads differ"
    # a NaN in one channel: the output shows it there only; skip_nonfinite keeps the running
    # statistics of every channel
    x[1, 2, 3, 4] = np.nan
    rm1, rv1 = rm.copy(), rv.copy()
    with pytest.warns(bnsym.NonFiniteBatchWarning):
        y = bnsym.batch_norm(x, rm1, rv1, w, b, training=True, skip_nonfinite=True)
    assert np.isnan(y[:, 2]).all() and np.isfinite(np.delete(y, 2, axis=1)).all()
    np.testing.assert_array_equal(rm1, rm)
    np.testing.assert_array_equal(rv1, rv)


def _every_pass_matches(x, dy, dtype, threads, assert_close):
    """Training forward, inference, and the backward in both modes against the reference at each
    thread count of ``threads`` (each output checked; the running statistics passed as copies)."""
    C = x.shape[1]
    w, b, rm, rv = _params(C, dtype, 33)
    ry, rmean, _, rinv = R.forward_train(x, w, b, 1e-5)
    sm, si = rmean.astype(dtype), rinv.astype(dtype)
    rgi, rgw, rgb = R.backward_train(dy, x, w, sm, si)
    egi, egw, egb = R.backward_eval(dy, x, w, rm, rv, 1e-5)
    rey = R.forward_eval(x, w, b, rm, rv, 1e-5)
    before = bnsym.get_num_threads()
    try:
        for n in threads:
            bnsym.set_num_threads(n)
            y, m, inv = bnsym.batch_norm_forward(x, w, b, rm.copy(), rv.copy(), True, 0.1, 1e-5)
            ey, _, _ = bnsym.batch_norm_forward(x, w, b, rm, rv, False, 0.1, 1e-5)
            gi, gw, gb = bnsym.batch_norm_backward(dy, x, w, None, None, sm, si, True, 1e-5)
            ei, ew, eb = bnsym.batch_norm_backward(dy, x, w, rm, rv, None, None, False, 1e-5)
            for a, e, what in ((y, ry, "output"), (ey, rey, "eval output"), (m, rmean, "save_mean"),
                               (inv, rinv, "save_invstd"), (gi, rgi, "grad_input"),
                               (gw, rgw, "grad_weight"), (gb, rgb, "grad_bias"),
                               (ei, egi, "eval grad_input"), (ew, egw, "eval grad_weight"),
                               (eb, egb, "eval grad_bias")):
                assert_close(a, e, dtype, f"{what}, {n} threads")
    finally:
        bnsym.set_num_threads(before)


@pytest.mark.parametrize("dtype,shape,layout", [
    (F64, (70, 1000), "ncs"),        # rows: 2 blocks of 512 lanes (4 double coefficients), 488 last
    (F32, (23, 3000), "ncs"),        # rows: 3 blocks of 1008 lanes (4 float coefficients), 984 last
    (F64, (6, 1500, 3, 4), "nsc"),   # channels-last rows
    (F32, (4, 1100, 2, 3), "nsc"),   # channels-last float32: 2 blocks of 560 lanes, 540 last
    (F64, (2, 2000), "ncs"),         # the small-input schedule: one chunk of 2000 lanes
])
def test_element_pass_in_blocks_of_lanes(dtype, shape, layout, kernels, make_input, assert_close):
    """When the element pass's per-lane coefficients outgrow BNSYM_ELEM_LANE_BYTES (16 KiB), it
    runs over the rows in blocks of lanes: every value of every block, the last one shorter, at
    1, 2 and 3 threads, in every pass (a block skipped leaves np.empty's zeros). (A group of short
    strips side by side, one chunk of lanes per sample, is never blocked: nothing to reuse.)"""
    x = make_input(shape, dtype, layout, seed=31, loc=2.0, scale=0.5)
    dy = make_input(shape, dtype, layout, seed=32)
    _every_pass_matches(x, dy, dtype, (1, 2, 3), assert_close)


@pytest.mark.parametrize("shape", [(3, 96, 8, 8), (4, 96, 8, 8), (5, 80, 7, 7), (7, 200, 14, 14),
                                   (9, 64, 3, 3)])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_short_strips_of_few_samples(shape, dtype, kernels, make_input, assert_close):
    """Short strips (S < 256) of a few samples: summed strip by strip below BNSYM_STRIP_ROWS
    samples (8; 4 for the float32 backward, whose float lanes cost less), else in lanes; every
    pass against the reference, at 1 and 2 threads (BNSYM_MIN_WORK lets the larger run 2)."""
    x = make_input(shape, dtype, seed=41, loc=-3.0, scale=0.25)
    dy = make_input(shape, dtype, seed=42)
    _every_pass_matches(x, dy, dtype, (1, 2), assert_close)


@pytest.mark.parametrize("dtype,shape", [
    (F32, (16, 600, 3, 3)),   # float32 lanes: sub-groups of 151 channels (16 KiB of coefficients)
    (F64, (16, 700, 2, 3)),   # float64 lanes (S < 8): sub-groups of 113 channels, 2 in the last
    (F64, (16, 300, 3, 3)),   # float64 strip by strip (S >= 8)
    (F32, (32, 160, 7, 7)),   # strip by strip (S >= 16): element units of one sample's group
])
def test_very_short_strips(dtype, shape, kernels, make_input, assert_close):
    """Very short strips (float32 S < 16, float64 S < 8): the element pass runs over a channel
    group's strips of each sample as one row of lanes, in sub-groups of channels whose
    coefficient lanes fit in L1, the last one shorter; longer ones strip by strip, in units of one
    sample's channel group, in address order. Every pass at 1 and 2 threads against the reference
    (a sub-group or unit skipped leaves np.empty's zeros)."""
    x = make_input(shape, dtype, seed=51, loc=1.5, scale=0.5)
    dy = make_input(shape, dtype, seed=52)
    _every_pass_matches(x, dy, dtype, (1, 2), assert_close)


def test_num_threads_env_default():
    import subprocess
    import sys
    code = "import bnsym; print(bnsym.get_num_threads())"
    env = dict(__import__("os").environ, BNSYM_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "3", out.stderr


@pytest.mark.parametrize("variant", ["float32 only", "prefix mybn_"])
def test_kernel_dir_of_a_partial_set_is_explained(tmp_path, variant):
    """``$BNSYM_KERNEL_DIR`` at a set from ``bnsym generate --out`` with ``--dtypes`` or
    ``--prefix``: the first call says what the API needs, before compiling anything (it once
    compiled the set and failed on a missing attribute, or asked for ``bnsym generate
    --update``, which rewrites the package's kernels)."""
    import os
    import shutil
    import subprocess
    import sys

    from bnsym._paths import generated_dir

    kdir = tmp_path / "k"
    shutil.copytree(generated_dir(), kdir)
    header = kdir / "bnsym.h"
    if variant == "float32 only":
        header.write_text("\n".join(ln for ln in header.read_text().split("\n") if "_f64_" not in ln))
        expected = "declares no bnsym_forward_train_f64_ncs"
    else:
        header.rename(kdir / "mybn.h")
        expected = "holds no bnsym.h"
    code = ("import numpy as np, bnsym\n"
            "bnsym.batch_norm(np.ones((4, 3), np.float32), None, None, training=True)")
    env = dict(os.environ, BNSYM_KERNEL_DIR=str(kdir), BNSYM_CACHE_DIR=str(tmp_path / "cache"))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert p.returncode != 0
    assert "CompileError" in p.stderr and expected in p.stderr, p.stderr
    assert "without --prefix, --dtypes or --layouts" in p.stderr and "$BNSYM_KERNEL_DIR" in p.stderr
    assert "compiling" not in p.stderr and not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- PyTorch


def _torch():
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"torch not importable: {type(exc).__name__}")
    return torch


@pytest.mark.parametrize("shape,layout", [((8, 5), "ncs"), ((4, 3, 7), "ncs"), ((4, 3, 6, 5), "ncs"),
                                          ((4, 3, 6, 5), "nsc"), ((2, 3, 2, 4, 3), "ncs")])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_matches_torch(shape, layout, dtype, kernels, make_input, assert_close):
    torch = _torch()
    x = make_input(shape, dtype, layout, seed=21, loc=1.0)
    C = shape[1]
    w, b, rm, rv = _params(C, dtype, 22)
    trm, trv = torch.tensor(rm.copy()), torch.tensor(rv.copy())
    tx = torch.tensor(np.ascontiguousarray(x), requires_grad=True)
    tw, tb = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    ty = torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, True, 0.1, 1e-5)
    dy = make_input(shape, dtype, layout, seed=23)
    ty.backward(torch.tensor(np.ascontiguousarray(dy)))
    y, sm, si = bnsym.batch_norm_forward(x, w, b, rm, rv, True, 0.1, 1e-5)
    gi, gw, gb = bnsym.batch_norm_backward(dy, x, w, rm, rv, sm, si, True, 1e-5)
    assert_close(y, ty.detach().numpy(), dtype, "y")
    assert_close(rm, trm.numpy(), dtype, "running_mean")
    assert_close(rv, trv.numpy(), dtype, "running_var")
    assert_close(gi, tx.grad.numpy(), dtype, "grad_input")
    assert_close(gw, tw.grad.numpy(), dtype, "grad_weight")
    assert_close(gb, tb.grad.numpy(), dtype, "grad_bias")
    ye = bnsym.batch_norm(x, rm, rv, w, b, training=False)
    te = torch.nn.functional.batch_norm(tx.detach(), trm, trv, tw.detach(), tb.detach(), False)
    assert_close(ye, te.numpy(), dtype, "eval")


# --------------------------------------------------------------------------- runtime path


def test_runtime_imports_no_sympy_or_jinja2():
    import subprocess
    import sys
    code = ("import sys, bnsym, bnsym.api, bnsym.layer, bnsym.build, bnsym.reference, bnsym._checks; "
            "bnsym.batch_norm; bnsym.BatchNorm; "
            "heavy = [m for m in ('sympy', 'jinja2') if m in sys.modules]; print(heavy); "
            "sys.exit(bool(heavy))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_light_path_is_inline(kernels, monkeypatch, assert_close):
    """Valid arguments are checked inline, never through the explanatory (slower) ``_checks``
    functions: every one of them is made to fail here, and the usual calls still work and give
    the reference. (The cost of a call is measured by ``bnsym bench``, not by a timed test.)"""
    import inspect

    from bnsym import _checks

    def forbidden(*args, **kwargs):
        raise AssertionError("the light path called bnsym._checks")

    for name, fn in inspect.getmembers(_checks, inspect.isfunction):
        if fn.__module__ == _checks.__name__:
            monkeypatch.setattr(_checks, name, forbidden)
    x = np.random.default_rng(0).standard_normal((4, 8, 3)).astype(F32)
    dy = np.random.default_rng(1).standard_normal((4, 8, 3)).astype(F32)
    w, b, rm, rv = _params(8, F32, 1)
    rm0, rv0 = rm.copy(), rv.copy()
    y = bnsym.batch_norm(x, rm, rv, w, b, True)
    assert_close(y, R.forward_train(x, w, b, 1e-5)[0], F32, "batch_norm")
    assert not np.array_equal(rm, rm0) and not np.array_equal(rv, rv0)
    y, sm, si = bnsym.batch_norm_forward(x, w, b, rm, rv, False, 0.1, 1e-5)
    assert_close(y, R.forward_eval(x, w, b, rm, rv, 1e-5), F32, "forward eval")
    _, sm, si = bnsym.batch_norm_forward(x, w, b, rm, rv, True, 0.1, 1e-5)
    gi, gw, gb = bnsym.batch_norm_backward(dy, x, w, None, None, sm, si, True, 1e-5)
    for a, e, what in zip((gi, gw, gb), R.backward_train(dy, x, w, sm, si), "igb"):
        assert_close(a, e, F32, "backward " + what)
    gi, gw, gb = bnsym.batch_norm_backward(dy, x, w, rm, rv, None, None, False, 1e-5)
    for a, e, what in zip((gi, gw, gb), R.backward_eval(dy, x, w, rm, rv, 1e-5), "igb"):
        assert_close(a, e, F32, "eval backward " + what)


# --------------------------------------------------------------------------- property-based

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def _case(draw):
    nd = draw(st.integers(2, 5))
    shape = [draw(st.integers(1, 6)), draw(st.integers(1, 9))]
    shape += [draw(st.integers(1, 5)) for _ in range(nd - 2)]
    if shape[0] * int(np.prod(shape[2:])) < 2:
        shape[0] = 2
    layout = draw(st.sampled_from(_layouts_for(tuple(shape))))
    dtype = draw(st.sampled_from([F32, F64]))
    return (tuple(shape), layout, dtype, draw(st.booleans()), draw(st.booleans()),
            draw(st.integers(0, 2**31 - 1)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_case())
def test_random_cases_match_reference(case, kernels, make_input, assert_close):
    shape, layout, dtype, affine, training = case[:5]
    seed = case[5]
    x = make_input(shape, dtype, layout, seed=seed, loc=float(seed % 7) - 3, scale=0.5 + seed % 3)
    dy = make_input(shape, dtype, layout, seed=seed + 1)
    w, b, rm, rv = _params(shape[1], dtype, seed + 2, affine)
    rm0, rv0 = rm.copy(), rv.copy()
    y, sm, si = bnsym.batch_norm_forward(x, w, b, rm, rv, training, 0.1, 1e-5)
    if training:
        yr, mean, var, invstd = R.forward_train(x, w, b, 1e-5)
        nm, nv = R.update_running(rm0, rv0, mean, var, x.size // shape[1], 0.1)
        assert_close(rm, nm, dtype, "running_mean")
        assert_close(rv, nv, dtype, "running_var")
        gi, gw, gb = bnsym.batch_norm_backward(dy, x, w, None, None, sm, si, True, 1e-5)
        ri, rw, rb = R.backward_train(dy, x, w, sm, si)
    else:
        yr = R.forward_eval(x, w, b, rm, rv, 1e-5)
        gi, gw, gb = bnsym.batch_norm_backward(dy, x, w, rm, rv, sm, si, False, 1e-5)
        ri, rw, rb = R.backward_eval(dy, x, w, rm, rv, 1e-5)
    assert_close(y, yr, dtype, "y")
    assert_close(gi, ri, dtype, "grad_input")
    assert_close(gw, rw, dtype, "grad_weight")
    assert_close(gb, rb, dtype, "grad_bias")


def test_empty_input_matches_torch(kernels):
    torch = _torch()
    x = np.empty((0, 3, 4), F32)
    w, b, rm, rv = _params(3, F32, 1)
    trm, trv = torch.tensor(rm.copy()), torch.tensor(rv.copy())
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    ty = torch.nn.functional.batch_norm(tx, trm, trv, tw, torch.tensor(b), True)
    ty.sum().backward()
    y = bnsym.batch_norm(x, rm, rv, w, b, training=True)
    assert y.shape == tuple(ty.shape)
    np.testing.assert_array_equal(rm, trm.numpy())
    np.testing.assert_array_equal(rv, trv.numpy())
    _, gw, _ = bnsym.batch_norm_backward(x, x, w, rm, rv, rm, rv, True, 1e-5)
    np.testing.assert_array_equal(gw, tw.grad.numpy())
