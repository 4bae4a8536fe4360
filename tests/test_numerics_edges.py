"""Values at the edges: offsets, huge and tiny magnitudes, constant channels, NaN/inf, denormals,
m = 2, empty input: both layouts, both dtypes, training and evaluation, forward and backward.

Every check compares against an independent reference computed here in long double / float64
(``_fuzz_worker.ref_forward`` / ``ref_backward``, which share no code with bnsym) with the
tolerances justified in ``tests/_fuzz_worker.py`` (float32 1e-5, float64 1e-12, relative to
the scale of the terms of each result, plus the double-summation bound ``m * 2**-53``), and,
for non-finite values, against PyTorch when ``import torch`` works.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import bnsym
from bnsym.api import NonFiniteBatchWarning

from _fuzz_worker import (LD, Check, RTOL, U_ACC, cl_perm, inv_perm, ref_backward, ref_forward,
                          ref_stats)

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
DTYPES = [F32, F64]
LAYOUTS = ["ncs", "nsc"]

try:  # the comparison with PyTorch is optional
    import torch
    import torch.nn.functional as TF
except Exception:  # noqa: BLE001
    torch = None


def arr(vals, dtype, layout):
    """``vals`` (float64, shape (N, C, *S)) as ``dtype`` in layout ncs or nsc (channels-last)."""
    nd = vals.ndim
    if layout == "ncs":
        return np.ascontiguousarray(vals.astype(dtype))
    stored = np.ascontiguousarray(vals.transpose(cl_perm(nd)).astype(dtype))
    x = stored.transpose(inv_perm(nd))
    return x


def forward(x, w, b, rm, rv, training, momentum=0.1, eps=1e-5, **kw):
    return bnsym.batch_norm_forward(x, w, b, rm, rv, training, momentum, eps, **kw)


def check_forward(x, w=None, b=None, rm=None, rv=None, training=True, momentum=0.1, eps=1e-5,
                  what=""):
    """Run the C forward on (x, ...) and compare every output with the reference."""
    dt = x.dtype
    rm0 = None if rm is None else rm.copy()
    rv0 = None if rv is None else rv.copy()
    y, sm, si = forward(x, w, b, rm, rv, training, momentum, eps)
    ref = ref_forward(x, w, b, rm0, rv0, training, momentum, eps, dt)
    chk = Check(dt, what)
    chk.close("y", y, *ref["y"])
    if training:
        chk.close("save_mean", sm, *ref["save_mean"])
        chk.close("save_invstd", si, *ref["save_invstd"])
        if rm is not None:
            chk.close("running_mean", rm, *ref["running_mean"])
        if rv is not None:
            chk.close("running_var", rv, *ref["running_var"])
    return y, sm, si


def check_backward(dy, x, w, a, b, training, eps=1e-5, what=""):
    dt = x.dtype
    if training:
        gi, gw, gb = bnsym.batch_norm_backward(dy, x, w, None, None, a, b, True, eps)
    else:
        gi, gw, gb = bnsym.batch_norm_backward(dy, x, w, a, b, None, None, False, eps)
    ref = ref_backward(dy, x, w, a, b, training, eps, dt)
    chk = Check(dt, what)
    chk.close("grad_input", gi, *ref["grad_input"])
    chk.close("grad_weight", gw, *ref["grad_weight"])
    chk.close("grad_bias", gb, *ref["grad_bias"])
    return gi, gw, gb


def params(C, dtype, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.5, 2, C).astype(dtype), rng.uniform(-1, 1, C).astype(dtype))


# --------------------------------------------------------------------------- offsets


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_float32_offset_statistics(layout, offset):
    """float32 ``offset + N(0,1)``: save_mean and the batch variance recovered from save_invstd
    agree with float64 on the same float32 values to 1e-5 relative (E[x^2]-E[x]^2 in float32
    gives garbage here: its cancellation error is ~offset^2 * 6e-8 = 6 at 1e4)."""
    rng = np.random.default_rng(0)
    shape = (16, 3, 9, 7)
    x = arr(offset + rng.standard_normal(shape), F32, layout)
    eps = 1e-5
    y, sm, si = forward(x, None, None, None, None, True, 0.1, eps)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3))
    var = ((x64 - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(sm.astype(np.float64), mean, rtol=1e-5, atol=0)
    var_k = 1.0 / si.astype(np.float64) ** 2 - eps
    np.testing.assert_allclose(var_k, var, rtol=1e-5, atol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_float32_offset_output_is_accurate(layout, offset):
    """y of ``offset + N(0,1)`` has unit scale: it must be right to 1e-5 of that scale.

    The float32 input values are exact; what limits y is how x - mean is formed. With the
    mean rounded to float32 first (or the folded form x*alpha + beta) the error is
    ulp(offset)/2 * invstd: 5e-4 at 1e4, 3e-2 at 1e6. Subtracting the double mean (or
    a hi/lo float pair) gives ~1e-7."""
    rng = np.random.default_rng(1)
    shape = (16, 3, 9, 7)
    x = arr(offset + rng.standard_normal(shape), F32, layout)
    w, b = params(3, F32)
    check_forward(x, w, b, training=True, what=f"train, offset {offset:g}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_offset_eval_and_backward(dtype, layout):
    """Evaluation with a running mean near the data (exact in the dtype) and the backward at an
    offset: accurate relative to the unit scale of the results."""
    rng = np.random.default_rng(2)
    off = 1e4 if dtype == F32 else 1e8
    shape = (8, 3, 5, 6)
    x = arr(off + rng.standard_normal(shape), dtype, layout)
    w, b = params(3, dtype)
    rm = (off + rng.uniform(-1, 1, 3)).astype(dtype)
    rv = rng.uniform(0.5, 2, 3).astype(dtype)
    check_forward(x, w, b, rm, rv, training=False, what="eval at offset")
    dy = arr(rng.standard_normal(shape), dtype, layout)
    check_backward(dy, x, w, rm, rv, False, what="backward eval at offset")
    # training backward with the (exactly given) statistics of the batch
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3)).astype(dtype)
    inv = (1 / np.sqrt(x64.var(axis=(0, 2, 3)) + 1e-5)).astype(dtype)
    check_backward(dy, x, w, mean, inv, True, what="backward train at offset")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float64_offset(layout):
    """float64 ``1e8 + N(0,1)`` (E[x^2]-E[x]^2 in double loses ~all digits: 1e16 * 1e-16)."""
    rng = np.random.default_rng(3)
    x = arr(1e8 + rng.standard_normal((8, 4, 33)), F64, layout)
    rm, rv = np.zeros(4), np.ones(4)
    check_forward(x, *params(4, F64), rm, rv, training=True, what="float64 offset 1e8")


# --------------------------------------------------------------------------- magnitudes


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype,big", [(F32, 1e20), (F32, 1e30), (F64, 1e150)])
@pytest.mark.parametrize("shape", [(2, 1), (6, 3, 17), (64, 2), (10, 3, 5)])
def test_huge_forward(layout, dtype, big, shape):
    """|x| ~ 1e20..1e30 in float32: the variance (1e40..1e60) exceeds float32 but not the
    double accumulators: save_invstd finite and right, y right (1e150 in float64: 1e300 still
    fits a double). The float32 running variance of ~1e60 overflows to inf, as the reference
    rounded to float32 (and PyTorch); evaluation with such input and moderate running
    statistics gives the finite reference too."""
    if layout == "nsc" and len(shape) == 2:
        layout = "ncs"
    rng = np.random.default_rng(4)
    x = arr(big * rng.standard_normal(shape), dtype, layout)
    C = shape[1]
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    y, sm, si = check_forward(x, *params(C, dtype), rm, rv, training=True, what=f"huge {big:g}")
    assert np.isfinite(si).all() and (si > 0).all()
    assert np.isfinite(y).all()
    rm = (big * rng.uniform(-1, 1, C)).astype(dtype)
    rv = np.full(C, big, dtype)  # invstd ~ big**-0.5: y ~ big**0.5, finite
    check_forward(x, *params(C, dtype), rm, rv, training=False, what=f"huge {big:g}, eval")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m_shape,layout", [((2, 1), "ncs"), ((2, 3, 1), "ncs"), ((2, 3, 1), "nsc"),
                                            ((5, 2, 7), "ncs"), ((5, 2, 7), "nsc"), ((9, 2, 5), "ncs")])
def test_huge_backward(layout, dtype, m_shape):
    """Backward at |x| ~ 1e30 (float32) / 1e150 (float64) with unit and huge grad_output:
    the gradient is finite and right. Per-channel coefficients such as gamma*invstd**3*sum
    underflow the dtype although the per-element result does not: they must not be
    formed in the dtype."""
    big = 1e30 if dtype == F32 else 1e150
    rng = np.random.default_rng(5)
    x = arr(big * rng.standard_normal(m_shape), dtype, layout)
    x64 = x.astype(np.float64)
    ax = (0,) + tuple(range(2, x.ndim))
    mean = x64.mean(axis=ax)
    inv = 1 / np.sqrt(((x64 - mean.reshape((1, -1) + (1,) * (x.ndim - 2))) ** 2).mean(axis=ax))
    mean, inv = mean.astype(dtype), inv.astype(dtype)
    w, _ = params(m_shape[1], dtype)
    dy = arr(rng.standard_normal(m_shape), dtype, layout)
    check_backward(dy, x, w, mean, inv, True, what="huge x, unit dy")
    dy_big = arr(big * rng.standard_normal(m_shape), dtype, layout)
    gi, gw, gb = check_backward(dy_big, x, w, mean, inv, True, what="huge x, huge dy")
    assert np.isfinite(gw).all() and np.isfinite(gi).all()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(2, 3), (4, 5, 33, 31), (3, 2, 17)])
def test_huge_x_tiny_grad_output(layout, dtype, training, shape):
    """|x| ~ 1e30 with |grad_output| ~ 1e-25 (float32; 1e100 / 1e-200 float64): invstd*dy is
    below float's range although dy*xhat (and sum(dy)) is not, so a float partial sum is 0.
    The kernels must notice (a zero float sum is summed again in double) and give the reference
    grad_weight ~ 1e-30, on every reduction path (rows, long strips, short strips)."""
    if layout == "nsc" and len(shape) == 2:
        pytest.skip("channels-last needs spatial dimensions")
    big, tiny = (1e30, 1e-25) if dtype == F32 else (1e100, 1e-200)
    rng = np.random.default_rng(12)
    x = arr(big * rng.standard_normal(shape), dtype, layout)
    dy = arr(tiny * rng.standard_normal(shape), dtype, layout)
    C = shape[1]
    w, _ = params(C, dtype)
    if training:
        x64 = x.astype(np.float64)
        ax = (0,) + tuple(range(2, x.ndim))
        mean = x64.mean(axis=ax)
        var = ((x64 - mean.reshape((1, -1) + (1,) * (x.ndim - 2))) ** 2).mean(axis=ax)
        a, b = mean.astype(dtype), (1 / np.sqrt(var + 1e-5)).astype(dtype)
    else:
        a = (big * rng.standard_normal(C)).astype(dtype)
        b = (big * big / 4 * rng.uniform(0.5, 2, C)).astype(dtype) if dtype == F64 else \
            np.full(C, np.float32(1e38), dtype)
    gi, gw, gb = check_backward(dy, x, w, a, b, training, what=f"huge x, tiny dy {shape}")
    assert (gw != 0).all()
    # grad_weight alone (no element pass): the same values
    _, gw2, _ = bnsym.batch_norm_backward(dy, x, w, None if training else a, None if training else b,
                                          a if training else None, b if training else None,
                                          training, 1e-5, (False, True, False))
    np.testing.assert_array_equal(gw2, gw)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_denormal_inputs(layout, dtype, training):
    """Denormal inputs (1e-40 float32, 1e-310 float64), forward and backward: the reference."""
    tiny = 1e-40 if dtype == F32 else 1e-310
    rng = np.random.default_rng(6)
    for shape in [(2, 3), (2, 3, 1), (3, 2, 17)]:
        if layout == "nsc" and len(shape) == 2:
            continue
        x = arr(tiny * rng.uniform(-1, 1, shape), dtype, layout)
        assert (np.abs(x[x != 0]) < np.finfo(dtype).tiny).all()  # really denormal
        C = shape[1]
        w, b = params(C, dtype)
        rm = np.zeros(C, dtype)
        rv = np.ones(C, dtype)
        what = f"denormal {shape}"
        check_forward(x, w, b, rm, rv, training=training, what=what)
        dy = arr(rng.standard_normal(shape), dtype, layout)
        if training:
            x64 = x.astype(np.float64)
            ax = (0,) + tuple(range(2, x.ndim))
            mean = x64.mean(axis=ax)
            var = ((x64 - mean.reshape((1, -1) + (1,) * (x.ndim - 2))) ** 2).mean(axis=ax)
            check_backward(dy, x, w, mean.astype(dtype), (1 / np.sqrt(var + 1e-5)).astype(dtype),
                           True, what=what)
        else:
            check_backward(dy, x, w, rm, rv, False, what=what)


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_subnormal_mean_halfway_between_two_doubles(backend):
    """A float64 channel of subnormals whose exact mean lies half-way between two doubles (found
    by the fuzz, seed 2026): the batch mean is one of the two (half an ulp off, the best
    possible), and the reference's check accepts that rounding and no more."""
    u = 2.0 ** -1074  # the smallest subnormal: the spacing of every subnormal
    a, b = 12748522678621, -12759796152020  # the values, in units of u
    x = np.array([[[a, b]], [[a, b]]], np.float64) * u  # (N, C, S) = (2, 1, 2)
    exact2 = a + b  # twice the exact mean (the channel is a, b, a, b), in units of u: odd
    assert exact2 % 2 == 1
    lo, hi = (exact2 - 1) // 2 * u, (exact2 + 1) // 2 * u
    y, sm, si = bnsym.batch_norm_forward(x, None, None, None, None, True, 0.1, 1e-5,
                                         backend=backend)
    assert sm[0] in (lo, hi)
    ref = ref_forward(x, None, None, None, None, True, 0.1, 1e-5, F64)
    chk = Check(F64, f"subnormal tie ({backend})")
    chk.close("save_mean", sm, *ref["save_mean"])
    for either in (lo, hi):  # the tie may round either way
        chk.close("save_mean", np.array([either]), *ref["save_mean"])
    r0 = float(ref["save_mean"][0][0])  # the reference rounded to double: lo or hi
    for worse in (r0 - 2 * u, r0 + 2 * u):  # two ulps from it (1.5 from the exact mean) is refused
        with pytest.raises(AssertionError, match="save_mean differs"):
            chk.close("save_mean", np.array([worse]), *ref["save_mean"])


