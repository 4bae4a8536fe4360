"""Hypothesis fuzz worker for bnsym, run as a script in a subprocess (see tests/test_fuzz.py).

Running the property tests in a child process means that a crash of the compiled kernels
(segfault, abort) is seen by the parent as a negative return code instead of killing pytest.

    python tests/_fuzz_worker.py --target forward --examples 200 [--seed 0] [--trace FILE]

Targets: ``forward`` (batch_norm / batch_norm_forward), ``backward`` (batch_norm_backward),
``layer`` (bnsym.BatchNorm over several steps). On success the last line printed is
``FUZZ-OK <target> <cases run>``; on a property failure Hypothesis prints the falsifying
example (a plain-data recipe that ``materialize`` turns back into arrays) and the script exits 1.
``--trace FILE``: before each call the recipe is written to FILE, so after a crash the parent
can say which case killed the process.

The property, for every generated call: it either returns the reference answer (an
independent float64/long double NumPy computation written here) within the dtype's tolerance,
or raises TypeError/ValueError; a call that raises leaves every argument bit-for-bit as it was;
a call that returns changes nothing but its outputs (and the running statistics in training).
Every call is made twice, on the C backend and on the NumPy backend, with fresh copies of the
arguments: both must agree on raising or not.
"""

from __future__ import annotations

import argparse
import faulthandler
import sys
import traceback
import warnings

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import bnsym
from bnsym.api import NonFiniteBatchWarning

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)

# --------------------------------------------------------------------------- tolerances
#
# Relative tolerance per dtype, applied to the *scale* of each result (per channel: the size
# of the terms it is made of, e.g. |gamma|*invstd*max|x - mean| + |beta| for y), never to the
# result alone (a result near 0 made of large terms is only known to the terms' precision).
# float32: a result goes through a handful of float32 operations (unit roundoff 2**-24 = 6e-8)
#   and a final rounding; 1e-5 is ~170 ulps of the scale: room for the arithmetic, but 50x
#   tighter than what E[x^2]-E[x]^2, a float32-rounded mean at an offset of 1e4 (5e-4), or a
#   missing term gives.
# float64: the same argument with 2**-53 = 1.1e-16 gives ~1e-14; 1e-12 leaves room for
#   long sums. On top of that every reduction may carry the classic summation error bound
#   ``m * 2**-53 * sum|terms|`` of accumulating m terms in double (U_ACC below).
RTOL = {F32: 1e-5, F64: 1e-12}
U_ACC = 2.0 ** -53
LD = np.longdouble  # the reference accumulates in long double (80-bit on x86-64)

def cl_perm(nd):
    return (0,) + tuple(range(2, nd)) + (1,)


def inv_perm(nd):
    return (0, nd - 1) + tuple(range(1, nd - 1))


# --------------------------------------------------------------------------- reference


def _ax(nd):
    return (0,) + tuple(range(2, nd))


def _cv(v, nd):
    return np.asarray(v).reshape((1, -1) + (1,) * (nd - 2))


def ref_stats(x64):
    """Per-channel mean and biased variance, two passes in long double; plus max|x|.

    The mean and the variance stay in long double: a caller that needs the mean in double also
    gets its rounding to double, which is part of any double result's error (half an ulp; where
    the mean is subnormal, no relative tolerance covers it)."""
    nd = x64.ndim
    xl = x64.astype(LD)
    m = x64.size // x64.shape[1]
    with np.errstate(all="ignore"):
        mean = xl.sum(axis=_ax(nd)) / m
        var = np.square(xl - _cv(mean, nd)).sum(axis=_ax(nd)) / m
        mag = np.abs(x64).max(axis=_ax(nd))
    return mean, var, mag  # long double (var may exceed double range)


def invstd_torch(var, eps):
    """1/sqrt(var + eps) as PyTorch computes it (eps > 0 here, so no 0-division convention)."""
    with np.errstate(all="ignore"):
        return (1.0 / np.sqrt(np.asarray(var, LD) + LD(eps))).astype(np.float64)


class Check:
    """Collects comparisons of results against the reference; raises AssertionError on mismatch."""

    def __init__(self, dtype, what):
        self.dt = dtype
        self.rtol = RTOL[dtype]
        self.what = what

    def close(self, name, got, ref, tol, nan_ok=None):
        """``got`` (array of dtype) vs ``ref`` (float64) with absolute tolerance ``tol``.

        Non-finite results: where the reference (rounded to the dtype) is NaN the result must be
        NaN; where it is +-inf the result must be the same infinity or NaN (never finite, never
        the opposite sign); where it is finite the result must be finite and within ``tol``.
        ``nan_ok``: positions where NaN is also right (PyTorch's formula overflows there in the
        dtype: 0 * inf), besides the finite reference.
        """
        got = np.asarray(got)
        assert got.dtype == self.dt, f"{self.what}: {name} has dtype {got.dtype}, expected {self.dt}"
        ref = np.broadcast_to(np.asarray(ref, np.float64), got.shape)
        tol = np.broadcast_to(np.asarray(tol, np.float64), got.shape)
        with np.errstate(all="ignore"):
            refd = ref.astype(self.dt)
        g = got.astype(np.float64)
        bad = np.zeros(got.shape, bool)
        nan_r = np.isnan(refd)
        bad |= nan_r & ~np.isnan(g)
        inf_r = np.isinf(refd)
        bad |= inf_r & ~(np.isnan(g) | (g == refd))
        fin = np.isfinite(refd)
        bad |= fin & ~np.isfinite(g)
        with np.errstate(all="ignore"):
            err = np.abs(g - ref)
            # plus the final rounding to the dtype (the best possible answer is ref rounded:
            # it matters where the result underflows to a denormal or to 0)
            tol = tol + np.abs(refd.astype(np.float64) - ref)
            chk = fin & np.isfinite(g) & np.isfinite(tol)
            bad |= chk & ~(err <= tol)
        if nan_ok is not None:
            bad &= ~(np.broadcast_to(nan_ok, got.shape) & np.isnan(g))
        if bad.any():
            idx = tuple(int(i[0]) for i in np.nonzero(bad))
            raise AssertionError(
                f"{self.what}: {name} differs from the reference at {int(bad.sum())} of "
                f"{bad.size} positions; first at {idx}: got {g[idx]!r}, reference {ref[idx]!r}, "
                f"tolerance {tol[idx]!r} (dtype {self.dt})"
            )


