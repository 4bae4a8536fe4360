"""Shared fixtures: seeded RNG, input factory (both layouts), the compiled kernels (or a skip)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sysconfig

import numpy as np
import pytest

# Tolerances of the compiled kernels against the float64 reference, relative to the scale of
# the compared quantity (max |reference|, at least 1): float64 keeps ~1e-10 (the kernels
# accumulate in double, different summation orders), float32 ~1e-5 (a few ulps of float32 per
# element, sums accumulated in double).
RTOL = {np.float32: 2e-5, np.float64: 1e-10}


def close(actual, expected, dtype, what=""):
    """Assert ``actual`` matches ``expected`` within RTOL[dtype] of the expected scale."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    tol = RTOL[np.dtype(dtype).type] * scale
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:.3g} (scale {scale:.3g})"


def make(shape, dtype=np.float64, layout="ncs", seed=0, loc=0.0, scale=1.0):
    """A random array of ``shape`` (N, C, *spatial) in layout ncs (C-contiguous),
    nsc (channels-last) or strided (neither: a non-contiguous view)."""
    rng = np.random.default_rng(seed)
    nd = len(shape)
    if layout == "ncs":
        return (loc + scale * rng.standard_normal(shape)).astype(dtype)
    if layout == "nsc":
        perm = (0,) + tuple(range(2, nd)) + (1,)
        stored = (loc + scale * rng.standard_normal([shape[p] for p in perm])).astype(dtype)
        return stored.transpose(np.argsort(perm))
    if layout == "strided":
        big = (loc + scale * rng.standard_normal(shape[:-1] + (2 * shape[-1],))).astype(dtype)
        return big[..., ::2]
    raise ValueError(layout)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def kernels():
    """The compiled kernels ``(ffi, lib)``; skips the test when they cannot be built here."""
    from bnsym import build

    try:
        return build.load()
    except build.CompileError as exc:
        first = str(exc).splitlines()[0]
        if "no generated kernels" in first:
            pytest.skip(f"compiled kernels unavailable: {first}")
        raise


@pytest.fixture(scope="session")
def assert_close():
    """``assert_close(actual, expected, dtype, what)``: see :func:`close`."""
    return close


@pytest.fixture(scope="session")
def make_input():
    """``make_input(shape, dtype, layout, seed, loc, scale)``: see :func:`make`."""
    return make


@pytest.fixture(scope="session")
def c_compiler():
    """The C compiler of the C-level tests, as a command list: ``$CC``, else Python's ``CC``, else
    the first of cc, gcc, clang on PATH (its first word only, not Python's build flags); skips
    the test when there is none."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cmd = shlex.split(cc)[:1]
    if cmd and shutil.which(cmd[0]):
        return cmd
    for alt in ("cc", "gcc", "clang"):
        if shutil.which(alt):
            return [alt]
    pytest.skip("no C compiler found ($CC, cc, gcc, clang)")


@pytest.fixture(scope="session")
def min_work():
    """``BNSYM_MIN_WORK`` of the generated kernels: the fewest elements per thread a kernel starts
    a thread for. A test meant to run 2 threads needs an input of at least twice as many."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "generated",
                        "bnsym_forward_train.c")
    with open(path, encoding="utf-8") as fh:
        return int(re.search(r"#define BNSYM_MIN_WORK (\d+)", fh.read()).group(1))