# --------------------------------------------------------------------------- float64 large means

# One shape per schedule: small (one block, one thread), channel groups of short strips over two
# blocks of samples per thread, long strips, rows over two blocks per thread, channels-last rows
# over two blocks per thread. All but the small one are large enough for 2 threads to run
# (test_schedules_are_threaded).
SCHEDULES = [((4, 8), "ncs"), ((128, 8, 8, 8), "ncs"), ((16, 4, 2000), "ncs"), ((40000, 3), "ncs"),
             ((320, 4, 8, 8), "nsc")]
# very short strips, whose element pass runs over a channel group's lanes
WIDE_EXTRA = [((1024, 8, 3, 3), "ncs")]


def test_schedules_are_threaded(min_work):
    """The "2t" cases below run 2 threads: every shape but the small one has at least 2 *
    BNSYM_MIN_WORK elements (a kernel starts no more threads than that allows)."""
    for shape, _ in SCHEDULES[1:] + WIDE_EXTRA:
        assert int(np.prod(shape)) >= 2 * min_work, shape


@pytest.fixture(params=[1, 2], ids=["1t", "2t"])
def threads(request):
    before = bnsym.get_num_threads()
    bnsym.set_num_threads(request.param)
    yield request.param
    bnsym.set_num_threads(before)