def ref_forward(x, w, b, rm, rv, training, momentum, eps, dt):
    """Reference forward: dict of (value, tolerance) for y, save_mean, save_invstd, rm, rv."""
    x64 = x.astype(np.float64)
    nd = x.ndim
    C = x.shape[1]
    m = x.size // C if C else 0
    rt = RTOL[dt]
    g = np.ones(C) if w is None else w.astype(np.float64)
    bb = np.zeros(C) if b is None else b.astype(np.float64)
    res = {}
    with np.errstate(all="ignore"):
        if training:
            meanl, varl, mag = ref_stats(x64)
            mean = meanl.astype(np.float64)
            var = varl.astype(np.float64)
            invstd = invstd_torch(varl, eps)
            # summation error bound of the mean (double accumulation), plus the rounding of the
            # exact mean to double: at most half an ulp, bounded by one ulp here (half an ulp of
            # a subnormal is not a double), which only a subnormal mean notices (a tie may round
            # either way)
            dmean = 4 * m * U_ACC * mag + np.where(meanl != mean, np.spacing(np.abs(mean)), 0.0)
            dvar = 4 * m * U_ACC * var + 2 * dmean ** 2
            xmu = x64 - _cv(mean, nd)
            maxxmu = np.abs(xmu).max(axis=_ax(nd))
            # y and its tolerance in long double, y in the paper's order gamma*(invstd*xmu) + beta:
            # no product underflows or overflows where y does not (gamma*invstd ~ 1e-330 for
            # gamma ~ 1e-230 and x ~ 1e100, while y ~ 1e-230)
            il, gl, ag = invstd.astype(LD), g.astype(LD), np.abs(g).astype(LD)
            y = (_cv(gl, nd) * (xmu.astype(LD) * _cv(il, nd)) + _cv(bb.astype(LD), nd)).astype(np.float64)
            dinv_l = LD(0.5) * il ** 3 * dvar
            ytol = (rt * (ag * (il * maxxmu) + np.abs(bb)) + ag * (il * dmean + maxxmu * dinv_l))
            res["y"] = (y, _cv(ytol.astype(np.float64), nd))
            dinv = dinv_l.astype(np.float64)
            # The mean's own scale is |mean| + std: an error of rt*std moves y by rt (relative
            # to its unit scale) and is all a float32 pass over x - shift can promise when
            # the mean is ~0 by cancellation; with an offset (|mean| >> std) this is still
            # rt relative to the mean.
            std = np.sqrt(var)
            mtol = rt * (np.abs(mean) + std) + dmean
            res["save_mean"] = (mean, mtol)
            res["save_invstd"] = (invstd, rt * invstd + dinv)
            if momentum is not None:
                mo = float(momentum)
                if rm is not None:
                    old = rm.astype(np.float64)
                    res["running_mean"] = ((1 - mo) * old + mo * mean,
                                           rt * (1 - mo) * np.abs(old) + mo * mtol)
                if rv is not None:
                    old = rv.astype(np.float64)
                    vu = (varl * LD(m) / LD(m - 1)).astype(np.float64)
                    res["running_var"] = ((1 - mo) * old + mo * vu,
                                          rt * ((1 - mo) * np.abs(old) + mo * np.abs(vu))
                                          + mo * dvar * m / (m - 1))
            res["finite_stats"] = bool(np.isfinite(mean).all() and np.isfinite(var).all())
        else:
            rmean = rm.astype(np.float64)
            invstd = invstd_torch(rv.astype(np.float64), eps)
            xmu = x64 - _cv(rmean, nd)
            # in long double, in the paper's order (as in training)
            y = (_cv(g.astype(LD), nd) * (xmu.astype(LD) * _cv(invstd.astype(LD), nd))
                 + _cv(bb.astype(LD), nd)).astype(np.float64)
            if x.size:
                maxxmu = np.abs(xmu).max(axis=_ax(nd))
            else:
                maxxmu = np.zeros(C)
            # where y is subnormal the relative part underflows to 0, while the orders in use
            # differ there by whole subnormal steps (NumPy's and PyTorch's (x - rm)*invstd, then
            # *weight, +bias; the C kernels' (x - rm)*k, +k0); this reference rounds once
            res["y"] = (y, _cv(rt * (np.abs(g) * (invstd * maxxmu) + np.abs(bb))
                               + sub_round(dt, np.abs(g) + 3), nd))
    return res


def sub_round(dt, n):
    """Tolerance for ``n`` roundings of results in the subnormal range of ``dt``.

    A result below the smallest normal number is rounded to a multiple of the smallest
    subnormal: an absolute error of up to half of it, which a relative tolerance does not cover
    (it underflows to 0 there). ``n`` counts such roundings, each weighted by the factor that
    later multiplies its error (|weight| for a rounding that is then multiplied by the weight),
    over the orders of operations that are compared (the code checked and this reference).
    """
    return float(np.finfo(dt).smallest_subnormal) * (0.5 * n)  # (half of it first is 0)


def ref_backward(dy, x, w, a, b, training, eps, dt):
    """Reference backward: dict of (value, tolerance) for grad_input, grad_weight, grad_bias.

    Training: a, b = save_mean, save_invstd. Evaluation: a, b = running_mean, running_var.
    """
    x64, d64 = x.astype(np.float64), dy.astype(np.float64)
    nd = x.ndim
    C = x.shape[1]
    m = x.size // C if C else 0
    rt = RTOL[dt]
    g = np.ones(C) if w is None else w.astype(np.float64)
    ax = _ax(nd)
    res = {}
    with np.errstate(all="ignore"):
        mean = a.astype(np.float64)
        invstd = b.astype(np.float64) if training else invstd_torch(b.astype(np.float64), eps)
        xhat = (x64 - _cv(mean, nd)) * _cv(invstd, nd)
        t = d64.astype(LD) * xhat.astype(LD)
        sdx = t.sum(axis=ax).astype(np.float64)
        sd = d64.astype(LD).sum(axis=ax).astype(np.float64)
        abs_dx = np.abs(t).sum(axis=ax).astype(np.float64)
        abs_d = np.abs(d64).sum(axis=ax)
        racc = rt + 4 * m * U_ACC
        # each product dy*xhat may round in the subnormal range (m roundings), and the exact sum
        # once more where it is subnormal (this reference's, in long double, then in double)
        res["grad_weight"] = (sdx, racc * abs_dx + sub_round(dt, m + 1))
        res["grad_bias"] = (sd, racc * abs_d)
        if training:
            k = _cv(g * invstd, nd)
            gi = k * (d64 - _cv(sd / m, nd) - xhat * _cv(sdx / m, nd))
            maxd = np.abs(d64).max(axis=ax) if x.size else np.zeros(C)
            maxxh = np.abs(xhat).max(axis=ax) if x.size else np.zeros(C)
            scale = np.abs(g) * invstd * (maxd + abs_d / m + maxxh * abs_dx / m)
            # roundings in the subnormal range: at most 6 in each order in use (the kernels'
            # k0 + kdy*dy + kxhat*(invstd*(x - mean)), NumPy's and this reference's
            # k*(dy - sum/m - xhat*sum/m)), weighted by at most k*(1 + |sum(dy*xhat)|/m); and
            # the kernels' coefficient kxhat = -k*sum(dy*xhat)/m, itself subnormal for a
            # subnormal dy, then multiplied by xhat (up to sqrt(m) with batch statistics)
            amp = np.abs(g) * invstd * (1 + np.abs(sdx) / m)
            tol = _cv(racc * scale + sub_round(dt, 6 * (1 + amp) + maxxh), nd)
            # PyTorch's formula can overflow in double where the gradient does not: gamma = 0 and
            # xhat * sum(dy*xhat) / m beyond DBL_MAX give 0 * inf = NaN (and this reference's
            # tolerance 0 * inf). In long double (up to 1e4932) the product is finite: where
            # double overflowed, the reference and its tolerance are the long-double ones, and
            # where that product, in any order of the operations in use, is near or beyond
            # DBL_MAX, NaN, PyTorch's answer, is accepted too. NaN from NaN inputs
            # stays NaN in long double.
            nan_ok = None
            if not (np.isfinite(gi).all() and np.isfinite(tol).all()):
                dl = d64.astype(LD)
                xhl = (x64.astype(LD) - _cv(mean.astype(LD), nd)) * _cv(invstd.astype(LD), nd)
                sd_l, sdx_l = dl.sum(axis=ax), (dl * xhl).sum(axis=ax)
                gil = _cv((g * invstd).astype(LD), nd) * (dl - _cv(sd_l / m, nd)
                                                          - xhl * _cv(sdx_l / m, nd))
                scl = np.abs(g).astype(LD) * invstd.astype(LD) * (
                    np.asarray(maxd, LD) + np.asarray(abs_d, LD) / m
                    + np.abs(xhl).max(axis=ax) * np.abs(dl * xhl).sum(axis=ax) / m)
                toll = _cv(racc * scl.astype(np.float64), nd)
                with_l = np.isfinite(gil) & ~np.isfinite(gi)
                gi = np.where(with_l, gil.astype(np.float64), gi)
                tol = np.where(~np.isfinite(tol) & np.isfinite(toll), toll, tol)
                # the product in the orders in use: xhat * sum (NumPy backend), then / m, and
                # PyTorch's (x - mean) * (invstd**2 * sum / m)
                big = np.abs(xhl * _cv(sdx_l, nd)) * np.maximum(LD(1), _cv(invstd.astype(LD), nd) / m)
                nan_ok = np.isfinite(gil) & (big > LD(np.finfo(np.float64).max) / 8)
            res["grad_input"] = (gi, tol, nan_ok)
        else:
            gi = d64 * _cv(g * invstd, nd)
            maxd = np.abs(d64).max(axis=ax) if x.size else np.zeros(C)
            # subnormal roundings: the kernels' dy*k, NumPy's and PyTorch's (dy*weight)*invstd,
            # this reference's dy*(weight*invstd)
            res["grad_input"] = (gi, _cv(rt * np.abs(g) * invstd * maxd
                                         + sub_round(dt, invstd + 3), nd))
    return res


# --------------------------------------------------------------------------- value generation

SPECIAL_KINDS = ("normal", "normal", "normal", "offset", "huge", "tiny", "denormal", "constant",
                 "zero", "mixed")


def channel_values(rng, kind, dt, n):
    """n float64 values of a channel, exactly representable in ``dt``."""
    f32 = dt == F32
    if kind == "normal":
        v = rng.uniform(-2, 2) + rng.uniform(0.1, 3) * rng.standard_normal(n)
    elif kind == "offset":
        v = rng.choice([1e4, -1e4, 1e6]) + rng.standard_normal(n)
    elif kind == "huge":
        v = (1e30 if f32 else 1e100) * rng.standard_normal(n)
    elif kind == "tiny":
        v = (1e-30 if f32 else 1e-200) * rng.standard_normal(n)
    elif kind == "denormal":
        v = (1e-40 if f32 else 1e-310) * rng.uniform(-1, 1, n)
    elif kind == "constant":
        v = np.full(n, rng.choice([0.1, -3.0, 1e4, 7.25]))
    elif kind == "zero":
        v = np.zeros(n)
    elif kind == "mixed":
        v = rng.standard_normal(n)
        k = rng.integers(0, n)
        v[k] = rng.choice([1e3, -1e5, 3e7])
    else:
        raise AssertionError(kind)
    return v.astype(dt).astype(np.float64)


def make_values(rng, shape, dt, kinds, specials):
    """Logical float64 values of an (N, C, *spatial) array (channel kinds, injected specials)."""
    C = shape[1]
    moved = (shape[0],) + tuple(shape[2:]) + (C,)
    cnt = int(np.prod(moved[:-1]))
    out = np.empty((cnt, C))
    for c in range(C):
        out[:, c] = channel_values(rng, kinds[c % len(kinds)], dt, cnt)
    for (c, val) in specials:
        if c < C and cnt:
            out[rng.integers(0, cnt), c] = val
    return np.moveaxis(out.reshape(moved), -1, 1)


def place(rng, vals, dt, layout):
    """An array of dtype ``dt`` holding ``vals`` in the memory layout named ``layout``.

    Returns (array, root): root is the allocation it views (to check nothing outside the view
    was written). Layouts: c, cl (channels-last), f (Fortran), step (every other element of a
    bigger buffer), neg (negative strides), bcast (zero strides from np.broadcast_to).
    """
    shape = vals.shape
    nd = len(shape)
    if layout == "c":
        a = np.ascontiguousarray(vals.astype(dt))
        return a, a
    if layout == "cl" and nd > 2:
        base = np.ascontiguousarray(vals.transpose(cl_perm(nd)).astype(dt))
        return base.transpose(inv_perm(nd)), base
    if layout == "f":
        a = np.asfortranarray(vals.astype(dt))
        return a, a
    if layout == "step":
        big = np.full(tuple(2 * s + 1 for s in shape), -777.0, dt)
        v = big[tuple(slice(1, None, 2) for _ in shape)]
        v[...] = vals
        return v, big
    if layout == "neg":
        base = np.empty(shape, dt)
        sl = tuple(slice(None, None, -1) if i % 2 == 0 else slice(None) for i in range(nd))
        v = base[sl]
        v[...] = vals
        return v, base
    if layout == "bcast":
        # zero strides along the batch axis: every sample is the first one
        base = np.ascontiguousarray(vals[:1].astype(dt))
        return np.broadcast_to(base, shape), base
    a = np.ascontiguousarray(vals.astype(dt))
    return a, a


def fresh_like_kernel_layout(x):
    """An output array (filled with -999) in the layout the API documents for out= arrays:
    channels-last when the input is channels-last (and not C-contiguous), else C-contiguous."""
    nd = x.ndim
    if not x.flags.c_contiguous and nd > 2 and x.transpose(cl_perm(nd)).flags.c_contiguous:
        return np.full(tuple(x.shape[i] for i in cl_perm(nd)), -999.0, x.dtype).transpose(
            inv_perm(nd))
    return np.full(x.shape, -999.0, x.dtype)


def chan(rng, dt, C, kind):
    if kind == "none":
        return None
    if kind == "ones":
        v = np.ones(C)
    elif kind == "normal":
        v = rng.uniform(-3, 3, C)
    elif kind == "zero":
        v = np.zeros(C)
    elif kind == "pos":
        v = rng.uniform(0.1, 5, C)
    elif kind == "offset":
        v = rng.choice([1e4, -1e4], C) + rng.uniform(-1, 1, C)
    elif kind == "tinypos":
        v = np.full(C, 1e-30 if dt == F32 else 1e-200)
    elif kind in ("scaled", "scaled_bwd"):  # each channel its own magnitude
        # across most of the dtype's range; for the float64 backward up to 1e150 either way,
        # where gamma*invstd, a coefficient of the backward's own form (and of PyTorch's), stays
        # in the normal range (beyond, it loses bits or underflows: the README says so)
        e = 30 if dt == F32 else (250 if kind == "scaled" else 150)
        v = rng.uniform(-3, 3, C) * 10.0 ** rng.uniform(-e, e, C)
    elif kind == "nan":
        v = rng.uniform(-3, 3, C)
        v[rng.integers(0, C)] = np.nan
    elif kind == "neg":
        v = -rng.uniform(0.5, 3, C)  # a negative running variance: NaN output, as in PyTorch
    else:
        raise AssertionError(kind)
    return v.astype(dt)


# --------------------------------------------------------------------------- strategies

def shapes():
    small = st.tuples(st.integers(1, 5), st.integers(1, 6),
                      st.lists(st.integers(1, 6), min_size=0, max_size=3))
    odd = st.tuples(st.sampled_from([1, 2, 3, 7]), st.sampled_from([1, 3, 17, 33]),
                    st.lists(st.sampled_from([1, 5, 15, 17, 31, 33]), min_size=0, max_size=2))
    m2 = st.sampled_from([(2, 1, []), (2, 3, []), (1, 1, [2]), (1, 4, [2, 1]), (2, 5, [1, 1, 1]),
                          (1, 2, [1, 2, 1])])
    big = st.sampled_from([(4, 5, [33, 31]), (2, 70, [130]), (3, 2, [1000]), (64, 19, [])])
    # at least 2 * BNSYM_MIN_WORK (32768) values, so that 2 and 3 threads run: short strips,
    # rows (2-D, or channels-last), long strips
    threaded = st.sampled_from([(128, 8, [8, 8]), (1100, 64, []), (5, 3, [4400])])
    return st.one_of(small, small, odd, m2, big, threaded).map(lambda t: (t[0], t[1]) + tuple(t[2]))


def specials():
    vals = st.sampled_from([np.nan, np.inf, -np.inf])
    return st.lists(st.tuples(st.integers(0, 40), vals), max_size=2)