@pytest.mark.parametrize("shape,layout", SCHEDULES)
@pytest.mark.parametrize("offset", [1e12, 1e160])
def test_float64_variance_of_a_large_mean(threads, shape, layout, offset):
    """float64 ``offset*(1 + 1e-12*z)``: |mean|/std = 1e12 (at 1e160 the mean's square would
    also overflow). The variance is as accurate as a double sum of the deviations, m * 2**-53
    relative (plus a few roundings of invstd and of this test's squaring), on every schedule
    and thread count: merging block summaries through means rounded to the precision of |mean|
    once cost up to 1e-6 relative here; the mean is |mean| * 2**-52 of the reference."""
    rng = np.random.default_rng(11)
    x = arr(offset * (1 + 1e-12 * rng.standard_normal(shape)), F64, layout)
    _, sm, si = forward(x, None, None, None, None, True, eps=1e-300)
    # the reference: long-double two passes over the deviations from one value of the channel
    # (exact in double: all values lie within a factor 2). Over x itself (ref_stats) long
    # double's 11 more bits leave a mean error of |mean| * 2**-64 * log2(m), whose square moves
    # the variance by ~1e-12 relative here: more than the kernels' error.
    nd = x.ndim
    ax = (0,) + tuple(range(2, nd))
    mean = ref_stats(x)[0]
    d = (x - x[(0, slice(None)) + (0,) * (nd - 2)].reshape((1, -1) + (1,) * (nd - 2))).astype(LD)
    dm = d.mean(axis=ax, keepdims=True)
    var = np.square(d - dm).mean(axis=ax).astype(np.float64)
    m = x.size // shape[1]
    np.testing.assert_allclose(si ** -2.0, var, rtol=(m + 8) * U_ACC, atol=0)
    np.testing.assert_allclose(sm, mean, rtol=4 * U_ACC, atol=0)


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("shape,layout", SCHEDULES)
def test_float64_mean_beyond_sqrt_max(threads, backend, shape, layout):
    """A float64 mean beyond sqrt(DBL_MAX) = 1.3e154 with a finite variance: channels of
    ``1e160*(1 + 1e-9*z)`` (variance ~1e302) and a constant channel 0 of 1e200 (variance 0).
    The first summary merged into an empty one once gave 0 * inf = NaN (the merge's d*d*na*w
    with na = 0), and the NumPy backend squared a mean off by one rounding (1e184**2 = inf):
    NaN or 0 for invstd. Now the reference on the varying channels (forward and backward), and
    on the constant one exactly: mean 1e200, invstd 1/sqrt(eps), y = beta, the running variance
    (1 - momentum) * old."""
    rng = np.random.default_rng(12)
    vals = 1e160 * (1 + 1e-9 * rng.standard_normal(shape))
    vals[:, 0] = 1e200
    x = arr(vals, F64, layout)
    C = shape[1]
    w, b = params(C, F64)
    rm0, rv0 = np.zeros(C), np.ones(C)
    rm, rv = rm0.copy(), rv0.copy()
    y, sm, si = forward(x, w, b, rm, rv, True, backend=backend)
    rest = (slice(None), slice(1, None))
    ref = ref_forward(x[rest], w[1:], b[1:], rm0[1:], rv0[1:], True, 0.1, 1e-5, F64)
    chk = Check(F64, f"1e160 {backend}")
    chk.close("y", y[rest], *ref["y"])
    chk.close("save_mean", sm[1:], *ref["save_mean"])
    chk.close("save_invstd", si[1:], *ref["save_invstd"])
    chk.close("running_mean", rm[1:], *ref["running_mean"])
    chk.close("running_var", rv[1:], *ref["running_var"])
    assert sm[0] == 1e200
    np.testing.assert_allclose(si[0], 1 / np.sqrt(1e-5), rtol=RTOL[F64])
    np.testing.assert_array_equal(y[:, 0], np.broadcast_to(b[0], y[:, 0].shape))
    np.testing.assert_allclose(rv[0], 0.9 * rv0[0], rtol=RTOL[F64])
    dy = arr(rng.standard_normal(shape), F64, layout)
    gi, gw, gb = check_backward(dy, x, w, sm, si, True, what=f"1e160 backward {backend}")
    assert np.isfinite(gi).all() and np.isfinite(gw).all()


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("shape,layout", SCHEDULES)
def test_float64_variance_beyond_double_range(threads, backend, shape, layout):
    """float64 channels whose variance overflows: spreads of 1e200 around 0 (``1e200*z``) and
    values of ``(0.3 .. 0.9)*1e200``, whose deviations from a recentered shift still square to
    inf. A block's ``M2 = s2 - s1*(s1/n)`` was then inf - inf = NaN wherever the deviations'
    sum s1 came out of the order of 1e184 rather than 0 (its square overflows too): NaN for
    invstd, y and the running variance. As PyTorch and the reference: the mean finite and as
    accurate as ever, invstd 0, y = beta, the running variance inf; the backward's
    grad_input and grad_weight 0 (invstd 0) and grad_bias sum(dy)."""
    rng = np.random.default_rng(13)
    vals = 1e200 * rng.standard_normal(shape)
    vals[:, 1] = 1e200 * rng.uniform(0.3, 0.9, vals[:, 1].shape)
    x = arr(vals, F64, layout)
    C = shape[1]
    w, b = params(C, F64)
    rm, rv = np.zeros(C), np.ones(C)
    y, sm, si = forward(x, w, b, rm, rv, True, backend=backend)
    np.testing.assert_allclose(sm, ref_stats(x)[0], rtol=0, atol=1e200 * 2.0**-40)
    np.testing.assert_array_equal(si, np.zeros(C))
    np.testing.assert_array_equal(y, np.broadcast_to(b.reshape((1, C) + (1,) * (len(shape) - 2)), y.shape))
    np.testing.assert_array_equal(rv, np.full(C, np.inf))
    np.testing.assert_allclose(rm, 0.1 * sm, rtol=RTOL[F64])
    dy = arr(rng.standard_normal(shape), F64, layout)
    gi, gw, gb = bnsym.batch_norm_backward(dy, x, w, None, None, sm, si, True, 1e-5, backend=backend)
    np.testing.assert_array_equal(gi, np.zeros_like(gi))
    np.testing.assert_array_equal(gw, np.zeros(C))
    np.testing.assert_allclose(gb, ref_stats(dy)[0] * (dy.size // C), rtol=1e-12, atol=1e-12 * dy.size)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape,layout", SCHEDULES)
def test_float64_output_of_tiny_weight_and_huge_x(threads, shape, layout, training):
    """float64, x ~ 1e100 (invstd ~ 1e-100) and weights ~ 1e-230: y = gamma*xhat ~ 1e-230,
    while the folded coefficient gamma*invstd ~ 1e-330 is 0 in double. The kernels gave y = 0
    (as PyTorch does, whose alpha is invstd*weight); the plan now writes y = gamma*xhat + beta
    and the kernels fold gamma*invstd only for channels where it is in range (a channel of
    ordinary weight beside them keeps the fast form): the reference (long double) on every
    schedule, thread count and mode, and the NumPy backend the same."""
    rng = np.random.default_rng(41)
    C = shape[1]
    x = arr(1e100 * rng.standard_normal(shape), F64, layout)
    w = np.where(np.arange(C) % 2 == 0, 1e-230, 1.5) * rng.uniform(1, 2, C)
    b = np.zeros(C)
    rm = 1e100 * rng.standard_normal(C)
    rv = 1e200 * rng.uniform(0.5, 2, C)
    y, sm, si = check_forward(x, w, b, rm.copy(), rv.copy(), training=training,
                              what=f"tiny weight {shape} {layout} {training}")
    assert (y[:, 0] != 0).all()
    yn = forward(x, w, b, rm.copy(), rv.copy(), training, backend="numpy")[0]
    ref = ref_forward(x, w, b, rm.copy(), rv.copy(), training, 0.1, 1e-5, F64)
    Check(F64, "tiny weight, NumPy backend").close("y", yn, *ref["y"])


@pytest.mark.parametrize("shape,layout", SCHEDULES)
def test_float64_weight_gradient_of_subnormal_dy_and_huge_x(threads, shape, layout):
    """float64, x ~ 1e100*z and dy subnormal (~1e-310), batch statistics: sum(dy*xhat) is
    ~1e-310 and representable. The kernels summed ``dy*invstd*(x - mean)`` evaluated left to
    right, and ``dy*invstd`` ~1e-410 underflowed to 0: grad_weight 0 (found by the fuzz, seed
    5150, once its grad_output could be subnormal). The double pass now takes the plan's
    ``dy*xhat`` with ``xhat = invstd*(x - mean)``, whose factors are of the sum's own scale: the
    reference on every schedule and thread count."""
    rng = np.random.default_rng(31)
    x = arr(1e100 * rng.standard_normal(shape), F64, layout)
    dy = arr(1e-310 * rng.uniform(-1, 1, shape), F64, layout)
    sm, si = forward(x, None, None, None, None, True)[1:]
    gi, gw, gb = check_backward(dy, x, None, sm, si, True, what=f"subnormal dy {shape} {layout}")
    assert (gw != 0).all()


@pytest.mark.parametrize("shape,layout", SCHEDULES + WIDE_EXTRA)
def test_float32_backward_sums_out_of_range_before_their_factor(threads, shape, layout):
    """The float32 backward's float pass sums ``dy*(x - float(mean))`` and multiplies by invstd
    per channel, in double, after the block: those raw sums can leave float's range where
    ``dy*xhat`` does not. Channels side by side in one call: ordinary values; x ~ 1e25*z with
    dy ~ 1e20 (raw terms ~1e45 overflow float: inf); x ~ 1e-15*z with dy ~ 1e-29*(1 + z) and
    eps = 1e-40 (invstd ~ 1e15: raw terms ~1e-44 are subnormal, a few bits each, while the
    old per-value ``invstd*dy*(x - mean)`` is a normal ~1e-29). The kernels must sum both
    extreme channels again in double, judging the raw sums: the rebuilt sum, 1e15 times the
    raw one, looks fine and was 3e-4 off when judged instead. The ordinary channel keeps its
    float sums. The reference, on every schedule and thread count."""
    rng = np.random.default_rng(21)
    C = shape[1]
    z, z2 = rng.standard_normal(shape), rng.standard_normal(shape)
    cshape = (1, C) + (1,) * (len(shape) - 2)
    scale_x = np.array([1.0, 1e25, 1e-15] * C)[:C].reshape(cshape)
    scale_dy = np.array([1.0, 1e20, 1e-29] * C)[:C].reshape(cshape)
    x = arr(scale_x * (z + 0.5), F32, layout)
    dy = arr(scale_dy * (z + 0.3 * z2 + 1), F32, layout)
    x64 = x.astype(np.float64)
    ax = (0,) + tuple(range(2, x.ndim))
    mean = x64.mean(axis=ax)
    var = ((x64 - mean.reshape(cshape)) ** 2).mean(axis=ax)
    a, b = mean.astype(F32), (1 / np.sqrt(var + 1e-40)).astype(F32)
    w, _ = params(C, F32)
    gi, gw, gb = check_backward(dy, x, w, a, b, True, eps=1e-40, what=f"raw sums {shape} {layout}")
    assert np.isfinite(gi).all() and np.isfinite(gw).all() and (gw != 0).all()


@pytest.mark.parametrize("shape,layout", [((2, 3), "ncs"), ((64, 3, 8), "ncs"), ((64, 3, 8), "nsc")])
def test_zero_weight_gradient_beyond_double_range(shape, layout):
    """float64, gamma = 0, and saved statistics far from the batch (mean ~0, invstd 1e6 for x ~
    1e99, dy ~ 1e100): PyTorch's ``xhat * sum(dy*xhat) / m`` overflows double (~1e311), and
    ``0 * inf`` makes its grad_input NaN, as the NumPy backend's. The C kernels never form that
    product and give the exact gradient, 0. The reference (long double where double overflows)
    accepts both, and still refuses a wrong finite value, and NaN in an ordinary channel (found
    by the fuzz, seed 2027)."""
    rng = np.random.default_rng(3)
    scale = np.array([1e-201, 1e99, 1.0]).reshape((1, 3) + (1,) * (len(shape) - 2))
    x = arr(scale * rng.standard_normal(shape), F64, layout)
    dy = arr(1e100 * rng.standard_normal(shape), F64, layout)
    w = np.zeros(3)
    sm, si = np.full(3, -3.2e-203), np.full(3, 1e6)
    ref = ref_backward(dy, x, w, sm, si, True, 1e-12, F64)
    gi_c = bnsym.batch_norm_backward(dy, x, w, None, None, sm, si, True, 1e-12,
                                     (True, False, False))[0]
    gi_n = bnsym.batch_norm_backward(dy, x, w, None, None, sm, si, True, 1e-12,
                                     (True, False, False), backend="numpy")[0]
    assert (gi_c == 0).all()
    assert np.isnan(gi_n[:, 1]).all()
    chk = Check(F64, "zero weight, overflow")
    chk.close("grad_input", gi_c, *ref["grad_input"])
    chk.close("grad_input", gi_n, *ref["grad_input"])
    wrong = gi_c.copy()
    wrong[0, 1] = 1.0
    with pytest.raises(AssertionError):
        chk.close("grad_input", wrong, *ref["grad_input"])
    wrong = gi_c.copy()
    wrong[0, 2] = np.nan
    with pytest.raises(AssertionError):
        chk.close("grad_input", wrong, *ref["grad_input"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_subnormal_inference_output_within_its_roundings(dtype):
    """Inference with subnormal inputs and a zero running mean gives subnormal outputs, where
    the orders of operations in use differ by whole subnormal steps: NumPy's and PyTorch's
    (x - rm)*invstd, then *weight, against the kernels' x*k with k = weight*invstd. The reference's
    relative tolerance underflows to 0 there (the fuzz, seed 5150, failed the NumPy backend by
    one step); it now allows those roundings (``sub_round``): both backends pass, a result
    flushed to zero or 6 steps off does not."""
    rng = np.random.default_rng(5)
    tiny = float(np.finfo(dtype).smallest_subnormal)
    # some hundred subnormal steps: the relative part of the tolerance is below one step
    x = ((1e-43 if dtype == F32 else 1e-321) * rng.uniform(-1, 1, (3, 8))).astype(dtype)
    w = rng.uniform(0.5, 3, 8).astype(dtype)
    rm, rv = np.zeros(8, dtype), rng.uniform(0.5, 2, 8).astype(dtype)
    ref = ref_forward(x, w, None, rm, rv, False, 0.1, 1e-5, dtype)
    chk = Check(dtype, "subnormal inference")
    ys = {be: bnsym.batch_norm(x, rm, rv, w, None, False, 0.1, 1e-5, backend=be)
          for be in ("c", "numpy")}
    for y in ys.values():
        assert (np.abs(y) < np.finfo(dtype).tiny).any()  # subnormal outputs
        chk.close("y", y, *ref["y"])
    if dtype == F64:  # the two orders do differ here (in float32 NumPy rounds only once)
        assert (ys["c"] != ys["numpy"]).any()
    with pytest.raises(AssertionError):
        chk.close("y", np.zeros_like(ys["c"]), *ref["y"])  # flushed to zero
    off = ys["c"].astype(np.float64)
    off[0, 0] += 6 * tiny
    with pytest.raises(AssertionError):
        chk.close("y", off.astype(dtype), *ref["y"])


# --------------------------------------------------------------------------- m = 2, constant


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 1), (2, 5), (1, 3, 2), (2, 17, 1, 1), (1, 2, 1, 2, 1)])
def test_m2_forward_backward(layout, dtype, shape):
    """m = 2 (the smallest training batch): y = +-1/sqrt(1 + eps/var)*gamma + beta; the
    unbiased running variance doubles the biased one; the training gradient is ~0."""
    if layout == "nsc" and len(shape) == 2:
        layout = "ncs"
    rng = np.random.default_rng(7)
    C = shape[1]
    x = arr(rng.standard_normal(shape) * 3, dtype, layout)
    w, b = params(C, dtype)
    rm, rv = rng.uniform(-1, 1, C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    y, sm, si = check_forward(x, w, b, rm, rv, training=True, what=f"m=2 {shape}")
    dy = arr(rng.standard_normal(shape), dtype, layout)
    check_backward(dy, x, w, sm, si, True, what="m=2 backward train")
    check_forward(x, w, b, rm, rv, training=False, what="m=2 eval")
    check_backward(dy, x, w, rm, rv, False, what="m=2 backward eval")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [0.0, 0.1, -3.0, 1e4, 7.25e20])
def test_constant_channel(layout, dtype, value):
    """A constant channel (variance 0) with eps > 0: finite output, exactly beta; save_invstd
    = 1/sqrt(eps); the running variance takes 0 * m/(m-1) = 0; gradients finite."""
    rng = np.random.default_rng(8)
    shape = (4, 3, 5, 3)
    vals = rng.standard_normal(shape)
    vals[:, 1] = value
    x = arr(vals, dtype, layout)
    w, b = params(3, dtype)
    rm, rv = np.zeros(3, dtype), np.ones(3, dtype)
    y, sm, si = check_forward(x, w, b, rm, rv, training=True, what=f"constant {value}")
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y[:, 1], np.broadcast_to(b[1], y[:, 1].shape))
    assert sm[1] == dtype.type(value)
    np.testing.assert_allclose(si[1], 1 / np.sqrt(1e-5), rtol=RTOL[dtype])
    dy = arr(rng.standard_normal(shape), dtype, layout)
    gi, gw, gb = check_backward(dy, x, w, sm, si, True, what="constant channel backward")
    assert np.isfinite(gi).all() and np.isfinite(gw).all()