MUTATIONS_FWD = [
    "x_dtype_f16", "x_dtype_i32", "x_dtype_c64", "x_dtype_bigendian", "x_list", "x_1d",
    "w_other_dtype", "w_shape", "w_2d", "rm_shape", "rv_other_dtype", "w_list",
    "m1_training", "eval_no_running", "eps_zero", "eps_neg", "eps_nan", "eps_inf", "eps_str",
    "mom_neg", "mom_big", "mom_nan", "mom_str", "mom_none_used", "training_int", "training_str",
    "out_shape", "out_dtype", "out_readonly", "out_strided", "backend_bad", "rm_readonly_train",
    "rm_strided_train", "skip_str",
]
GRAY_FWD = ["rm_is_weight", "rv_is_bias", "rm_is_rv", "rm_view_of_x", "out_overlaps_w",
            "save_mean_is_weight", "out_shifted_x"]


@st.composite
def forward_cases(draw):
    shape = draw(shapes())
    nd = len(shape)
    r = {
        "seed": draw(st.integers(0, 2 ** 32 - 1)),
        "api": draw(st.sampled_from(["batch_norm", "forward"])),
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "shape": shape,
        "x_layout": draw(st.sampled_from(["c", "c", "cl", "f", "step", "neg", "bcast"])),
        "kinds": draw(st.lists(st.sampled_from(SPECIAL_KINDS), min_size=1, max_size=4)),
        "specials": draw(specials()),
        "training": draw(st.booleans()),
        "weight": draw(st.sampled_from(["none", "ones", "normal", "zero", "normal", "nan",
                                        "scaled"])),
        "bias": draw(st.sampled_from(["none", "normal", "zero", "normal", "offset", "scaled"])),
        "rm": draw(st.sampled_from(["normal", "zero", "offset", "none", "nan"])),
        "rv": draw(st.sampled_from(["pos", "pos", "ones", "zero", "tinypos", "none", "neg"])),
        "chan_layout": draw(st.sampled_from(["c", "c", "c", "step", "bcast", "readonly"])),
        "momentum": draw(st.sampled_from([0.1, 0.0, 1.0, 0.5, 0.9, None, 0.3333])),
        "eps": draw(st.sampled_from([1e-5, 1e-3, 0.1, 1.0, 1e-12, 1e-30])),
        "out": draw(st.sampled_from(["none", "none", "fresh", "inplace"])),
        "save": draw(st.sampled_from(["none", "given"])),
        "skip_nonfinite": draw(st.booleans()),
        "threads": draw(st.sampled_from([1, 2, 3])),
        "mutation": draw(st.one_of(st.just(None), st.just(None), st.just(None),
                                   st.sampled_from(MUTATIONS_FWD), st.sampled_from(GRAY_FWD))),
    }
    if nd == 2 and r["x_layout"] == "cl":
        r["x_layout"] = "c"
    if r["rm"] == "none" and r["rv"] != "none":  # mostly neither (one alone is refused)
        r["rv"] = draw(st.sampled_from(["none", "none", r["rv"]]))
    return r