# --------------------------------------------------------------------------- NaN / inf


def _torch_forward(x, w, b, rm, rv, training, momentum=0.1, eps=1e-5):
    t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a).copy())  # noqa: E731
    trm, trv = t(rm), t(rv)
    y = TF.batch_norm(t(x), trm, trv, t(w), t(b), training, momentum, eps)
    return y.numpy(), (None if trm is None else trm.numpy()), (None if trv is None else trv.numpy())


def _same_class(got, ref, what):
    """NaN where ref is NaN, the same infinity where ref is infinite, finite where finite."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref), err_msg=f"{what}: NaN pattern")
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(ref), err_msg=f"{what}: +inf")
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(ref), err_msg=f"{what}: -inf")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_in_batch_training(layout, dtype, bad):
    """A NaN/inf in channel 1 of a training batch: that channel's outputs are NaN (x - mean
    is NaN or inf - inf), the other channels are exactly as without it; the running
    statistics of channel 1 take the NaN/inf (PyTorch), the others update normally."""
    rng = np.random.default_rng(9)
    shape = (4, 3, 6)
    vals = rng.standard_normal(shape)
    clean = vals.copy()
    vals[2, 1, 3] = bad
    x = arr(vals, dtype, layout)
    w, b = params(3, dtype)
    rm, rv = rng.uniform(-1, 1, 3).astype(dtype), rng.uniform(0.5, 2, 3).astype(dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    y, sm, si = check_forward(x, w, b, rm, rv, training=True, what=f"{bad} in channel 1")
    assert np.isnan(y[:, 1]).all()
    assert np.isfinite(y[:, [0, 2]]).all()
    assert not np.isfinite(rv[1]) and np.isfinite(rv[[0, 2]]).all()
    # the other channels: same values as a batch without the bad value
    rmc, rvc = rm0.copy(), rv0.copy()
    yc, _, _ = forward(arr(clean, dtype, layout), w, b, rmc, rvc, True)
    np.testing.assert_array_equal(y[:, [0, 2]], yc[:, [0, 2]])
    np.testing.assert_array_equal(rm[[0, 2]], rmc[[0, 2]])
    if torch is not None:
        ty, trm, trv = _torch_forward(x, w, b, rm0, rv0, True)
        _same_class(y, ty, "y vs torch")
        _same_class(rv, trv, "running_var vs torch")
        # running_mean: see test_inf_in_batch_mean_is_inf (NaN is tolerated here, as in the fuzz)
        ok = np.isnan(rm) & np.isinf(trm)
        _same_class(np.where(ok, trm, rm), trm, "running_mean vs torch")
        fin = np.isfinite(ty)
        np.testing.assert_allclose(y[fin], ty[fin], rtol=0, atol=1e-5 if dtype == F32 else 1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_inf_in_batch_mean_is_inf(layout, dtype, bad):
    """The mean of a channel holding one +-inf among finite values is +-inf (IEEE sums, and
    PyTorch's save_mean / running_mean); its variance is NaN (inf - inf)."""
    rng = np.random.default_rng(13)
    shape = (4, 3, 6)
    vals = rng.standard_normal(shape)
    vals[1, 0, 2] = bad
    x = arr(vals, dtype, layout)
    rm, rv = np.zeros(3, dtype), np.ones(3, dtype)
    y, sm, si = forward(x, None, None, rm, rv, True)
    assert sm[0] == bad, f"save_mean of the channel holding {bad}: {sm[0]}"
    assert rm[0] == bad, f"running_mean of the channel holding {bad}: {rm[0]}"
    assert np.isnan(rv[0]) and np.isnan(si[0])
    if torch is not None:
        _, trm, trv = _torch_forward(x, None, None, np.zeros(3, dtype), np.ones(3, dtype), True)
        assert trm[0] == bad and np.isnan(trv[0])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_in_batch_eval_and_backward(layout, dtype):
    """Evaluation: only the non-finite elements are non-finite (NaN -> NaN, +inf -> +-inf by
    the sign of gamma). Backward with a NaN in grad_output: the training gradient of that
    channel is NaN (it enters the channel sums), the other channels are finite."""
    rng = np.random.default_rng(10)
    shape = (3, 3, 5)
    vals = rng.standard_normal(shape)
    vals[0, 0, 0], vals[1, 2, 4] = np.nan, np.inf
    x = arr(vals, dtype, layout)
    w = np.array([1.5, 1.0, -2.0], dtype)
    b = np.zeros(3, dtype)
    rm, rv = np.zeros(3, dtype), np.ones(3, dtype)
    y, _, _ = check_forward(x, w, b, rm, rv, training=False, what="eval with NaN/inf")
    assert np.isnan(y[0, 0, 0]) and y[1, 2, 4] == -np.inf
    assert np.isfinite(np.delete(y.reshape(-1), [0, np.ravel_multi_index((1, 2, 4), shape)])).all()
    if torch is not None:
        _same_class(y, _torch_forward(x, w, b, rm, rv, False)[0], "eval y vs torch")
    # backward with NaN in grad_output, finite input
    xf = arr(rng.standard_normal(shape), dtype, layout)
    dyv = rng.standard_normal(shape)
    dyv[2, 1, 1] = np.nan
    dy = arr(dyv, dtype, layout)
    _, sm, si = forward(xf, w, b, None, None, True)
    gi, gw, gb = check_backward(dy, xf, w, sm, si, True, what="NaN in grad_output")
    assert np.isnan(gi[:, 1]).all() and np.isnan(gw[1]) and np.isnan(gb[1])
    assert np.isfinite(gi[:, [0, 2]]).all() and np.isfinite(gw[[0, 2]]).all()
    gi, gw, gb = check_backward(dy, xf, w, rm, rv, False, what="NaN in grad_output (eval)")
    assert np.isnan(gi[2, 1, 1]) and np.isfinite(np.delete(gi.reshape(-1),
                                                           np.ravel_multi_index((2, 1, 1), shape))).all()
    if torch is not None:
        tx = torch.from_numpy(np.ascontiguousarray(xf)).requires_grad_()
        tw = torch.from_numpy(w.copy()).requires_grad_()
        ty = TF.batch_norm(tx, None, None, tw, torch.from_numpy(b.copy()), True, 0.1, 1e-5)
        ty.backward(torch.from_numpy(np.ascontiguousarray(dy)))
        gi_t, _, _ = bnsym.batch_norm_backward(dy, xf, w, None, None, sm, si, True, 1e-5)
        _same_class(gi_t, tx.grad.numpy(), "grad_input vs torch")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_skip_nonfinite_functional(layout, dtype, backend):
    """skip_nonfinite=True: a batch with a non-finite statistic (any channel) leaves both
    running statistics bit-for-bit untouched and issues NonFiniteBatchWarning; the output is
    still computed. A finite batch updates them normally and warns nothing."""
    rng = np.random.default_rng(11)
    shape = (4, 3, 5)
    vals = rng.standard_normal(shape)
    vals[1, 2, 2] = np.nan
    x = arr(vals, dtype, layout)
    rm, rv = rng.uniform(-1, 1, 3).astype(dtype), rng.uniform(0.5, 2, 3).astype(dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    with pytest.warns(NonFiniteBatchWarning):
        y = bnsym.batch_norm(x, rm, rv, training=True, skip_nonfinite=True, backend=backend)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    assert np.isnan(y[:, 2]).all() and np.isfinite(y[:, :2]).all()
    # without the flag: channel 2 takes the NaN, the others are updated
    bnsym.batch_norm(x, rm, rv, training=True, backend=backend)
    assert np.isnan(rm[2]) and np.isnan(rv[2])
    assert (rm[:2] != rm0[:2]).all() and np.isfinite(rm[:2]).all()
    # a finite batch with the flag: updated, no warning
    rm, rv = rm0.copy(), rv0.copy()
    xf = arr(rng.standard_normal(shape), dtype, layout)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteBatchWarning)
        bnsym.batch_norm(xf, rm, rv, training=True, skip_nonfinite=True, backend=backend)
    ref = ref_forward(xf, None, None, rm0, rv0, True, 0.1, 1e-5, dtype)
    Check(dtype, "finite batch, skip flag").close("running_mean", rm, *ref["running_mean"])
    Check(dtype, "finite batch, skip flag").close("running_var", rv, *ref["running_var"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_skip_nonfinite_layer(dtype, bad):
    """The layer: a skipped batch changes neither the running statistics nor
    num_batches_tracked and sets last_batch_skipped; without the flag it behaves as PyTorch
    (the running statistics take the NaN, the count goes up)."""
    rng = np.random.default_rng(12)
    x_ok = rng.standard_normal((4, 3, 5)).astype(dtype)
    x_bad = x_ok.copy()
    x_bad[0, 1, 0] = bad
    bn = bnsym.BatchNorm(3, dtype=dtype, skip_nonfinite=True)
    bn(x_ok)
    state = (bn.running_mean.copy(), bn.running_var.copy(), bn.num_batches_tracked)
    with pytest.warns(NonFiniteBatchWarning):
        y = bn(x_bad)
    assert bn.last_batch_skipped is True
    np.testing.assert_array_equal(bn.running_mean, state[0])
    np.testing.assert_array_equal(bn.running_var, state[1])
    assert bn.num_batches_tracked == state[2] == 1
    assert np.isnan(y[:, 1]).all()
    bn(x_ok)
    assert bn.last_batch_skipped is False and bn.num_batches_tracked == 2
    plain = bnsym.BatchNorm(3, dtype=dtype)
    plain(x_bad)
    assert not np.isfinite(plain.running_var[1]) and plain.num_batches_tracked == 1
    if torch is not None:
        tbn = torch.nn.BatchNorm1d(3).to(torch.float64 if dtype == F64 else torch.float32)
        tbn(torch.from_numpy(x_bad))
        if bad != bad:  # NaN (an inf mean is covered by test_inf_in_batch_mean_is_inf)
            _same_class(plain.running_mean, tbn.running_mean.detach().numpy(), "layer running_mean")
        _same_class(plain.running_var, tbn.running_var.detach().numpy(), "layer running_var")


# --------------------------------------------------------------------------- empty input


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4), (2, 3, 0)])
def test_empty_input(dtype, shape):
    """Documented: batch_norm returns an empty output and leaves the running statistics
    untouched; batch_norm_forward raises ValueError in training; the backward returns an
    empty grad_input and zero grad_weight/grad_bias."""
    x = np.zeros(shape, dtype)
    rm, rv = np.full(3, 0.5, dtype), np.full(3, 2.0, dtype)
    y = bnsym.batch_norm(x, rm, rv, training=True)
    assert y.shape == shape and y.dtype == dtype
    np.testing.assert_array_equal(rm, np.full(3, 0.5, dtype))
    np.testing.assert_array_equal(rv, np.full(3, 2.0, dtype))
    with pytest.raises(ValueError):
        bnsym.batch_norm_forward(x, None, None, rm, rv, True, 0.1, 1e-5)
    np.testing.assert_array_equal(rm, np.full(3, 0.5, dtype))
    gi, gw, gb = bnsym.batch_norm_backward(x, x, np.ones(3, dtype), rm, rv, None, None, False, 1e-5)
    assert gi.shape == shape
    np.testing.assert_array_equal(gw, np.zeros(3, dtype))
    np.testing.assert_array_equal(gb, np.zeros(3, dtype))