def materialize_forward(r):
    """Fresh arguments for a forward recipe: (args, kwargs, info). Deterministic in r."""
    rng = np.random.default_rng(r["seed"])
    dt = np.dtype(r["dtype"])
    shape = tuple(r["shape"])
    C = shape[1]
    mut = r["mutation"]
    vals = make_values(rng, shape, dt, r["kinds"], r["specials"])
    x, xroot = place(rng, vals, dt, r["x_layout"])
    w = chan(rng, dt, C, r["weight"])
    b = chan(rng, dt, C, r["bias"])
    rm = chan(rng, dt, C, r["rm"])
    rv = chan(rng, dt, C, r["rv"])
    training = r["training"]
    roots = {"input": xroot}

    def lay(a, name):
        if a is None:
            return None
        cl = r["chan_layout"]
        if cl == "step":
            big = np.full(2 * C + 1, -555.0, dt)
            big[1::2] = a
            roots[name] = big
            return big[1::2]
        if cl == "bcast" and C > 1 and name in ("weight", "bias"):
            a2 = np.broadcast_to(a[:1], (C,))
            roots[name] = a[:1]
            return a2
        if cl == "readonly" and name in ("weight", "bias", "running_mean", "running_var"):
            a.flags.writeable = False
        roots[name] = a
        return a

    w, b = lay(w, "weight"), lay(b, "bias")
    # running statistics: contiguous writeable unless a mutation says otherwise (training updates
    # them in place); in evaluation mode the channel layout applies to them too.
    if training:
        for nm, a in (("running_mean", rm), ("running_var", rv)):
            if a is not None:
                roots[nm] = a
    else:
        rm, rv = lay(rm, "running_mean"), lay(rv, "running_var")
    momentum = r["momentum"]
    eps = r["eps"]
    kw = {}
    out = None
    if r["out"] == "fresh":
        out = fresh_like_kernel_layout(x)
        roots["out"] = out
    elif r["out"] == "inplace" and not r["x_layout"] in ("bcast", "step", "neg", "f"):
        out = x
    sm = si = None
    if r["save"] == "given" and r["api"] == "forward" and training:
        sm = np.full(C, -999.0, dt)
        si = np.full(C, -999.0, dt)
        roots["save_mean"], roots["save_invstd"] = sm, si
    skip = r["skip_nonfinite"]
    backend_name = None
    expect_error = False
    # ---- mutations: each makes the call invalid (expect TypeError/ValueError) ----
    if mut is not None and mut in MUTATIONS_FWD:
        expect_error = True
        if mut == "x_dtype_f16":
            x = x.astype(np.float16)
        elif mut == "x_dtype_i32":
            x = np.asarray(x).astype(np.int32)
        elif mut == "x_dtype_c64":
            x = x.astype(np.complex64)
        elif mut == "x_dtype_bigendian":
            x = x.astype(dt.newbyteorder(">"))
        elif mut == "x_list":
            x = x.tolist()
        elif mut == "x_1d":
            x = np.ascontiguousarray(x).reshape(-1)
        elif mut == "w_other_dtype":
            w = (w if w is not None else np.ones(C, dt)).astype(F64 if dt == F32 else F32)
        elif mut == "w_shape":
            w = np.ones(C + 1, dt)
        elif mut == "w_2d":
            w = np.ones((1, C), dt)
        elif mut == "rm_shape":
            rm = np.zeros(C + 2, dt)
            if rv is None:
                rv = np.ones(C, dt)
        elif mut == "rv_other_dtype":
            rv = np.ones(C, F64 if dt == F32 else F32)
            if rm is None:
                rm = np.zeros(C, dt)
        elif mut == "w_list":
            w = [1.0] * C
        elif mut == "m1_training":
            training = True
            x = np.ones((1, C) + (1,) * (len(shape) - 2), dt)
            out = None
        elif mut == "eval_no_running":
            training = False
            rm = None
        elif mut == "eps_zero":
            eps = 0.0
        elif mut == "eps_neg":
            eps = -1e-5
        elif mut == "eps_nan":
            eps = float("nan")
        elif mut == "eps_inf":
            eps = float("inf")
        elif mut == "eps_str":
            eps = "1e-5"
        elif mut == "mom_neg":
            momentum = -0.1
        elif mut == "mom_big":
            momentum = 1.5
        elif mut == "mom_nan":
            momentum = float("nan")
        elif mut == "mom_str":
            momentum = "0.1"
        elif mut == "mom_none_used":
            training, momentum = True, None
            if rm is None:
                rm = np.zeros(C, dt)
            if rv is None:
                rv = np.ones(C, dt)
        elif mut == "training_int":
            training = 1
        elif mut == "training_str":
            training = "yes"
        elif mut == "out_shape":
            out = np.empty(shape[:1] + (C + 1,) + shape[2:], dt)
        elif mut == "out_dtype":
            out = np.empty(shape, F64 if dt == F32 else F32)
        elif mut == "out_readonly":
            out = np.empty(shape, dt)
            out.flags.writeable = False
        elif mut == "out_strided":
            out = np.empty(tuple(2 * s for s in shape), dt)[tuple(slice(None, None, 2) for _ in shape)]
            if all(s == 1 for s in shape):  # a 1-element view is contiguous: make it invalid
                out = np.empty(shape, F64 if dt == F32 else F32)
        elif mut == "backend_bad":
            backend_name = "cuda"
        elif mut == "rm_readonly_train":
            training = True
            rm = np.zeros(C, dt)
            rm.flags.writeable = False
            if rv is None:
                rv = np.ones(C, dt)
            if momentum is None:
                momentum = 0.1
        elif mut == "rm_strided_train":
            training = True
            # a strided view; for C == 1 a 1-element view is contiguous: a wrong shape instead
            rm = np.zeros(2 * C, dt)[::2] if C > 1 else np.zeros(2, dt)
            if rv is None:
                rv = np.ones(C, dt)
            if momentum is None:
                momentum = 0.1
        elif mut == "skip_str":
            skip = "yes"
    gray = mut in GRAY_FWD
    if gray:
        if mut == "rm_is_weight":
            training = True
            rm = np.zeros(C, dt) if rm is None else rm
            w = rm
            momentum = 0.1 if momentum is None else momentum
        elif mut == "rv_is_bias":
            training = True
            rv = np.ones(C, dt) if rv is None else rv
            b = rv
            momentum = 0.1 if momentum is None else momentum
        elif mut == "rm_is_rv":
            training = True
            rm = np.zeros(C, dt) if rm is None else rm
            rv = rm
            momentum = 0.1 if momentum is None else momentum
        elif mut == "rm_view_of_x":
            training = True
            base = np.ascontiguousarray(np.asarray(x, dtype=dt).reshape(shape[0], C, -1)[:, :, 0])
            x = base  # 2-D (N, C), C-contiguous
            rm = x[0]
            momentum = 0.1 if momentum is None else momentum
            if rv is None:
                rv = np.ones(C, dt)
            out = None
        elif mut == "out_overlaps_w":
            wb = np.zeros(int(np.prod(shape)) + C, dt)
            w = wb[:C]
            out = wb[C - 1:C - 1 + int(np.prod(shape))].reshape(shape) if C >= 1 else None
            w[...] = 1.0
        elif mut == "save_mean_is_weight":
            if training and r["api"] == "forward" and w is not None and w.flags.writeable \
                    and w.flags.c_contiguous:
                sm = w
        elif mut == "out_shifted_x":
            if isinstance(x, np.ndarray) and x.flags.c_contiguous and x.size > 1:
                big = np.empty(x.size + 1, dt)
                big[:-1] = x.reshape(-1)
                x = big[:-1].reshape(shape)
                out = big[1:].reshape(shape)
    # m == 1 in training (a valid-looking input that PyTorch rejects)
    if (not expect_error and training is True and isinstance(x, np.ndarray) and x.ndim >= 2
            and x.shape[1] and x.size // x.shape[1] == 1):
        expect_error = True
    if not expect_error and training is False and (rm is None or rv is None):
        expect_error = True
    # one running statistic without the other (PyTorch refuses it in training too)
    if not expect_error and training is True and (rm is None) != (rv is None):
        expect_error = True
    if (not expect_error and training is True and momentum is None
            and (rm is not None or rv is not None)):
        expect_error = True
    args = dict(input=x, weight=w, bias=b, running_mean=rm, running_var=rv, training=training,
                momentum=momentum, eps=eps, out=out, save_mean=sm, save_invstd=si,
                skip_nonfinite=skip, backend=backend_name)
    return args, roots, expect_error, gray


def _snapshot(objs):
    """Bit-exact copies of every array (and its root allocation) reachable from ``objs``."""
    snap = []
    seen = set()
    for name, a in objs:
        if isinstance(a, np.ndarray) and id(a) not in seen:
            seen.add(id(a))
            snap.append((name, a, a.copy(order="K"), a.dtype, a.shape, a.strides))
    return snap


def _unchanged(snap, skip_ids, what):
    for name, a, copy, dtype, shape, strides in snap:
        if id(a) in skip_ids:
            continue
        assert a.dtype == dtype and a.shape == shape and a.strides == strides, \
            f"{what}: {name} changed its dtype/shape/strides"
        if not np.array_equal(a.view(np.uint8) if a.flags.c_contiguous and a.ndim else
                              np.ascontiguousarray(a).view(np.uint8),
                              np.ascontiguousarray(copy).view(np.uint8)):
            raise AssertionError(f"{what}: argument {name} was modified")


TRACE = None
EXCLUDED = set()


def _trace(r):
    if TRACE is not None:
        TRACE.seek(0)
        TRACE.truncate()
        TRACE.write(repr(r) + "\n")
        TRACE.flush()


COUNT = {"cases": 0, "ok": 0, "raised": 0}


def run_forward_case(r, backend):
    """One forward call; returns ('raised', exc) or ('ok', results, args, roots)."""
    args, roots, expect_error, gray = materialize_forward(r)
    be = args.pop("backend") or backend
    objs = [(k, v) for k, v in args.items()] + [("root:" + k, v) for k, v in roots.items()]
    snap = _snapshot(objs)
    bnsym.set_num_threads(r["threads"])
    call_kw = dict(out=args["out"], skip_nonfinite=args["skip_nonfinite"], backend=be)
    with warnings.catch_warnings(record=True) as wlist:
        warnings.simplefilter("always")
        try:
            if r["api"] == "batch_norm":
                y = bnsym.batch_norm(args["input"], args["running_mean"], args["running_var"],
                                     args["weight"], args["bias"], args["training"],
                                     args["momentum"], args["eps"], **call_kw)
                res = (y, None, None)
            else:
                res = bnsym.batch_norm_forward(
                    args["input"], args["weight"], args["bias"], args["running_mean"],
                    args["running_var"], args["training"], args["momentum"], args["eps"],
                    save_mean=args["save_mean"], save_invstd=args["save_invstd"], **call_kw)
        except (TypeError, ValueError) as exc:
            assert str(exc).strip(), f"{be}: empty error message for {type(exc).__name__}"
            _unchanged(snap, set(), f"{be} backend, call raised {type(exc).__name__}: {exc}")
            return ("raised", exc, expect_error, gray)
    return ("ok", res, args, roots, snap, expect_error, gray,
            [w for w in wlist if issubclass(w.category, NonFiniteBatchWarning)])


def check_forward(r):
    _trace(r)
    outc = run_forward_case(r, "c")
    outn = run_forward_case(r, "numpy")
    COUNT["cases"] += 1
    if outc[0] == "raised" or outn[0] == "raised":
        COUNT["raised"] += 1
        assert outc[0] == outn[0], (
            f"backends disagree: C backend {outc[0]} "
            f"({outc[1]!r}), NumPy backend {outn[0]} ({outn[1]!r})"
            if outc[0] == "raised" else
            f"backends disagree: C backend returned, NumPy backend raised {outn[1]!r}")
        if not outc[3]:  # not a gray case: the oracle knows whether it must raise
            assert outc[2], f"valid call raised {type(outc[1]).__name__}: {outc[1]}"
        return
    assert not outc[5], "invalid call (mutation %r) did not raise" % (r["mutation"],)
    COUNT["ok"] += 1
    assert bool(outc[7]) == bool(outn[7]), (
        f"backends disagree on NonFiniteBatchWarning: C {len(outc[7])}, NumPy {len(outn[7])}")
    for tag, out in (("C backend", outc), ("NumPy backend", outn)):
        verify_forward(r, out, f"forward case ({tag})")


def verify_forward(r, out, what):
    _, res, args, roots, snap, _, gray, wlist = out
    x = args["input"]
    dt = x.dtype
    training = args["training"]
    y, sm, si = res
    chk = Check(dt, what)
    # the reference sees the original values (from the snapshot: x may have been overwritten
    # by an in-place call)
    orig = {name: copy for name, a, copy, *_ in snap}
    x0 = orig["input"]
    rm0, rv0 = orig.get("running_mean"), orig.get("running_var")
    refd = ref_forward(x0, orig.get("weight"), orig.get("bias"), rm0, rv0, training,
                       args["momentum"], args["eps"], dt)
    assert isinstance(y, np.ndarray) and y.shape == x.shape, f"{what}: bad output {type(y)}"
    if args["out"] is not None:
        assert y is args["out"], f"{what}: out= was given but another array was returned"
    chk.close("y", y, *refd["y"])
    written = {id(y)}
    if r["api"] == "forward":
        if training:
            chk.close("save_mean", sm, *refd["save_mean"])
            chk.close("save_invstd", si, *refd["save_invstd"])
            if args["save_mean"] is not None:
                assert sm is args["save_mean"] and si is args["save_invstd"]
            written |= {id(sm), id(si)}
        else:
            assert sm.shape == (0,) and si.shape == (0,), f"{what}: eval save_* not empty"
    rm, rv = args["running_mean"], args["running_var"]
    if training and (rm is not None or rv is not None):
        finite = refd["finite_stats"]
        skipped = bool(args["skip_nonfinite"]) and not finite
        if skipped:
            assert wlist, f"{what}: skip_nonfinite with non-finite statistics but no warning"
        else:
            assert not wlist, f"{what}: NonFiniteBatchWarning but the statistics are finite"
        for nm, a in (("running_mean", rm), ("running_var", rv)):
            if a is None:
                continue
            if skipped:
                assert np.array_equal(a.view(np.uint8), orig[nm].view(np.uint8)), \
                    f"{what}: {nm} changed although the batch was skipped"
            else:
                chk.close(nm, a, *refd[nm])
            written.add(id(a))
    # nothing else changed: inputs, parameters, and every root allocation
    skip_ids = set(written)
    if args["out"] is not None and args["out"] is x:
        skip_ids.add(id(x))
        skip_ids.add(id(roots["input"]))
    for k in ("out", "running_mean", "running_var", "save_mean", "save_invstd"):
        if k in roots and roots[k] is not None and id(roots[k]) in {id(o) for o in (y, rm, rv, sm, si)}:
            skip_ids.add(id(roots[k]))
    _unchanged(snap, skip_ids, what)


# --------------------------------------------------------------------------- backward

MUTATIONS_BWD = [
    "dy_shape", "dy_dtype", "dy_list", "x_dtype_i64", "x_1d", "w_shape", "save_none_train",
    "running_none_eval", "sm_dtype", "mask_len", "mask_int", "mask_str", "eps_zero", "eps_str",
    "out_not_tuple", "out_gi_shape", "out_gw_dtype", "out_masked_given", "training_int",
    "backend_bad",
]
GRAY_BWD = ["gi_is_dy", "gw_is_w", "gb_is_sm", "gi_overlaps_x"]


@st.composite
def backward_cases(draw):
    shape = draw(shapes())
    r = {
        "seed": draw(st.integers(0, 2 ** 32 - 1)),
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "shape": shape,
        "x_layout": draw(st.sampled_from(["c", "c", "cl", "f", "step", "neg", "bcast"])),
        "dy_layout": draw(st.sampled_from(["c", "cl", "step", "neg", "bcast", "same"])),
        "kinds": draw(st.lists(st.sampled_from(SPECIAL_KINDS), min_size=1, max_size=4)),
        "specials": draw(specials()),
        "dy_kinds": draw(st.lists(st.sampled_from(["normal", "normal", "zero", "constant",
                                                   "huge", "tiny", "offset", "denormal"]),
                                  min_size=1, max_size=3)),
        "dy_specials": draw(specials()),
        "training": draw(st.booleans()),
        "stats": draw(st.sampled_from(["batch", "batch", "random"])),
        "weight": draw(st.sampled_from(["none", "ones", "normal", "zero", "nan", "scaled_bwd"])),
        "rm": draw(st.sampled_from(["normal", "zero", "offset"])),
        "rv": draw(st.sampled_from(["pos", "ones", "zero", "tinypos", "neg"])),
        "chan_layout": draw(st.sampled_from(["c", "c", "step", "bcast", "readonly"])),
        "eps": draw(st.sampled_from([1e-5, 1e-3, 0.1, 1e-12])),
        "mask": draw(st.tuples(st.booleans(), st.booleans(), st.booleans())),
        "out": draw(st.sampled_from(["none", "none", "fresh"])),
        "threads": draw(st.sampled_from([1, 2, 3])),
        "mutation": draw(st.one_of(st.just(None), st.just(None), st.just(None),
                                   st.sampled_from(MUTATIONS_BWD), st.sampled_from(GRAY_BWD))),
    }
    if len(shape) == 2:
        if r["x_layout"] == "cl":
            r["x_layout"] = "c"
        if r["dy_layout"] == "cl":
            r["dy_layout"] = "c"
    return r


def materialize_backward(r):
    rng = np.random.default_rng(r["seed"])
    dt = np.dtype(r["dtype"])
    shape = tuple(r["shape"])
    nd = len(shape)
    C = shape[1]
    mut = r["mutation"]
    xv = make_values(rng, shape, dt, r["kinds"], r["specials"])
    dyv = make_values(rng, shape, dt, r["dy_kinds"], r["dy_specials"])
    x, xroot = place(rng, xv, dt, r["x_layout"])
    dl = r["x_layout"] if r["dy_layout"] == "same" else r["dy_layout"]
    if dl == "bcast":
        dyv = np.broadcast_to(dyv[:1], shape)
    dy, dyroot = place(rng, dyv, dt, dl)
    roots = {"input": xroot, "grad_output": dyroot}
    training = r["training"]
    w = chan(rng, dt, C, r["weight"])
    if training:
        if r["stats"] == "batch":
            mean, varl, _ = ref_stats(xv)
            a = mean.astype(dt)
            with np.errstate(all="ignore"):
                b = invstd_torch(varl, r["eps"]).astype(dt)
        else:
            a = rng.uniform(-2, 2, C).astype(dt)
            b = rng.uniform(0.1, 3, C).astype(dt)
    else:
        a = chan(rng, dt, C, r["rm"])
        b = chan(rng, dt, C, r["rv"])

    def lay(v, name):
        if v is None:
            return None
        cl = r["chan_layout"]
        if cl == "step":
            big = np.full(2 * C + 1, -555.0, dt)
            big[1::2] = v
            roots[name] = big
            return big[1::2]
        if cl == "bcast" and C > 1:
            v2 = np.broadcast_to(v[:1], (C,))
            roots[name] = v[:1]
            return v2
        if cl == "readonly":
            v.flags.writeable = False
        roots[name] = v
        return v

    w, a, b = lay(w, "weight"), lay(a, "a"), lay(b, "b")
    eps = r["eps"]
    mask = tuple(r["mask"])
    out = None
    if r["out"] == "fresh":
        gi = gw = gb = None
        if mask[0]:
            gi = fresh_like_kernel_layout(x)
        if mask[1]:
            gw = np.full(C, -999.0, dt)
        if mask[2]:
            gb = np.full(C, -999.0, dt)
        out = (gi, gw, gb)
    backend_name = None
    expect_error = False
    if mut in MUTATIONS_BWD:
        expect_error = True
        other = F64 if dt == F32 else F32
        if mut == "dy_shape":
            dy = np.ones(shape[:1] + (C + 1,) + shape[2:], dt)
        elif mut == "dy_dtype":
            dy = np.asarray(dy).astype(other)
        elif mut == "dy_list":
            dy = np.asarray(dy).tolist()
        elif mut == "x_dtype_i64":
            x = np.asarray(x).astype(np.int64)
        elif mut == "x_1d":
            x = np.ascontiguousarray(x).reshape(-1)
        elif mut == "w_shape":
            w = np.ones((C, 1), dt)
        elif mut == "save_none_train":
            training = True
            a = None
        elif mut == "running_none_eval":
            training = False
            b = None
        elif mut == "sm_dtype":
            a = np.zeros(C, other)
        elif mut == "mask_len":
            mask = (True, True)
        elif mut == "mask_int":
            mask = (1, 0, 1)
        elif mut == "mask_str":
            mask = "TTT"
        elif mut == "eps_zero":
            eps = 0.0
        elif mut == "eps_str":
            eps = "small"
        elif mut == "out_not_tuple":
            out = np.empty(shape, dt)
        elif mut == "out_gi_shape":
            mask = (True,) + mask[1:]
            out = (np.empty(shape[:1] + (C + 1,) + shape[2:], dt), None, None)
        elif mut == "out_gw_dtype":
            mask = (mask[0], True, mask[2])
            out = (None, np.empty(C, other), None)
        elif mut == "out_masked_given":
            mask = (mask[0], False, mask[2])
            out = (None, np.empty(C, dt), None)
        elif mut == "training_int":
            training = 0
        elif mut == "backend_bad":
            backend_name = "gpu"
    gray = mut in GRAY_BWD
    if gray:
        if mut == "gi_is_dy" and isinstance(dy, np.ndarray) and dy.flags.writeable and \
                dy.flags.c_contiguous:
            mask = (True,) + mask[1:]
            out = (dy, None, None)
        elif mut == "gw_is_w" and w is not None and w.flags.writeable and w.flags.c_contiguous:
            mask = (mask[0], True, mask[2])
            out = (None, w, None)
        elif mut == "gb_is_sm" and a is not None and a.flags.writeable and a.flags.c_contiguous:
            mask = (mask[0], mask[1], True)
            out = (None, None, a)
        elif mut == "gi_overlaps_x" and x.flags.c_contiguous and x.flags.writeable:
            mask = (True,) + mask[1:]
            out = (x, None, None)
    if training and shape and not expect_error and (a is None or b is None):
        expect_error = True
    args = dict(grad_output=dy, input=x, weight=w, a=a, b=b, training=training, eps=eps,
                mask=mask, out=out, backend=backend_name)
    return args, roots, expect_error, gray


def run_backward_case(r, backend):
    args, roots, expect_error, gray = materialize_backward(r)
    be = args.pop("backend") or backend
    out = args["out"]
    objs = [(k, v) for k, v in args.items() if k != "out"] + \
           [("root:" + k, v) for k, v in roots.items()]
    if isinstance(out, tuple):
        objs += [(f"out[{i}]", o) for i, o in enumerate(out)]
    elif out is not None:
        objs.append(("out", out))
    snap = _snapshot(objs)
    bnsym.set_num_threads(r["threads"])
    tr = args["training"]
    a, b = args["a"], args["b"]
    if tr is True or (tr is not False and tr):
        sm, si, rm, rv = a, b, None, None
    else:
        sm, si, rm, rv = None, None, a, b
    try:
        res = bnsym.batch_norm_backward(args["grad_output"], args["input"], args["weight"], rm, rv,
                                        sm, si, tr, args["eps"], args["mask"], out=out, backend=be)
    except (TypeError, ValueError) as exc:
        assert str(exc).strip(), "empty error message"
        _unchanged(snap, set(), f"{be} backend, backward raised {type(exc).__name__}: {exc}")
        return ("raised", exc, expect_error, gray)
    return ("ok", res, args, roots, snap, expect_error, gray)


def check_backward(r):
    _trace(r)
    outc = run_backward_case(r, "c")
    outn = run_backward_case(r, "numpy")
    COUNT["cases"] += 1
    if outc[0] == "raised" or outn[0] == "raised":
        COUNT["raised"] += 1
        assert outc[0] == outn[0], (
            f"backends disagree: C {outc[0]} ({outc[1]!r}), NumPy {outn[0]} ({outn[1]!r})")
        if not outc[3]:
            assert outc[2], f"valid backward call raised {type(outc[1]).__name__}: {outc[1]}"
        return
    assert not outc[5], "invalid backward call (mutation %r) did not raise" % (r["mutation"],)
    COUNT["ok"] += 1
    for tag, out in (("C backend", outc), ("NumPy backend", outn)):
        verify_backward(r, out, f"backward case ({tag})")


def verify_backward(r, out, what):
    _, res, args, roots, snap, _, gray = out
    x = args["input"]
    dt = x.dtype
    chk = Check(dt, what)
    orig = {name: copy for name, a, copy, *_ in snap}
    refd = ref_backward(orig["grad_output"], orig["input"], orig.get("weight"), orig["a"],
                        orig["b"], args["training"], args["eps"], dt)
    gi, gw, gb = res
    mask = args["mask"]
    outs = args["out"] if args["out"] is not None else (None, None, None)
    written = set()
    if outs[0] is not None and outs[0] is args["grad_output"]:
        # grad_input may be exactly grad_output (in place, documented): grad_output is written
        written |= {id(args["grad_output"]), id(roots["grad_output"])}
    for i, (name, got) in enumerate((("grad_input", gi), ("grad_weight", gw), ("grad_bias", gb))):
        if not mask[i]:
            assert got is None, f"{what}: {name} masked off but returned"
            continue
        assert isinstance(got, np.ndarray), f"{what}: {name} missing"
        if outs[i] is not None:
            assert got is outs[i], f"{what}: out[{i}] given but another array returned"
        chk.close(name, got, *refd[name])
        written.add(id(got))
    _unchanged(snap, written, what)


# --------------------------------------------------------------------------- layer


@st.composite
def layer_cases(draw):
    C = draw(st.sampled_from([1, 2, 3, 5, 17]))
    nd = draw(st.integers(2, 5))
    steps = draw(st.lists(st.tuples(
        st.sampled_from(["train", "train", "eval"]),
        st.integers(1, 4),
        st.sampled_from(["normal", "normal", "offset", "constant", "nanbatch", "infbatch"]),
        st.sampled_from(["c", "cl", "neg"]),
        st.booleans(),  # call backward
    ), min_size=1, max_size=4))
    return {
        "seed": draw(st.integers(0, 2 ** 32 - 1)),
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "C": C, "nd": nd,
        "spatial": draw(st.lists(st.integers(1, 4), min_size=nd - 2, max_size=nd - 2)),
        "affine": draw(st.booleans()),
        "track": draw(st.booleans()),
        "momentum": draw(st.sampled_from([0.1, None, 0.5, 0.0, 1.0])),
        "eps": draw(st.sampled_from([1e-5, 1e-3])),
        "skip": draw(st.booleans()),
        "reuse": draw(st.booleans()),
        "steps": steps,
    }


def check_layer(r):
    """A sequence of train/eval steps on bnsym.BatchNorm against a reference state machine."""
    _trace(r)
    COUNT["cases"] += 1
    rng = np.random.default_rng(r["seed"])
    dt = np.dtype(r["dtype"])
    C, nd = r["C"], r["nd"]
    bn = bnsym.BatchNorm(C, eps=r["eps"], momentum=r["momentum"], affine=r["affine"],
                         track_running_stats=r["track"], dtype=dt,
                         skip_nonfinite=r["skip"], reuse_buffers=r["reuse"])
    if r["affine"]:
        bn.weight[...] = rng.uniform(-2, 2, C).astype(dt)
        bn.bias[...] = rng.uniform(-2, 2, C).astype(dt)
    # reference state
    rmean = np.zeros(C) if r["track"] else None
    rvar = np.ones(C) if r["track"] else None
    nbt = 0
    rt = RTOL[dt]
    for i, (mode, N, kind, layout, do_back) in enumerate(r["steps"]):
        what = f"layer step {i} ({mode}, {kind})"
        chk = Check(dt, what)
        shape = (N, C) + tuple(r["spatial"])
        m = N * int(np.prod(r["spatial"], dtype=np.int64))
        training = mode == "train"
        if training:
            bn.train()
        else:
            bn.eval()
        kinds = {"normal": ["normal"], "offset": ["offset"], "constant": ["constant"],
                 "nanbatch": ["normal"], "infbatch": ["normal"]}[kind]
        sp = [(int(rng.integers(0, C)), np.nan)] if kind == "nanbatch" else \
             [(int(rng.integers(0, C)), np.inf)] if kind == "infbatch" else []
        vals = make_values(rng, shape, dt, kinds, sp)
        x, _ = place(rng, vals, dt, layout if nd > 2 or layout != "cl" else "c")
        x_before = x.copy()
        w0 = None if bn.weight is None else bn.weight.astype(np.float64)
        b0 = None if bn.bias is None else bn.bias.astype(np.float64)
        use_batch = training or not r["track"]
        if use_batch and m == 1:
            state = (None if bn.running_mean is None else bn.running_mean.copy(),
                     None if bn.running_var is None else bn.running_var.copy(),
                     bn.num_batches_tracked)
            try:
                bn(x)
            except ValueError:
                assert (state[0] is None or (state[0].tobytes() == bn.running_mean.tobytes()
                                             and state[1].tobytes() == bn.running_var.tobytes())) \
                    and state[2] == bn.num_batches_tracked, f"{what}: failed call changed the state"
                continue
            raise AssertionError(f"{what}: one value per channel in training did not raise")
        with warnings.catch_warnings(record=True) as wl:
            warnings.simplefilter("always")
            y = bn(x)
        nonfinite_warned = any(issubclass(w.category, NonFiniteBatchWarning) for w in wl)
        assert np.array_equal(x, x_before, equal_nan=True), f"{what}: the input was modified"
        x64 = vals
        if use_batch:
            mom_used = training and r["track"]
            mom = r["momentum"]
            if mom is None and mom_used:
                mom = 1.0 / (nbt + 1)
            refd = ref_forward(x64, w0, b0, None if not mom_used else rmean,
                               None if not mom_used else rvar, True,
                               mom if mom_used else None, r["eps"], dt)
            chk.close("y", y, *refd["y"])
            if mom_used:
                skipped = r["skip"] and not refd["finite_stats"]
                assert bn.last_batch_skipped == skipped, f"{what}: last_batch_skipped wrong"
                assert nonfinite_warned == skipped, f"{what}: warning {nonfinite_warned}"
                if skipped:
                    assert np.allclose(bn.running_mean, rmean.astype(dt), rtol=0, atol=0,
                                       equal_nan=True), f"{what}: running_mean changed on skip"
                    assert np.allclose(bn.running_var, rvar.astype(dt), rtol=0, atol=0,
                                       equal_nan=True), f"{what}: running_var changed on skip"
                else:
                    chk.close("running_mean", bn.running_mean, *refd["running_mean"])
                    chk.close("running_var", bn.running_var, *refd["running_var"])
                    rmean = bn.running_mean.astype(np.float64)  # follow the layer's rounding
                    rvar = bn.running_var.astype(np.float64)
                    nbt += 1
                assert bn.num_batches_tracked == nbt, \
                    f"{what}: num_batches_tracked {bn.num_batches_tracked}, expected {nbt}"
        else:
            refd = ref_forward(x64, w0, b0, bn.running_mean, bn.running_var, False, None,
                               r["eps"], dt)
            chk.close("y", y, *refd["y"])
        if do_back:
            dyv = make_values(rng, shape, dt, ["normal"], [])
            dy = dyv.astype(dt)
            if use_batch:
                # The layer's backward uses the statistics its forward saved, which are known
                # only to within their own tolerance (refd["save_mean"/"save_invstd"], checked
                # exactly in the functional tests). The reference is taken at the exact batch
                # statistics, and the tolerance adds how far the reference moves when the
                # statistics move within their tolerance box (the largest change over its
                # corners: the result is smooth, first order in these tiny perturbations).
                mean, mtol = refd["save_mean"]
                inv, itol = refd["save_invstd"]
                rb = ref_backward(dyv, x64, w0, mean, inv, True, r["eps"], np.dtype(dt))
                extra = {k: 0.0 for k in rb}
                for sgn_m in (-1, 1):
                    for sgn_i in (-1, 1):
                        rc = ref_backward(dyv, x64, w0, mean + sgn_m * mtol, inv + sgn_i * itol,
                                          True, r["eps"], np.dtype(dt))
                        for k in rb:
                            with np.errstate(all="ignore"):
                                extra[k] = np.maximum(extra[k], np.abs(rc[k][0] - rb[k][0]))
                rb = {k: (rb[k][0], rb[k][1] + extra[k]) for k in rb}
            else:
                rb = ref_backward(dyv, x64, w0, bn.running_mean, bn.running_var, False,
                                  r["eps"], np.dtype(dt))
            gi = bn.backward(dy)
            chk.close("grad_input", gi, *rb["grad_input"])
            if r["affine"]:
                chk.close("grad_weight", bn.grad_weight, *rb["grad_weight"])
                chk.close("grad_bias", bn.grad_bias, *rb["grad_bias"])
            else:
                assert bn.grad_weight is None and bn.grad_bias is None
        COUNT["ok"] += 1
    return True


# --------------------------------------------------------------------------- driver


def main(argv=None):
    global TRACE
    p = argparse.ArgumentParser()
    p.add_argument("--target", choices=["forward", "backward", "layer"], required=True)
    p.add_argument("--examples", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trace", default=None)
    p.add_argument("--exclude", default="",
                   help="comma-separated mutations not to generate (to look past a known bug)")
    a = p.parse_args(argv)
    EXCLUDED.update(x for x in a.exclude.split(",") if x)
    faulthandler.enable()
    np.seterr(all="ignore")
    warnings.simplefilter("ignore", RuntimeWarning)  # casts of NaN to int etc. in the recipes
    if a.trace:
        TRACE = open(a.trace, "w")
    strategy, fn = {"forward": (forward_cases(), check_forward),
                    "backward": (backward_cases(), check_backward),
                    "layer": (layer_cases(), check_layer)}[a.target]
    # a fixed seed (not the example database) makes every run try the same cases
    sett = settings(max_examples=a.examples, deadline=None, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck),
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    print_blob=True)

    @sett
    @given(strategy)
    def prop(r):
        if r.get("mutation") in EXCLUDED:
            r = dict(r, mutation=None)
        if "steps" in r and EXCLUDED:
            r = dict(r, steps=[(st_[0], st_[1], "normal" if st_[2] in EXCLUDED else st_[2])
                               + tuple(st_[3:]) for st_ in r["steps"]])
        for key in ("kinds", "dy_kinds"):
            if key in r and EXCLUDED.intersection(r[key]):
                r = dict(r, **{key: [k for k in r[key] if k not in EXCLUDED] or ["normal"]})
        fn(r)

    from hypothesis import seed as hseed
    prop = hseed(a.seed)(prop)
    # warm the compiled module (a build, if any, is not part of a case)
    bnsym.batch_norm(np.ones((2, 1), np.float32), None, None, training=True)
    try:
        prop()
    except Exception:
        traceback.print_exc()
        print(f"FUZZ-FAIL {a.target} after {COUNT['cases']} cases", flush=True)
        return 1
    detail = (f"{COUNT['ok']} layer steps checked" if a.target == "layer" else
              f"{COUNT['ok']} returned, {COUNT['raised']} raised")
    print(f"FUZZ-OK {a.target} {COUNT['cases']} cases ({detail})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