@pytest.mark.parametrize("shape,layout", SCHEDULES + WIDE_EXTRA)
@pytest.mark.parametrize("training", [True, False])
def test_float32_coefficient_below_float_range(threads, shape, layout, training):
    """float32, channel 1 with gamma = 1e-30 and a spread of 1e25 (training; a running variance of
    1e36 for inference): its element-pass coefficient gamma*invstd, 1e-55 (1e-48), is 0 as a
    float, while its outputs, about 1e-30 (1e-23), are normal floats. The element pass must run
    that channel in double (every thread of a team told so, whichever thread computed the
    channel), on every schedule (the last one: very short strips, whose element pass otherwise
    runs over a channel group's lanes) and thread count; the other channels as usual."""
    rng = np.random.default_rng(13)
    C = shape[1]
    spread = np.ones(C)
    spread[1] = 1e25
    x = arr(rng.standard_normal(shape) * spread.reshape((1, C) + (1,) * (len(shape) - 2)), F32, layout)
    w = np.ones(C, F32)
    w[1] = 1e-30
    b = np.linspace(-1, 1, C).astype(F32)
    b[1] = 0
    if training:  # (running statistics would overflow float32 with a variance of 1e50)
        y, _, _ = check_forward(x, w, b, None, None, True, what=f"tiny coefficient {shape}")
    else:
        rm = np.zeros(C, F32)
        rv = np.ones(C, F32)
        rv[1] = 1e36
        y, _, _ = check_forward(x, w, b, rm, rv, False, what=f"tiny coefficient {shape}")
    assert (y[:, 1] != 0).all()
