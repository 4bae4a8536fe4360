"""``bnsym bench``: bnsym's compiled kernels against NumPy, PyTorch's CPU kernels and a copy floor.

Run ``bnsym bench`` (or ``python -m bnsym.bench``) for the full default benchmark, ``--quick`` for
a short smoke run, ``-h`` for the options. What is timed, and how (see also
``shared/baseline/perf-baseline.md``, whose protocol this follows so that the numbers compare):

* Cases: BN1d (256, 1024), (4096, 256); BN2d (32, 64, 56, 56), (8, 256, 28, 28), (64, 16, 32, 32),
  the 4-D ones both contiguous (NCHW) and channels-last (NHWC strides, shape still (N, C, H, W)),
  each in float32 and float64, at 1 and 2 threads. Passes: ``fwd`` (training forward, with the
  running-stat update), ``infer`` (inference forward), ``bwd`` (training backward, all three grads).
* Implementations:
  - **bnsym**: ``bnsym.batch_norm_forward`` / ``batch_norm_backward`` with the compiled C backend and
    preallocated outputs (``out=``), threads set with ``bnsym.set_num_threads``.
  - **numpy**: the same API with ``backend="numpy"``. NumPy runs on one thread, so it is measured
    once, at 1 thread, and that number is shown in the 2-thread rows too.
  - **torch**: ``torch.ops.aten.native_batch_norm.out`` for fwd and infer (preallocated output, it
    writes in place and keeps the channels-last strides) and the functional
    ``torch.ops.aten.native_batch_norm_backward`` for bwd (its ``.out`` form computes then copies and
    is slower, so it gets the functional form as in the baseline), with ``torch.set_num_threads``.
  - **floor**: a C loop ``y[i] = a*x[i] + b`` over the same number of elements and dtype, compiled with
    bnsym's own flags (``bnsym.compiler.compile_args()``), plain at 1 thread, OpenMP at 2.
  - **two-pass floors** (in the re-timing of cells above their floor target only): the memory
    traffic of a training pass without its per-channel work, in whole-array passes: a sum over x,
    then ``y = a*x + b`` (forward); sums of dy and dy*x, then ``dx = a*dy + b*x + c`` (backward).
* Protocol per measurement: GC off; warm-up of at least 3 calls and 50 ms; then at least 25 samples
  and 0.3 s of sampling (at most 2000 samples; the baseline capped at 500), one call per sample with ``time.perf_counter``; the
  figure is the median. Minor page faults per call and the host's steal time are recorded.
* Page faults: glibc serves allocations > 32 MiB with mmap and unmaps them on free, so any op with a
  fresh output that large pays ~20 ms of faults per call. bnsym reuses its outputs through ``out=``;
  torch's backward allocates. Unless ``--malloc default`` is given the benchmark sets glibc's
  ``M_MMAP_MAX`` to 0 and ``M_TRIM_THRESHOLD`` to 2 GiB (the baseline's "steady allocator"), so that
  the functional forms reuse heap memory instead of faulting it in; faults per call are in the JSON.
* Repeats: the second vCPU of this machine is at times taken by the host and an OpenMP barrier then
  waits whole scheduler ticks (4/8/24/48 ms). Every 2-thread cell is therefore measured ``--repeats``
  times (default 3), every 1-thread cell ``--repeats-1t`` times (default 2), in rounds interleaved
  with the other implementations of the same case, and the **minimum of the medians** is reported
  for every implementation alike: a stall or a noisy neighbour only ever inflates a median, so the
  smallest is the estimate of the undisturbed cost. All the medians are kept in the JSON. (NumPy,
  not a target, is measured once.) Each measurement also records how much CPU other processes used
  meanwhile (/proc/stat minus this process): a cell all of whose medians ran while others held the
  CPUs it needed is measured again after a pause (up to 3 times) and, if still contended, marked
  ``~`` in the table.
* Ratios are taken between numbers measured in the same run, close together in time (the machine is
  shared and noisy: treat differences under ~1.3x in a single cell as noise).
* Cells where bnsym's time is above torch's are timed again with bnsym and torch alternating call
  by call in one loop (A B B A, :func:`measure_pair`), so that both see the same machine state; the
  table keeps its numbers (the "never slower" target is judged on them), and the re-timed ratios
  are printed below it and kept in the JSON (``retimed``). Likewise, 1-thread cells whose
  bnsym/floor ratio is above the pass's floor target are timed again with bnsym and the floor
  alternating (``retimed_floor``): the floor targets are judged on the table too, and the
  re-timing tells a miss of the kernel from a slow phase of the host that fell on bnsym's window.
  The training passes' two-pass floors are timed there too, alternating with the copy floor in a
  loop of their own as bnsym does in its: two-pass/floor is the least bnsym/floor that a kernel
  which reads its whole input before it writes can reach in that state, and bnsym/two-pass (the
  quotient of the two ratios) what bnsym's per-channel work and accurate forms add to it.
* The tiny call (4x8 float32, training) is also timed bare: the compiled module's C entry point
  called directly, its checks and the kernel (:func:`bare_tiny_call`); ``batch_norm`` minus that
  is the share of the Python functions around it. bnsym's call, the bare call and torch's
  are timed in turn in one loop, 100 calls of one, then 100 of the next (:func:`time_interleaved`,
  about 1 s in all), and their medians are compared: each runs warm, as in a loop of such calls,
  and all of them see the same phases of the host. This is done in three windows (before the
  cases, after them and at the end; one with ``--quick``), and the tiny target is judged on the
  window with the highest bnsym/torch ratio: a slow phase of the host slows torch's call more
  than bnsym's, so one window could pass there what a quiet phase misses.

The sweep (on by default, ``--no-sweep`` to skip, ``--sweep`` to add it to ``--quick``) times one
layout (NCHW, (2, 32, H, W)) and dtype at one thread for sizes from 4 KiB to 256 MiB per tensor, and
prints nanoseconds per element for fwd / infer / bwd of bnsym and torch and for the floor.

This module is on the runtime side: it imports numpy, cffi, tqdm, bnsym's runtime API, and torch and
matplotlib only when they are installed and asked for; never sympy or jinja2.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.machinery
import importlib.util
import inspect
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bnsym.cli import seed_arg

__all__ = ["cli_bench", "main", "run", "BenchConfig", "DEFAULT_CASES", "QUICK_CASES"]

PASSES = ("fwd", "infer", "bwd")
PASS_LABEL = {"fwd": "fwd-train", "infer": "infer", "bwd": "bwd"}
IMPLS = ("bnsym", "numpy", "torch", "floor")
DTYPES = ("float32", "float64")
DTYPE_SHORT = {"float32": "f32", "float64": "f64"}

DEFAULT_CASES = ((256, 1024), (4096, 256), (32, 64, 56, 56), (8, 256, 28, 28), (64, 16, 32, 32))
QUICK_CASES = ((256, 1024), (8, 256, 28, 28))
TINY_SHAPE = (4, 8)
MOMENTUM = 0.1
EPS = 1e-5

# Targets of the issue: name -> (description, threshold).
TARGETS = {
    "fwd_geomean": 2.0,
    "bwd_geomean": 1.5,
    "floor_fwd": 2.0,
    "floor_bwd": 3.0,
    "floor_infer": 1.25,
    "tiny": 0.5,
    "import_s": 0.150,
    "compile_s": 30.0,
}
# the floor target of each pass (1 thread: bnsym/floor at most TARGETS[...])
FLOOR_TARGET = {"fwd": "floor_fwd", "bwd": "floor_bwd", "infer": "floor_infer"}


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class BenchConfig:
    cases: tuple = DEFAULT_CASES
    dtypes: tuple = DTYPES
    layouts: tuple = ("nchw", "nhwc")
    threads: tuple = (1, 2)
    passes: tuple = PASSES
    torch: bool = True
    numpy: bool = True
    repeats: int = 3  # medians per multi-thread cell (the minimum is kept)
    repeats_1t: int = 2  # medians per 1-thread cell (numpy: always 1)
    min_samples: int = 25
    max_samples: int = 2000
    max_retries: int = 3  # extra rounds for cells whose every median was contended
    wait_quiet: float = 5.0  # before each case and retry: wait up to this long for idle CPUs
    min_time: float = 0.3
    warm_calls: int = 3
    warm_time: float = 0.05
    sweep: bool = True
    sweep_max_bytes: int = 256 << 20
    overheads: bool = True  # tiny-input call, import time
    compile_check: bool = True  # first-use compile time in a subprocess
    malloc_steady: bool = True
    seed: int = 0
    quick: bool = False
    progress: bool | None = None  # None: only on a terminal
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# the floor kernel: y[i] = a*x[i] + b, compiled with bnsym's flags

FLOOR_CDEF = """
void bnsym_floor_f32(const float *x, float *y, ptrdiff_t n, float a, float b, int nthreads);
void bnsym_floor_f64(const double *x, double *y, ptrdiff_t n, double a, double b, int nthreads);
void bnsym_floor_fwd_f32(const float *x, float *y, ptrdiff_t n, float scale, int nthreads);
void bnsym_floor_fwd_f64(const double *x, double *y, ptrdiff_t n, double scale, int nthreads);
void bnsym_floor_bwd_f32(const float *dy, const float *x, float *dx, ptrdiff_t n, float scale, int nthreads);
void bnsym_floor_bwd_f64(const double *dy, const double *x, double *dx, ptrdiff_t n, double scale, int nthreads);
"""

FLOOR_SRC = r"""
#include <stddef.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* The copy floor of the benchmark: one read and one write per element, the least any
   normalization pass can do. Plain loop at 1 thread; an OpenMP static split otherwise. */
#define BNSYM_FLOOR(NAME, T)                                                              \
void NAME(const T *restrict x, T *restrict y, ptrdiff_t n, T a, T b, int nthreads)       \
{                                                                                         \
    if (nthreads > 1) {                                                                   \
        _Pragma("omp parallel for simd num_threads(nthreads) schedule(static)")          \
        for (ptrdiff_t i = 0; i < n; i++) y[i] = a * x[i] + b;                            \
        return;                                                                           \
    }                                                                                     \
    for (ptrdiff_t i = 0; i < n; i++) y[i] = a * x[i] + b;                                \
}

BNSYM_FLOOR(bnsym_floor_f32, float)
BNSYM_FLOOR(bnsym_floor_f64, double)

/* The two-pass floors: the memory traffic of a training pass without its per-channel work, in
   whole-array passes, the least a kernel can do that reads all of its input before it writes the
   first output (every output depends on every sample of its channel).
     forward:  s = sum(x)                            (one read)
               y = x/2 + s*scale                     (one read, one write)
     backward: s1 = sum(dy), s2 = sum(dy*x)          (two reads)
               dx = dy/2 + s2*scale*x + s1*scale     (two reads, one write)
   The sums run in independent lanes (four vectors of 64 bytes); each thread takes one contiguous
   range, sums it, and after a barrier reads the same range again. One thread runs without a team. */
#define BNSYM_FLOOR_LANES(T) (256 / (int)sizeof(T))

/* [*lo, *hi): thread me's range of n values among all, in whole lane blocks */
static void floor_range(ptrdiff_t n, int lanes, int me, int all, ptrdiff_t *lo, ptrdiff_t *hi)
{
    ptrdiff_t per = ((n + all - 1) / all + lanes - 1) / lanes * lanes;
    *lo = per * me < n ? per * me : n;
    *hi = *lo + per < n ? *lo + per : n;
}

#ifdef _OPENMP
#define BNSYM_FLOOR_TEAM(nthreads, CALL)                                                      \
    if (nthreads > 1) {                                                                       \
        _Pragma("omp parallel num_threads(nthreads)")                                        \
        { const int me_ = omp_get_thread_num(), all_ = omp_get_num_threads(); CALL; }         \
    } else {                                                                                  \
        const int me_ = 0, all_ = 1; CALL;                                                    \
    }
#define BNSYM_FLOOR_BARRIER(all) do { if ((all) > 1) { _Pragma("omp barrier") } } while (0)
#else
#define BNSYM_FLOOR_TEAM(nthreads, CALL) { const int me_ = 0, all_ = 1; (void)(nthreads); CALL; }
#define BNSYM_FLOOR_BARRIER(all) ((void)(all))
#endif

#define BNSYM_PASS_FLOORS(SUF, T)                                                             \
static void floor_fwd_part_##SUF(const T *restrict x, T *restrict y, ptrdiff_t n, T scale,    \
                                 T *part, int me, int all)                                    \
{                                                                                             \
    enum { L = BNSYM_FLOOR_LANES(T) };                                                        \
    ptrdiff_t lo, hi, i;                                                                      \
    floor_range(n, L, me, all, &lo, &hi);                                                     \
    T acc[L] = {0}, s = 0;                                                                    \
    for (i = lo; i + L <= hi; i += L)                                                         \
        for (int j = 0; j < L; j++) acc[j] += x[i + j];                                       \
    for (; i < hi; i++) acc[0] += x[i];                                                       \
    for (int j = 0; j < L; j++) s += acc[j];                                                  \
    part[me] = s;                                                                             \
    BNSYM_FLOOR_BARRIER(all);                                                                 \
    s = 0;                                                                                    \
    for (int k = 0; k < all; k++) s += part[k];                                               \
    const T b = s * scale;                                                                    \
    for (i = lo; i < hi; i++) y[i] = (T)0.5 * x[i] + b;                                       \
}                                                                                             \
void bnsym_floor_fwd_##SUF(const T *restrict x, T *restrict y, ptrdiff_t n, T scale,          \
                          int nthreads)                                                       \
{                                                                                             \
    T part[64];                                                                               \
    if (nthreads > 64) nthreads = 64;                                                         \
    BNSYM_FLOOR_TEAM(nthreads, floor_fwd_part_##SUF(x, y, n, scale, part, me_, all_))         \
}                                                                                             \
static void floor_bwd_part_##SUF(const T *restrict dy, const T *restrict x, T *restrict dx,   \
                                 ptrdiff_t n, T scale, T *p1, T *p2, int me, int all)         \
{                                                                                             \
    enum { L = BNSYM_FLOOR_LANES(T) };                                                        \
    ptrdiff_t lo, hi, i;                                                                      \
    floor_range(n, L, me, all, &lo, &hi);                                                     \
    T a1[L] = {0}, a2[L] = {0}, s1 = 0, s2 = 0;                                               \
    for (i = lo; i + L <= hi; i += L)                                                         \
        for (int j = 0; j < L; j++) { a1[j] += dy[i + j]; a2[j] += dy[i + j] * x[i + j]; }    \
    for (; i < hi; i++) { a1[0] += dy[i]; a2[0] += dy[i] * x[i]; }                            \
    for (int j = 0; j < L; j++) { s1 += a1[j]; s2 += a2[j]; }                                 \
    p1[me] = s1;                                                                              \
    p2[me] = s2;                                                                              \
    BNSYM_FLOOR_BARRIER(all);                                                                 \
    s1 = s2 = 0;                                                                              \
    for (int k = 0; k < all; k++) { s1 += p1[k]; s2 += p2[k]; }                               \
    const T b = s2 * scale, c = s1 * scale;                                                   \
    for (i = lo; i < hi; i++) dx[i] = (T)0.5 * dy[i] + b * x[i] + c;                          \
}                                                                                             \
void bnsym_floor_bwd_##SUF(const T *restrict dy, const T *restrict x, T *restrict dx,         \
                           ptrdiff_t n, T scale, int nthreads)                                \
{                                                                                             \
    T p1[64], p2[64];                                                                         \
    if (nthreads > 64) nthreads = 64;                                                         \
    BNSYM_FLOOR_TEAM(nthreads, floor_bwd_part_##SUF(dy, x, dx, n, scale, p1, p2, me_, all_))  \
}

BNSYM_PASS_FLOORS(f32, float)
BNSYM_PASS_FLOORS(f64, double)
"""


def _cache_root() -> Path:
    env = os.environ.get("BNSYM_CACHE_DIR")
    if env:
        return Path(env)
    try:  # the package's own cache location, when bnsym.build provides one
        from bnsym import build as _build  # noqa: PLC0415

        for name in ("cache_dir", "get_cache_dir"):
            fn = getattr(_build, name, None)
            if callable(fn):
                return Path(fn())
    except Exception:  # noqa: BLE001 - any failure: fall back to the XDG default
        pass
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bnsym"


def _floor_flags():
    from bnsym import compiler  # noqa: PLC0415 - runtime-side module, no sympy

    return compiler.compile_args(), compiler.link_args(), compiler.cpu_key()


def load_floor():
    """Build (once, cached by a hash of source, flags and CPU) and load the floor module."""
    import cffi  # noqa: PLC0415

    cflags, ldflags, cpu = _floor_flags()
    key = hashlib.sha256(
        "\0".join([FLOOR_CDEF, FLOOR_SRC, " ".join(cflags), " ".join(ldflags), cpu,
                   sys.version, cffi.__version__]).encode()
    ).hexdigest()[:16]
    modname = f"_bnsym_floor_{key}"
    folder = _cache_root() / "bench"
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    target = folder / (modname + suffix)
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        ffi = cffi.FFI()
        ffi.cdef(FLOOR_CDEF)
        ffi.set_source(modname, FLOOR_SRC, extra_compile_args=cflags, extra_link_args=ldflags)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
            built = ffi.compile(tmpdir=tmp, verbose=False)
            os.replace(built, target)  # atomic: a concurrent builder writes the same bytes
    if modname in sys.modules:
        mod = sys.modules[modname]
    else:
        spec = importlib.util.spec_from_file_location(modname, target)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules[modname] = mod
    return mod.ffi, mod.lib


# --------------------------------------------------------------------------------------------
# environment helpers


def _set_malloc_steady() -> bool:
    """glibc: no mmap for big blocks, no trimming (the baseline's ``--malloc-steady``)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes  # noqa: PLC0415

        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_max = -1, -4
        ok1 = libc.mallopt(m_mmap_max, 0)
        ok2 = libc.mallopt(m_trim_threshold, ctypes.c_int(2**31 - 1))
        return bool(ok1 and ok2)
    except Exception:  # noqa: BLE001 - not glibc
        return False


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _read_cpu() -> tuple[int, int] | None:
    """(busy ticks, all ticks) over all CPUs from /proc/stat (busy: user+nice+system+irq+softirq)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        return v[0] + v[1] + v[2] + v[5] + v[6], sum(v[:8])
    except (OSError, ValueError, IndexError):
        return None


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def contended(m: dict, threads: int) -> bool:
    """Whether other processes used the CPUs this measurement needed (see ``measure``)."""
    others = m.get("others_cpu")
    if others is None:
        return False
    free = max((os.cpu_count() or 1) - threads, 0)
    return others > free + 0.25


def wait_quiet(max_wait: float, threshold: float = 0.25, interval: float = 0.5) -> float:
    """Wait (at most ``max_wait`` s) until other processes use < ``threshold`` CPUs; return the wait."""
    if max_wait <= 0:
        return 0.0
    t0 = time.perf_counter()
    while True:
        c0, s0, a = _read_cpu(), _self_cpu(), time.perf_counter()
        if c0 is None:
            return 0.0
        time.sleep(interval)
        c1, s1, b = _read_cpu(), _self_cpu(), time.perf_counter()
        others = max(0.0, (c1[0] - c0[0]) / _CLK_TCK - (s1 - s0)) / (b - a)
        if others < threshold or b - t0 >= max_wait:
            return b - t0


def _read_steal() -> tuple[int, int]:
    """(steal ticks, total ticks) of the aggregated cpu line of /proc/stat, or (0, 0)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            parts = fh.readline().split()
        vals = [int(v) for v in parts[1:]]
        steal = vals[7] if len(vals) > 7 else 0
        return steal, sum(vals[:8])
    except (OSError, ValueError, IndexError):
        return 0, 0


def _minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# --------------------------------------------------------------------------------------------
# timing


def measure(fn, cfg: BenchConfig, *, max_samples: int | None = None) -> dict:
    """Median seconds per call of ``fn()``, with the protocol described in the module docstring.

    Also records ``others_cpu``: CPU-seconds per second that *other* processes used meanwhile
    (all CPUs' busy time from /proc/stat minus this process's own CPU time), over the warm-up and
    sampling window; None when the window is too short for the 1/CLK_TCK accounting granularity.
    """
    max_samples = max_samples or cfg.max_samples
    perf = time.perf_counter
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        cpu0, self0 = _read_cpu(), _self_cpu()
        start = perf()
        calls = 0
        while calls < cfg.warm_calls or perf() - start < cfg.warm_time:
            fn()
            calls += 1
        flt0 = _minflt()
        st0 = _read_steal()
        times = []
        t0 = perf()
        while True:
            a = perf()
            fn()
            b = perf()
            times.append(b - a)
            n = len(times)
            if n >= max_samples or (n >= cfg.min_samples and b - t0 >= cfg.min_time):
                break
        flt1 = _minflt()
        st1 = _read_steal()
        end = perf()
        cpu1, self1 = _read_cpu(), _self_cpu()
    finally:
        if was_enabled:
            gc.enable()
    total = st1[1] - st0[1]
    window = end - start
    others = None
    if cpu0 is not None and cpu1 is not None and window >= 0.08:
        busy = (cpu1[0] - cpu0[0]) / _CLK_TCK
        others = max(0.0, busy - (self1 - self0)) / window
    return {
        "others_cpu": others,
        "median": float(np.median(times)),
        "min": float(min(times)),
        "samples": len(times),
        "faults_per_call": (flt1 - flt0) / len(times),
        "steal_frac": ((st1[0] - st0[0]) / total) if total > 0 else 0.0,
    }


def time_interleaved(fns, *, min_samples=25, min_time=0.3, max_samples=2000, warm_calls=3,
                     warm_time=0.05, batch=1):
    """Samples of each function of ``fns`` taken in turn in one loop, in the order A B C, C B A
    (repeated), so that all of them see the same machine state: a list of the times of each, in
    seconds per call.

    ``batch``: calls per sample, back to back (the sample is their mean), so that a call of a few
    microseconds is timed warm, as in a loop of such calls, and still alternates with the others
    every few hundred microseconds. Warm-up: each function at least ``warm_calls`` samples and
    ``warm_time`` s; then at least ``min_samples`` of each and ``min_time`` s in all, at most
    ``max_samples`` of each. GC off.
    """
    fns = list(fns)
    perf = time.perf_counter
    was = gc.isenabled()
    gc.disable()
    try:
        t0 = perf()
        n = 0
        reps = range(batch)
        while n < warm_calls or perf() - t0 < warm_time:
            for f in fns:
                for _ in reps:
                    f()
            n += 1
        times = [[] for _ in fns]
        forward = list(zip(fns, times))
        backward = forward[::-1]
        first = times[0]
        t0 = perf()
        while True:
            for f, t in (forward if len(first) % 2 == 0 else backward):
                if batch == 1:
                    s = perf()
                    f()
                    t.append(perf() - s)
                else:
                    s = perf()
                    for _ in reps:
                        f()
                    t.append((perf() - s) / batch)
            if len(first) >= max_samples or (len(first) >= min_samples and perf() - t0 >= min_time):
                return times
    finally:
        if was:
            gc.enable()


def time_pair(fa, fb, *, min_samples=25, min_time=0.3, max_samples=2000, warm_calls=3, warm_time=0.05):
    """:func:`time_interleaved` of two functions, in the order A B B A (repeated): (times of a,
    times of b), seconds."""
    ta, tb = time_interleaved((fa, fb), min_samples=min_samples, min_time=min_time,
                              max_samples=max_samples, warm_calls=warm_calls, warm_time=warm_time)
    return ta, tb


def measure_pair(fa, fb, cfg: BenchConfig) -> dict:
    """:func:`time_pair` with the benchmark's protocol (``2 * cfg.min_time`` s in all, so that each
    gets about a cell's sampling time): medians and minima of each, and their ratios A/B.

    The table's cells time one implementation at a time, a few seconds apart: on a shared host a
    cell can move by 1.3x between two such windows. Alternating call by call is what decides
    whether A is really slower than B.
    """
    ta, tb = time_pair(fa, fb, min_samples=cfg.min_samples, min_time=2 * cfg.min_time,
                       max_samples=cfg.max_samples, warm_calls=cfg.warm_calls,
                       warm_time=cfg.warm_time)
    ma, mb = float(np.median(ta)), float(np.median(tb))
    na, nb = float(min(ta)), float(min(tb))
    return {"a_median": ma, "b_median": mb, "a_min": na, "b_min": nb, "samples": len(ta),
            "ratio_median": _ratio(ma, mb), "ratio_min": _ratio(na, nb)}


# --------------------------------------------------------------------------------------------
# implementations


def case_name(shape) -> str:
    return "x".join(str(s) for s in shape)


def parse_case(text: str) -> tuple:
    parts = text.lower().replace("(", "").replace(")", "").replace(",", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad case {text!r}: expected NxC or NxCxHxW") from None
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"bad case {text!r}: expected NxC or NxCxHxW")
    return shape


def layouts_for(shape, wanted) -> list[str]:
    if len(shape) == 4:
        return [lay for lay in ("nchw", "nhwc") if lay in wanted]
    return ["nc" if len(shape) == 2 else "contig"]


LAYOUT_LABEL = {"nchw": "NCHW", "nhwc": "NHWC", "nc": "NC", "contig": "contig"}


def alloc(shape, dtype, layout) -> np.ndarray:
    """An uninitialised (N, C, ...) array; channels-last strides for ``nhwc``."""
    if layout == "nhwc":
        n, c, h, w = shape
        return np.empty((n, h, w, c), dtype=dtype).transpose(0, 3, 1, 2)
    return np.empty(shape, dtype=dtype)


def _filter_kwargs(fn, kwargs: dict) -> dict:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def _load_api():
    """bnsym's runtime API module, or (None, reason)."""
    try:
        import bnsym  # noqa: PLC0415

        api = type("API", (), {})()
        for name in ("batch_norm", "batch_norm_forward", "batch_norm_backward", "set_num_threads"):
            setattr(api, name, getattr(bnsym, name))
        return api, None
    except Exception as exc:  # noqa: BLE001
        return None, f"bnsym API unavailable ({type(exc).__name__}: {exc})"


class Data:
    """Inputs and preallocated outputs of one (shape, dtype, layout) configuration."""

    def __init__(self, shape, dtype, layout, seed):
        rng = np.random.default_rng(seed)
        self.shape, self.dtype, self.layout = shape, np.dtype(dtype), layout
        c = shape[1]
        self.x = alloc(shape, dtype, layout)
        self.x[...] = rng.standard_normal(shape) * 1.5 + 0.25
        self.dy = alloc(shape, dtype, layout)
        self.dy[...] = rng.standard_normal(shape)
        self.w = (1.0 + 0.1 * rng.standard_normal(c)).astype(dtype)
        self.b = (0.1 * rng.standard_normal(c)).astype(dtype)
        self.rm0 = (0.1 * rng.standard_normal(c)).astype(dtype)
        self.rv0 = (1.0 + 0.1 * rng.random(c)).astype(dtype)
        self.numel = self.x.size
        self.nbytes = self.x.nbytes


def bnsym_callables(api, d: Data, backend: str):
    """(callables per pass, check outputs) for bnsym's API with ``backend``."""
    rm, rv = d.rm0.copy(), d.rv0.copy()
    y = alloc(d.shape, d.dtype, d.layout)
    dx = alloc(d.shape, d.dtype, d.layout)
    dw = np.empty_like(d.w)
    db = np.empty_like(d.b)
    fwd_fn, bwd_fn = api.batch_norm_forward, api.batch_norm_backward
    fkw = _filter_kwargs(fwd_fn, {"out": y, "backend": backend})
    # training forward: save_mean / save_invstd preallocated too (as torch's .out gets them)
    tkw = dict(fkw, **_filter_kwargs(fwd_fn, {"save_mean": np.empty_like(d.w),
                                              "save_invstd": np.empty_like(d.w)}))
    bkw_full = {"out": (dx, dw, db), "backend": backend}
    bkw = _filter_kwargs(bwd_fn, bkw_full)
    x, w, b, dy = d.x, d.w, d.b, d.dy

    # Reference outputs from fresh running stats (for the cross-check), then the save_* for bwd.
    res = fwd_fn(x, w, b, rm, rv, True, MOMENTUM, EPS, **tkw)
    y_train = np.array(res[0], copy=True)
    sm, si = np.array(res[1], copy=True), np.array(res[2], copy=True)
    rm_after, rv_after = rm.copy(), rv.copy()
    rm[...], rv[...] = d.rm0, d.rv0
    res = fwd_fn(x, w, b, rm, rv, False, MOMENTUM, EPS, **fkw)
    y_inf = np.array(res[0], copy=True)
    mask = (True, True, True)
    try:
        grads = bwd_fn(dy, x, w, rm, rv, sm, si, True, EPS, mask, **bkw)
    except (TypeError, ValueError):  # out= takes only grad_input
        if "out" not in bkw:
            raise
        bkw = dict(bkw, out=dx)
        grads = bwd_fn(dy, x, w, rm, rv, sm, si, True, EPS, mask, **bkw)
    check = {
        "y_train": y_train, "save_mean": sm, "save_invstd": si, "rm": rm_after, "rv": rv_after,
        "y_infer": y_inf, "dx": np.array(grads[0], copy=True), "dw": np.array(grads[1], copy=True),
        "db": np.array(grads[2], copy=True),
    }
    fns = {
        "fwd": lambda: fwd_fn(x, w, b, rm, rv, True, MOMENTUM, EPS, **tkw),
        "infer": lambda: fwd_fn(x, w, b, rm, rv, False, MOMENTUM, EPS, **fkw),
        "bwd": lambda: bwd_fn(dy, x, w, rm, rv, sm, si, True, EPS, mask, **bkw),
    }
    return fns, check


def torch_callables(torch, d: Data):
    """(callables per pass, check outputs) for PyTorch's CPU kernels (aten ops, no autograd)."""
    aten = torch.ops.aten
    x = torch.from_numpy(d.x)  # shares memory; channels-last strides carry over
    dy = torch.from_numpy(d.dy)
    w, b = torch.from_numpy(d.w), torch.from_numpy(d.b)
    rm, rv = torch.from_numpy(d.rm0.copy()), torch.from_numpy(d.rv0.copy())
    y = torch.from_numpy(alloc(d.shape, d.dtype, d.layout))
    c = d.shape[1]
    sm_o = torch.empty(c, dtype=x.dtype)
    si_o = torch.empty(c, dtype=x.dtype)
    with torch.no_grad():
        _, sm, si = aten.native_batch_norm(x, w, b, rm, rv, True, MOMENTUM, EPS)
        y_train = _.numpy().copy()
        rm_after, rv_after = rm.numpy().copy(), rv.numpy().copy()
        rm.copy_(torch.from_numpy(d.rm0))
        rv.copy_(torch.from_numpy(d.rv0))
        y_inf = aten.native_batch_norm(x, w, b, rm, rv, False, MOMENTUM, EPS)[0].numpy().copy()
        g = aten.native_batch_norm_backward(dy, x, w, rm, rv, sm, si, True, EPS, [True, True, True])
    check = {
        "y_train": y_train, "save_mean": sm.numpy().copy(), "save_invstd": si.numpy().copy(),
        "rm": rm_after, "rv": rv_after, "y_infer": y_inf, "dx": g[0].numpy().copy(),
        "dw": g[1].numpy().copy(), "db": g[2].numpy().copy(),
    }
    nbo = aten.native_batch_norm.out
    nbb = aten.native_batch_norm_backward
    mask = [True, True, True]
    fns = {
        "fwd": lambda: nbo(x, w, b, rm, rv, True, MOMENTUM, EPS, out=y, save_mean=sm_o, save_invstd=si_o),
        "infer": lambda: nbo(x, w, b, rm, rv, False, MOMENTUM, EPS, out=y, save_mean=sm_o, save_invstd=si_o),
        "bwd": lambda: nbb(dy, x, w, rm, rv, sm, si, True, EPS, mask),
    }
    return fns, check


def floor_callable(floor, d: Data, threads: int):
    """The copy floor ``y = a*x + b`` over ``d``'s input (:func:`floor_callables`' ``"floor"``)."""
    return floor_callables(floor, d, threads)["floor"]


def floor_callables(floor, d: Data, threads: int) -> dict:
    """The floors over ``d``'s arrays: ``"floor"``, the copy floor, and the two-pass floors of the
    training passes, ``"fwd"`` (a sum over x, then ``y = x/2 + b``) and ``"bwd"`` (sums of dy and
    dy*x, then ``dx = dy/2 + b*x + c``), which write an output of their own, as bnsym does beside
    the copy floor's. The inference pass has no floor of its own: it is the copy floor's traffic."""
    ffi, lib = floor
    y, y2 = np.empty(d.numel, dtype=d.dtype), np.empty(d.numel, dtype=d.dtype)
    flat = [np.ascontiguousarray(a.reshape(-1)) if not a.flags.c_contiguous else a for a in (d.x, d.dy)]
    ctype, suf = ("float[]", "f32") if d.dtype == np.float32 else ("double[]", "f64")
    px, pdy, py, py2 = (ffi.from_buffer(ctype, a) for a in (flat[0], flat[1], y, y2))
    copy, fwd, bwd = (getattr(lib, f"bnsym_floor_{k}{suf}") for k in ("", "fwd_", "bwd_"))
    n = d.numel
    keep = (flat, y, y2, px, pdy, py, py2)  # keep the buffers alive with the closures

    def call(_keep=keep):
        copy(px, py, n, 0.5, 0.25, threads)

    def call_fwd(_keep=keep):
        fwd(px, py2, n, 1e-12, threads)

    def call_bwd(_keep=keep):
        bwd(pdy, px, py2, n, 1e-12, threads)

    return {"floor": call, "fwd": call_fwd, "bwd": call_bwd}


_CHECK_KEYS = ("y_train", "save_mean", "save_invstd", "rm", "rv", "y_infer", "dx", "dw", "db")


def max_rel_err(a: dict, ref: dict) -> dict:
    out = {}
    for k in _CHECK_KEYS:
        x, r = np.asarray(a[k], dtype=np.float64), np.asarray(ref[k], dtype=np.float64)
        if x.shape != r.shape:
            out[k] = float("inf")
            continue
        scale = max(float(np.max(np.abs(r))) if r.size else 0.0, 1.0)
        out[k] = float(np.max(np.abs(x - r))) / scale if r.size else 0.0
    return out


def check_tolerance(dtype) -> float:
    return 1e-3 if np.dtype(dtype) == np.float32 else 1e-9


# --------------------------------------------------------------------------------------------
# the run


class _Progress:
    def __init__(self, total, enabled):
        self.bar = None
        try:
            from tqdm import tqdm  # noqa: PLC0415

            self.bar = tqdm(total=total, file=sys.stderr, unit="cell", dynamic_ncols=True,
                            disable=(None if enabled is None else not enabled), leave=False)
        except ImportError:
            pass

    def desc(self, text):
        if self.bar is not None:
            self.bar.set_description(text, refresh=False)

    def step(self, n=1):
        if self.bar is not None:
            self.bar.update(n)

    def add(self, n):
        if self.bar is not None:
            self.bar.total += n
            self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _import_torch(cfg: BenchConfig):
    if not cfg.torch:
        return None, "disabled (--no-torch)"
    try:
        import torch  # noqa: PLC0415

        return torch, None
    except ImportError:
        return None, "torch not installed (pip install 'bnsym[bench]')"


def _bnsym_probe(api):
    """Whether the compiled C backend runs: None if it does, else the reason."""
    if api is None:
        return "bnsym API unavailable"
    try:
        x = np.ones(TINY_SHAPE, dtype=np.float32)
        x[0] = 2.0
        c = TINY_SHAPE[1]
        fn = api.batch_norm_forward
        fn(x, None, None, np.zeros(c, np.float32), np.ones(c, np.float32), True, MOMENTUM, EPS,
           **_filter_kwargs(fn, {"backend": "c"}))
        return None
    except Exception as exc:  # noqa: BLE001
        return f"compiled kernels unavailable ({type(exc).__name__}: {exc})"


def _numpy_probe(api):
    if api is None:
        return "bnsym API unavailable"
    fn = api.batch_norm_forward
    if "backend" not in _filter_kwargs(fn, {"backend": "numpy"}):
        return "bnsym API has no backend= argument"
    try:
        x = np.arange(8, dtype=np.float64).reshape(TINY_SHAPE[0], -1)[:, :2].copy()
        fn(x, None, None, None, None, True, MOMENTUM, EPS, backend="numpy")
        return None
    except Exception as exc:  # noqa: BLE001
        return f"numpy backend unavailable ({type(exc).__name__}: {exc})"


def _set_threads(n, api, torch, have_bnsym):
    if have_bnsym and api is not None:
        api.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


def run(cfg: BenchConfig, log=None) -> dict:
    """Run the benchmark; return the report (everything that ``--json`` writes)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    t_start = time.perf_counter()
    steal0 = _read_steal()
    report = {
        "meta": _meta(cfg),
        "notes": [],
        "rows": [],
        "checks": [],
        "sweep": [],
        "overheads": {},
    }
    notes = report["notes"]
    if cfg.malloc_steady:
        ok = _set_malloc_steady()
        report["meta"]["malloc"] = "steady (M_MMAP_MAX=0, no trim)" if ok else "default (mallopt failed)"
    else:
        report["meta"]["malloc"] = "default glibc malloc"

    api, api_err = _load_api()
    bn_err = _bnsym_probe(api)
    np_err = _numpy_probe(api) if cfg.numpy else "disabled (--no-numpy)"
    torch, torch_err = _import_torch(cfg)
    try:
        floor = load_floor()
        floor_err = None
    except Exception as exc:  # noqa: BLE001
        floor, floor_err = None, f"floor kernel did not build ({type(exc).__name__}: {exc})"
    have = {"bnsym": bn_err is None, "numpy": np_err is None, "torch": torch is not None,
            "floor": floor is not None}
    report["meta"]["available"] = {
        "bnsym": bn_err or "yes", "numpy": np_err or "yes", "torch": torch_err or "yes",
        "floor": floor_err or "yes",
    }
    for name, err in (("bnsym", bn_err), ("numpy", np_err), ("torch", torch_err), ("floor", floor_err)):
        if err:
            notes.append(f"{name} column skipped: {err}")
    if torch is not None:
        report["meta"]["torch"] = torch.__version__
        report["meta"]["torch_threads_default"] = torch.get_num_threads()

    configs = [(shape, dt, lay) for shape in cfg.cases for dt in cfg.dtypes
               for lay in layouts_for(shape, cfg.layouts)]
    total = 0
    for _ in configs:
        for t in cfg.threads:
            reps = cfg.repeats if t > 1 else cfg.repeats_1t
            per = len(cfg.passes) * (have["bnsym"] + have["torch"]) + have["floor"]
            total += per * reps
            if t == cfg.threads[0]:
                total += len(cfg.passes) * have["numpy"]
    n_sweep = len(sweep_sizes(cfg)) if cfg.sweep else 0
    total += n_sweep * (len(cfg.passes) * (have["bnsym"] + have["torch"]) + have["floor"])
    # the tiny call is timed in three windows (before the cases, after them, at the end) unless
    # --quick: see _run_overheads
    tiny_windows = []
    if cfg.overheads and not cfg.quick:
        tiny_windows.append(_tiny_window(cfg, api, torch, have))
    progress = _Progress(total, cfg.progress)
    try:
        for i, (shape, dt, lay) in enumerate(configs):
            progress.desc(f"{case_name(shape)} {DTYPE_SHORT[dt]} {LAYOUT_LABEL[lay]}")
            _run_config(cfg, report, api, torch, floor, have, shape, dt, lay, seed=cfg.seed + i,
                        progress=progress)
        if cfg.overheads and not cfg.quick:
            tiny_windows.append(_tiny_window(cfg, api, torch, have))
        if cfg.sweep:
            _run_sweep(cfg, report, api, torch, floor, have, progress)
    finally:
        progress.close()
        _set_threads(cfg.threads[0] if cfg.threads else 1, api, torch, have["bnsym"])
    if cfg.overheads:
        report["overheads"].update(_run_overheads(cfg, api, torch, have, tiny_windows))
    if cfg.compile_check and api is not None:
        report["overheads"]["compile"] = measure_compile_time()
    elif cfg.compile_check:
        report["overheads"]["compile"] = {"error": "bnsym API unavailable"}
    report["summary"] = summarize(report, cfg)
    steal1 = _read_steal()
    tot = steal1[1] - steal0[1]
    report["meta"]["steal_frac_total"] = ((steal1[0] - steal0[0]) / tot) if tot > 0 else 0.0
    report["meta"]["wall_s"] = time.perf_counter() - t_start
    try:
        with open("/proc/loadavg", encoding="ascii") as fh:
            report["meta"]["loadavg_end"] = " ".join(fh.read().split()[:3])
    except OSError:
        pass
    return report


def _git_state() -> str:
    """``<commit>[ (dirty)]`` of the source checkout bnsym runs from, or ``""``."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return ""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + (" (dirty)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def _meta(cfg: BenchConfig) -> dict:
    import cffi  # noqa: PLC0415

    try:
        import bnsym  # noqa: PLC0415

        version = bnsym.__version__
    except Exception:  # noqa: BLE001
        version = "?"
    try:
        cflags, ldflags, cpu = _floor_flags()
    except Exception:  # noqa: BLE001
        cflags, ldflags, cpu = [], [], "?"
    model = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "git": _git_state(),
        "kernel_dir": os.environ.get("BNSYM_KERNEL_DIR") or "(package default)",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "units": "times and medians in seconds per call; sweep in ns per element; ratios are time ratios",
        "bnsym": version, "python": platform.python_version(), "numpy": np.__version__,
        "cffi": cffi.__version__, "machine": platform.machine(), "cpu": model,
        "cpus": os.cpu_count(), "cflags": cflags, "ldflags": ldflags, "cpu_key": cpu,
        "protocol": {
            "warm_calls": cfg.warm_calls, "warm_time_s": cfg.warm_time,
            "min_samples": cfg.min_samples, "max_samples": cfg.max_samples,
            "min_time_s": cfg.min_time, "repeats_multithread": cfg.repeats, "repeats_1thread": cfg.repeats_1t,
            "statistic": "median per measurement; per cell: min of the interleaved repeat medians",
            "max_retries": cfg.max_retries, "wait_quiet_s": cfg.wait_quiet,
        },
        "config": {
            "cases": [case_name(s) for s in cfg.cases], "dtypes": list(cfg.dtypes),
            "layouts": list(cfg.layouts), "threads": list(cfg.threads), "passes": list(cfg.passes),
            "quick": cfg.quick, "sweep": cfg.sweep,
        },
    }


def _run_config(cfg, report, api, torch, floor, have, shape, dt, lay, seed, progress):
    d = Data(shape, dt, lay, seed)
    fns = {}
    checks = {}
    errors = {}
    if have["bnsym"]:
        try:
            fns["bnsym"], checks["bnsym"] = bnsym_callables(api, d, "c")
        except Exception as exc:  # noqa: BLE001
            errors["bnsym"] = f"{type(exc).__name__}: {exc}"
    if have["numpy"]:
        try:
            fns["numpy"], checks["numpy"] = bnsym_callables(api, d, "numpy")
        except Exception as exc:  # noqa: BLE001
            errors["numpy"] = f"{type(exc).__name__}: {exc}"
    if have["torch"]:
        fns["torch"], checks["torch"] = torch_callables(torch, d)
    for name, err in errors.items():
        report["notes"].append(f"{case_name(shape)} {dt} {lay}: {name} failed: {err}")

    # cross-check against torch (or NumPy when torch is absent)
    ref_name = "torch" if "torch" in checks else ("numpy" if "numpy" in checks else None)
    if ref_name:
        tol = check_tolerance(dt)
        for name in ("bnsym", "numpy"):
            if name in checks and name != ref_name:
                errs = max_rel_err(checks[name], checks[ref_name])
                worst = max(errs.values())
                report["checks"].append({
                    "case": case_name(shape), "dtype": dt, "layout": lay, "impl": name,
                    "reference": ref_name, "max_rel_err": errs, "worst": worst, "tol": tol,
                    "ok": bool(worst <= tol),
                })
    del checks

    results = {}  # (threads, pass, impl) -> list of measurement dicts
    retimed = {}  # (threads, pass) -> bnsym and torch timed call by call (cells bnsym lost)
    retimed_floor = {}  # (1, pass) -> bnsym and the floor timed call by call (floor target missed)
    waited = wait_quiet(cfg.wait_quiet)
    for t in cfg.threads:
        _set_threads(t, api, torch, have["bnsym"])
        floors = floor_callables(floor, d, t) if floor is not None else None
        floor_fn = floors["floor"] if floors else None
        cells = []  # (key, callable) in the interleaving order of one round
        for p in cfg.passes:
            for impl in ("bnsym", "torch"):
                if impl in fns:
                    cells.append(((t, p, impl), fns[impl][p]))
        if floor_fn is not None:
            cells.append(((t, "floor", "floor"), floor_fn))
        reps = cfg.repeats if t > 1 else cfg.repeats_1t
        for rep in range(reps):
            for key, fn in cells:
                results.setdefault(key, []).append(measure(fn, cfg))
                progress.step()
            if rep == 0 and "numpy" in fns and t == cfg.threads[0]:
                for p in cfg.passes:
                    results.setdefault((t, p, "numpy"), []).append(measure(fns["numpy"][p], cfg))
                    progress.step()
        # Cells whose every median ran while other processes held the CPUs they needed: retry
        # (after a pause) until one clean median exists, at most max_retries times.
        for _retry in range(cfg.max_retries):
            todo = [(k, fn) for k, fn in cells if all(contended(m, t) for m in results[k])]
            if not todo:
                break
            progress.add(len(todo))
            waited += wait_quiet(cfg.wait_quiet) if cfg.wait_quiet > 0 else (time.sleep(0.5) or 0.5)
            for key, fn in todo:
                results[key].append(measure(fn, cfg))
                progress.step()
        # A cell whose bnsym time is above torch's: the two again, call by call in one loop
        # (measure_pair), which tells a real difference from the host drifting between two windows.
        if "bnsym" in fns and "torch" in fns:
            for p in cfg.passes:
                mb, mt = results.get((t, p, "bnsym")), results.get((t, p, "torch"))
                if mb and mt and min(m["median"] for m in mb) > min(m["median"] for m in mt):
                    retimed[(t, p)] = _retime(fns["bnsym"][p], fns["torch"][p], "torch", cfg, progress)
        # A 1-thread cell above its floor target: bnsym and the floor again, call by call.
        mf = results.get((t, "floor", "floor"))
        if t == 1 and "bnsym" in fns and mf:
            for p in cfg.passes:
                mb = results.get((t, p, "bnsym"))
                r = _ratio(min(m["median"] for m in mb), min(m["median"] for m in mf)) if mb else None
                if r is not None and r > TARGETS[FLOOR_TARGET[p]]:
                    retimed_floor[(t, p)] = _retime_floor(fns["bnsym"][p], floors, p, cfg, progress)

    numpy_threads = cfg.threads[0] if cfg.threads else 1
    for t in cfg.threads:
        for p in cfg.passes:
            row = {
                "case": case_name(shape), "shape": list(shape), "dtype": dt, "layout": lay,
                "threads": t, "pass": p, "numel": d.numel, "bytes": d.nbytes,
                "times": {}, "details": {},
            }
            for impl in IMPLS:
                if impl == "floor":
                    key = (t, "floor", "floor")
                elif impl == "numpy":
                    key = (numpy_threads, p, "numpy")
                else:
                    key = (t, p, impl)
                ms = results.get(key)
                if not ms:
                    row["times"][impl] = None
                    continue
                clean = [m for m in ms if not contended(m, key[0])]
                row["times"][impl] = min(m["median"] for m in ms)
                row["details"][impl] = {
                    "medians": [m["median"] for m in ms],
                    "others_cpu": [m["others_cpu"] for m in ms],
                    "contended": [contended(m, key[0]) for m in ms],
                    "all_contended": not clean,
                    "samples": [m["samples"] for m in ms],
                    "faults_per_call": [m["faults_per_call"] for m in ms],
                    "steal_frac": [m["steal_frac"] for m in ms],
                    "measured_threads": key[0],
                }
            row["retimed"] = retimed.get((t, p))
            row["retimed_floor"] = retimed_floor.get((t, p))
            row["waited_s"] = waited
            row["contended"] = any(v.get("all_contended") for k, v in row["details"].items() if k != "numpy")
            _add_ratios(row)
            report["rows"].append(row)


def _retime(bnsym_fn, other_fn, other: str, cfg, progress) -> dict:
    """bnsym and ``other`` (torch, the floor) timed again call by call (:func:`measure_pair`):
    medians and minima of each, the ratios bnsym/other, the samples."""
    progress.add(1)
    pair = measure_pair(bnsym_fn, other_fn, cfg)
    progress.step()
    return {"bnsym_median": pair["a_median"], f"{other}_median": pair["b_median"],
            "bnsym_min": pair["a_min"], f"{other}_min": pair["b_min"], "samples": pair["samples"],
            "ratio_median": pair["ratio_median"], "ratio_min": pair["ratio_min"]}


def _retime_floor(bnsym_fn, floors, p, cfg, progress) -> dict:
    """:func:`_retime` of bnsym against the copy floor and, for a training pass, its two-pass floor
    (:func:`floor_callables`) against the copy floor in a loop of their own: two-pass/floor (the
    least bnsym/floor that a kernel which reads its input before it writes can reach, alternating
    with the floor as bnsym does) and bnsym/two-pass, the quotient of the two ratios."""
    out = _retime(bnsym_fn, floors["floor"], "floor", cfg, progress)
    out.update(two_pass_median=None, two_pass_min=None, two_pass_floor_median=None,
               two_pass_over_floor=None, bnsym_over_two_pass=None)
    if p in floors:
        progress.add(1)
        two = measure_pair(floors[p], floors["floor"], cfg)
        progress.step()
        out.update(two_pass_median=two["a_median"], two_pass_min=two["a_min"],
                   two_pass_floor_median=two["b_median"], two_pass_over_floor=two["ratio_median"],
                   bnsym_over_two_pass=_ratio(out["ratio_median"], two["ratio_median"]))
    return out


def _ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _add_ratios(row):
    t = row["times"]
    row["bnsym_over_torch"] = _ratio(t.get("bnsym"), t.get("torch"))
    row["bnsym_over_floor"] = _ratio(t.get("bnsym"), t.get("floor"))
    row["speedup_vs_torch"] = _ratio(t.get("torch"), t.get("bnsym"))
    row["numpy_over_torch"] = _ratio(t.get("numpy"), t.get("torch"))


# --------------------------------------------------------------------------------------------
# sweep


def sweep_sizes(cfg: BenchConfig) -> list[int]:
    """Bytes per tensor: 4 KiB, 16 KiB, ... up to ``cfg.sweep_max_bytes`` (factor 4)."""
    sizes, b = [], 4 << 10
    while b <= cfg.sweep_max_bytes:
        sizes.append(b)
        b *= 4
    return sizes


def sweep_shape(nbytes: int, itemsize: int) -> tuple:
    elems = max(nbytes // itemsize, 64)
    hw = max(elems // 64, 1)  # (2, 32, H, W)
    k = max(int(round(math.log2(hw))), 0)
    h, w = 2 ** (k // 2), 2 ** (k - k // 2)
    return (2, 32, h, w)


def _run_sweep(cfg, report, api, torch, floor, have, progress):
    dt = cfg.dtypes[0]
    t = cfg.threads[0]
    _set_threads(t, api, torch, have["bnsym"])
    itemsize = np.dtype(dt).itemsize
    for nbytes in sweep_sizes(cfg):
        shape = sweep_shape(nbytes, itemsize)
        progress.desc(f"sweep {case_name(shape)} {DTYPE_SHORT[dt]}")
        wait_quiet(cfg.wait_quiet)
        d = Data(shape, dt, "nchw", cfg.seed + 1000)
        fns = {}
        if have["bnsym"]:
            try:
                fns["bnsym"], _ = bnsym_callables(api, d, "c")
            except Exception as exc:  # noqa: BLE001
                report["notes"].append(f"sweep {case_name(shape)}: bnsym failed: {exc}")
        if have["torch"]:
            fns["torch"], _ = torch_callables(torch, d)
        entry = {"case": case_name(shape), "shape": list(shape), "dtype": dt, "layout": "nchw",
                 "threads": t, "numel": d.numel, "bytes": d.nbytes, "ns_per_elem": {},
                 "faults_per_call": {}}
        for p in cfg.passes:
            for impl in ("bnsym", "torch"):
                if impl in fns:
                    m = measure(fns[impl][p], cfg)
                    entry["ns_per_elem"][f"{impl}_{p}"] = m["median"] / d.numel * 1e9
                    entry["faults_per_call"][f"{impl}_{p}"] = m["faults_per_call"]
                    progress.step()
        if floor is not None:
            m = measure(floor_callable(floor, d, t), cfg)
            entry["ns_per_elem"]["floor"] = m["median"] / d.numel * 1e9
            entry["faults_per_call"]["floor"] = m["faults_per_call"]
            progress.step()
        report["sweep"].append(entry)
        del d, fns


# --------------------------------------------------------------------------------------------
# fixed costs: tiny call, import, compile


# the tiny call's interleaved timing: cfg.min_time times this in all, samples of this many calls
# back to back (about 0.5-1 ms), at most this many samples of each
TINY_TIME_FACTOR = 3
TINY_BATCH = 100
TINY_MAX_SAMPLES = 5000


def bare_tiny_call(api, x, w, b):
    """The tiny call (training forward, float32, contiguous) without the Python functions around
    the kernel, at 1 thread: the compiled module's C entry point called directly (its argument
    checks in C, a fresh output, the kernel); without that entry point (a module built without
    ``bnsym_python.h``), the kernel called through cffi with a fresh output and
    ``ffi.from_buffer`` of the six arrays. The difference from ``batch_norm`` is the Python
    layer's. None when ``api`` is not bnsym's own API (or the kernels are unavailable).
    """
    try:
        from bnsym import api as bn_api  # noqa: PLC0415

        if getattr(api, "batch_norm", None) is not bn_api.batch_norm:
            return None
        table = bn_api._K or bn_api._init()
    except Exception:  # noqa: BLE001 - no kernels: nothing to compare with
        return None
    kern = table[0][0]  # bnsym_forward_train_f32_ncs (bn_api.KERNEL_NAMES[0][0])
    fb, null = bn_api._fb, bn_api._NULL
    n, c = x.shape
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    f32 = np.float32
    entry, empties = bn_api._CF, bn_api._EMPTIES
    if entry is not None:
        return lambda: entry(x, w, b, rm, rv, True, MOMENTUM, EPS, None, None, None, False, False,
                             empties, 1)[0]

    def call():
        y = np.empty((n, c), f32)
        kern(n, c, 1, fb(x), fb(y), fb(w), fb(b), fb(rm), fb(rv), null, null, EPS, MOMENTUM, 0, 1)
        return y

    return call


def _tiny_window(cfg, api, torch, have) -> dict:
    """One window of the tiny call: bnsym's, the bare one and torch's, in turn (medians, s)."""
    out = {}
    rng = np.random.default_rng(cfg.seed)
    n, c = TINY_SHAPE
    x = rng.standard_normal(TINY_SHAPE).astype(np.float32)
    w = np.ones(c, np.float32)
    b = np.zeros(c, np.float32)
    fns = {}
    wait_quiet(cfg.wait_quiet)
    if have["bnsym"]:
        api.set_num_threads(1)
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
        bn = api.batch_norm
        fns["bnsym"] = lambda: bn(x, rm, rv, w, b, True, MOMENTUM, EPS)
        bare = bare_tiny_call(api, x, w, b)
        if bare is not None:
            fns["bnsym_bare"] = bare
    if torch is not None:
        torch.set_num_threads(1)
        F = torch.nn.functional
        xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
        rmt, rvt = torch.zeros(c), torch.ones(c)
        fns["torch"] = lambda: F.batch_norm(xt, rmt, rvt, wt, bt, True, MOMENTUM, EPS)
    # all of them in turn in one loop, a batch of calls of each (A B C C B A ...), so that each
    # sees the same machine states: the host's slow phases last longer than a few thousand calls
    # of one function, which could otherwise fall on one of them and not the others
    import contextlib  # noqa: PLC0415

    if fns:
        with (torch.no_grad() if torch is not None else contextlib.nullcontext()):
            times = time_interleaved(
                fns.values(), min_samples=cfg.min_samples,
                min_time=cfg.min_time * (1 if cfg.quick else TINY_TIME_FACTOR),
                max_samples=TINY_MAX_SAMPLES, warm_calls=cfg.warm_calls, warm_time=cfg.warm_time,
                batch=TINY_BATCH)
        for name, t in zip(fns, times):
            out[f"tiny_{name}_s"] = float(np.median(t))
    return out


def _tiny_ratio(w: dict):
    return _ratio(w.get("tiny_bnsym_s"), w.get("tiny_torch_s"))


def _run_overheads(cfg, api, torch, have, windows=()) -> dict:
    """The tiny call's last window (and the earlier ``windows``), then the import time.

    The tiny target is judged on the window whose bnsym/torch ratio is the highest: the host's
    slow phases slow torch's call more than bnsym's (the ratio drops then), so a single window
    could pass in a slow phase what is a miss in a quiet one. Its medians are the ``tiny_*_s``
    keys; every window is kept in ``tiny_windows``.
    """
    out = {}
    wins = [w for w in (*windows, _tiny_window(cfg, api, torch, have)) if w]
    if wins:
        judged = max(wins, key=lambda w: _tiny_ratio(w) or 0.0)
        out.update(judged)
        out["tiny_windows"] = wins
    if have["bnsym"]:
        out["import"] = measure_import_time(runs=2 if cfg.quick else 5)
    return out


# numpy first (a caller has it loaded to make the arrays), then bnsym up to its first result:
# ``import bnsym`` is lazy, so the meaningful cost is import + loading the cached compiled module.
_IMPORT_CODE = r"""
import json, time
t0 = time.perf_counter()
import numpy as np
t1 = time.perf_counter()
import bnsym
t2 = time.perf_counter()
x = np.arange(32, dtype=np.float32).reshape(4, 8)
bnsym.batch_norm(x, np.zeros(8, np.float32), np.ones(8, np.float32), None, None, True)
t3 = time.perf_counter()
import sys
print(json.dumps({"numpy_s": t1 - t0, "import_s": t2 - t1, "ready_s": t3 - t1, "total_s": t3 - t0,
                  "sympy": "sympy" in sys.modules, "jinja2": "jinja2" in sys.modules}))
"""


def _subprocess_json(code, env=None, timeout=600.0):
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        raise RuntimeError(f"subprocess failed ({proc.returncode}): {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_import_time(runs: int = 5) -> dict:
    """``import bnsym`` and import-to-first-result in fresh interpreters (cached module).

    The first run warms the OS file cache and the compiled-module cache and is discarded.
    """
    try:
        _subprocess_json(_IMPORT_CODE)
        res = [_subprocess_json(_IMPORT_CODE) for _ in range(max(runs, 1))]
    except Exception as exc:  # noqa: BLE001
        return {"error": str(exc)}
    return {
        "import_s": float(np.median([r["import_s"] for r in res])),
        "ready_s": float(np.median([r["ready_s"] for r in res])),
        "numpy_s": float(np.median([r["numpy_s"] for r in res])),
        "total_s": float(np.median([r["total_s"] for r in res])),
        "runs": len(res),
        "sympy_loaded": any(r["sympy"] for r in res),
        "jinja2_loaded": any(r["jinja2"] for r in res),
    }


def measure_compile_time() -> dict:
    """First use with an empty ``BNSYM_CACHE_DIR``, in a fresh interpreter."""
    with tempfile.TemporaryDirectory(prefix="bnsym-bench-cache-") as tmp:
        env = dict(os.environ, BNSYM_CACHE_DIR=tmp)
        t0 = time.perf_counter()
        try:
            r = _subprocess_json(_IMPORT_CODE, env=env)
        except Exception as exc:  # noqa: BLE001
            return {"error": str(exc)}
        wall = time.perf_counter() - t0
        files = [p.name for p in Path(tmp).rglob("*") if p.is_file()]
    return {"first_use_s": r["total_s"], "wall_s": wall, "cache_files": len(files)}


# --------------------------------------------------------------------------------------------
# summary, targets, printing


def geomean(values) -> float | None:
    vals = [v for v in values if v is not None and v > 0]
    if not vals:
        return None
    return float(math.exp(sum(math.log(v) for v in vals) / len(vals)))


def summarize(report: dict, cfg: BenchConfig) -> dict:
    rows = report["rows"]
    geo = {}
    for p in PASSES:
        sp = [r["speedup_vs_torch"] for r in rows if r["pass"] == p]
        entry = {"all": geomean(sp), "n": sum(1 for v in sp if v)}
        for t in cfg.threads:
            entry[f"{t}t"] = geomean(r["speedup_vs_torch"] for r in rows if r["pass"] == p and r["threads"] == t)
        clean = [r["speedup_vs_torch"] for r in rows if r["pass"] == p and not r.get("contended")]
        entry["clean"] = geomean(clean)
        entry["n_clean"] = sum(1 for v in clean if v)
        geo[p] = entry
    targets = []

    def add(name, desc, value, limit, ok, detail=""):
        targets.append({"name": name, "target": desc, "value": value, "limit": limit,
                        "status": ("n/a" if ok is None else ("PASS" if ok else "MISS")), "detail": detail})

    ratios = [(r["bnsym_over_torch"], r) for r in rows if r["bnsym_over_torch"] is not None]
    if ratios:
        worst, wr = max(ratios, key=lambda t: t[0])
        slower = sum(1 for v, _ in ratios if v > 1.0)
        beyond = sum(1 for v, _ in ratios if v > 1.3)
        detail = (f"worst {_row_label(wr)}; {slower} of {len(ratios)} cells slower, "
                  f"{beyond} by more than the 1.3x noise band")
        again = [(r["retimed"]["ratio_median"], r) for _, r in ratios
                 if r.get("retimed") and r["retimed"].get("ratio_median") is not None]
        if again:
            still = [(v, r) for v, r in again if v > 1.0]
            detail += f"; re-timed call by call with torch: {len(still)} of {len(again)} still slower"
            if still:
                v, r = max(still, key=lambda t: t[0])
                detail += f", worst {v:.2f} ({_row_label(r)})"
        add("never_slower", "bnsym never slower than torch (max bnsym/torch <= 1)", worst, 1.0,
            worst <= 1.0, detail)
    else:
        add("never_slower", "bnsym never slower than torch (max bnsym/torch <= 1)", None, 1.0, None,
            "needs bnsym and torch")
    for p, key in (("fwd", "fwd_geomean"), ("bwd", "bwd_geomean")):
        g = geo[p]["all"]
        add(key, f"geomean speed-up over torch, {PASS_LABEL[p]} >= {TARGETS[key]}x", g, TARGETS[key],
            None if g is None else g >= TARGETS[key], f"{geo[p]['n']} cells")
    t1 = min(cfg.threads) if cfg.threads else 1
    for p, key in FLOOR_TARGET.items():
        vals = [(r["bnsym_over_floor"], r) for r in rows
                if r["pass"] == p and r["threads"] == 1 and r["bnsym_over_floor"] is not None]
        if vals and t1 == 1:
            worst, wr = max(vals, key=lambda t: t[0])
            above = sum(1 for v, _ in vals if v > TARGETS[key])
            detail = f"worst {_row_label(wr)}; {above} of {len(vals)} cells above"
            again = [(r["retimed_floor"]["ratio_median"], r) for _, r in vals
                     if r.get("retimed_floor") and r["retimed_floor"].get("ratio_median") is not None]
            if again:
                still = [(v, r) for v, r in again if v > TARGETS[key]]
                detail += f"; re-timed call by call with the floor: {len(still)} of {len(again)} still above"
                if still:
                    v, r = max(still, key=lambda t: t[0])
                    detail += f", worst {v:.2f} ({_row_label(r)})"
                    two = [r["retimed_floor"]["two_pass_over_floor"] for _, r in still
                           if r["retimed_floor"].get("two_pass_over_floor") is not None]
                    if two:
                        detail += (f"; the two-pass floor alone takes {min(two):.2f}x-{max(two):.2f}x "
                                   f"the floor on those")
            add(key, f"1 thread: bnsym/floor {PASS_LABEL[p]} <= {TARGETS[key]}", worst, TARGETS[key],
                worst <= TARGETS[key], detail)
        else:
            add(key, f"1 thread: bnsym/floor {PASS_LABEL[p]} <= {TARGETS[key]}", None, TARGETS[key], None,
                "needs bnsym and the floor at 1 thread")
    oh = report.get("overheads", {})
    tb, tt = oh.get("tiny_bnsym_s"), oh.get("tiny_torch_s")
    r = _ratio(tb, tt)
    add("tiny", f"tiny {TINY_SHAPE[0]}x{TINY_SHAPE[1]} batch_norm(training) <= {TARGETS['tiny']}x torch F.batch_norm",
        r, TARGETS["tiny"], None if r is None else r <= TARGETS["tiny"],
        "" if r is None else f"bnsym {tb * 1e6:.2f} us, torch {tt * 1e6:.2f} us"
        + ("" if len(oh.get("tiny_windows", ())) < 2 else
           f", the highest of {len(oh['tiny_windows'])} windows' ratios "
           f"({', '.join(fmt_ratio(_tiny_ratio(w)) for w in oh['tiny_windows'])})")
        + ("" if oh.get("tiny_bnsym_bare_s") is None else
           f"; the bare call (no Python function around the kernel) {oh['tiny_bnsym_bare_s'] * 1e6:.2f} us, "
           f"{oh['tiny_bnsym_bare_s'] / tt:.2f}x torch"))
    imp = oh.get("import", {})
    v = imp.get("ready_s")
    add("import", f"import bnsym + first call, cached module, numpy preloaded < {TARGETS['import_s'] * 1e3:.0f} ms",
        v, TARGETS["import_s"], None if v is None else v < TARGETS["import_s"],
        imp.get("error", "") if v is None else
        f"bare 'import bnsym' {imp['import_s'] * 1e3:.1f} ms, numpy import {imp['numpy_s'] * 1e3:.0f} ms; "
        f"sympy loaded: {imp['sympy_loaded']}")
    comp = oh.get("compile", {})
    v = comp.get("first_use_s")
    add("compile", f"first-use compile (empty cache) < {TARGETS['compile_s']:.0f} s", v, TARGETS["compile_s"],
        None if v is None else v < TARGETS["compile_s"],
        comp.get("error", "not measured") if v is None else f"subprocess wall {comp['wall_s']:.1f} s")
    return {"geomean_speedup_vs_torch": geo, "targets": targets}


def _row_label(r) -> str:
    return (f"{r['case']} {DTYPE_SHORT[r['dtype']]} {LAYOUT_LABEL[r['layout']]} {r['threads']}t "
            f"{PASS_LABEL[r['pass']]}")


def fmt_us(seconds) -> str:
    if seconds is None:
        return "-"
    us = seconds * 1e6
    if us < 10:
        return f"{us:.2f}"
    if us < 100:
        return f"{us:.1f}"
    return f"{us:.0f}"


def fmt_ratio(r) -> str:
    return "-" if r is None else f"{r:.2f}"


def fmt_target_value(v: float, limit: float) -> str:
    """A target's ratio with 2 decimals, or as many more (up to 4) as it takes not to print the
    limit itself for a value on the other side of it (1.498 against 1.5: "1.498", not "1.50")."""
    for d in (2, 3, 4):
        s = f"{v:.{d}f}"
        if v == limit or s != f"{limit:.{d}f}":
            return s
    return s


def format_report(report: dict) -> str:
    lines = []
    meta = report["meta"]
    lines.append(f"bnsym bench  {meta['date']}  bnsym {meta['bnsym']}"
                 + (f" (git {meta['git']})" if meta.get("git") else "")
                 + f", numpy {meta['numpy']}, torch {meta.get('torch', 'absent')}, python {meta['python']}")
    if meta.get("kernel_dir", "").startswith("/"):
        lines.append(f"kernels from BNSYM_KERNEL_DIR={meta['kernel_dir']}")
    lines.append(f"cpu: {meta['cpu']} ({meta['cpus']} cpus); floor/bnsym flags: {' '.join(meta['cflags'])}")
    pr = meta["protocol"]
    lines.append(f"median of >= {pr['min_samples']} samples and >= {pr['min_time_s']} s (<= {pr['max_samples']}), "
                 f"warm-up >= {pr['warm_calls']} calls and {pr['warm_time_s'] * 1e3:.0f} ms, GC off; "
                 f"cells: min of {pr['repeats_1thread']} (1 thread) / {pr['repeats_multithread']} (more threads) "
                 f"interleaved medians; malloc: {meta.get('malloc')}")
    lines.append("torch: aten.native_batch_norm.out (fwd, infer; preallocated output), "
                 "aten.native_batch_norm_backward functional (bwd); numpy: single-threaded, measured at 1 thread")
    for n in report["notes"]:
        lines.append(f"note: {n}")
    lines.append("")
    hdr = ("case", "dtype", "layout", "thr", "pass", "bnsym us", "numpy us", "torch us", "floor us",
           "bnsym/torch", "bnsym/floor")
    table = [hdr]
    bad = {(c["case"], c["dtype"], c["layout"]) for c in report["checks"] if not c["ok"] and c["impl"] == "bnsym"}
    for r in report["rows"]:
        t = r["times"]
        flag = " !" if (r["case"], r["dtype"], r["layout"]) in bad else ""
        table.append((r["case"], DTYPE_SHORT[r["dtype"]], LAYOUT_LABEL[r["layout"]],
                      f"{r['threads']}" + ("~" if r.get("contended") else ""),
                      PASS_LABEL[r["pass"]], fmt_us(t.get("bnsym")) + flag, fmt_us(t.get("numpy")),
                      fmt_us(t.get("torch")), fmt_us(t.get("floor")), fmt_ratio(r["bnsym_over_torch"]),
                      fmt_ratio(r["bnsym_over_floor"])))
    lines.extend(_align(table, left=5))
    if any(r.get("contended") for r in report["rows"]):
        lines.append("~ other processes held the CPUs during every median of this cell (after retries): "
                     "treat it with care")
    if bad:
        lines.append("! bnsym output differs from the reference beyond tolerance (see 'checks' in the JSON)")
    again = [r for r in report["rows"] if r.get("retimed")]
    if again:
        lines.append("")
        lines.append("cells where bnsym took longer than torch, timed again call by call (bnsym and torch "
                     "alternating in one loop, A B B A):")
        table = [("cell", "bnsym us", "torch us", "bnsym/torch", "of the minima", "samples")]
        for r in again:
            rt = r["retimed"]
            table.append((_row_label(r), fmt_us(rt["bnsym_median"]), fmt_us(rt["torch_median"]),
                          fmt_ratio(rt["ratio_median"]), fmt_ratio(rt["ratio_min"]), str(rt["samples"])))
        lines.extend("  " + ln for ln in _align(table, left=1))
    again = [r for r in report["rows"] if r.get("retimed_floor")]
    if again:
        lines.append("")
        lines.append("1-thread cells above their floor target, timed again call by call (bnsym and the "
                     "floor alternating in one loop, A B B A):")
        table = [("cell", "bnsym us", "floor us", "bnsym/floor", "of the minima", "target",
                  "2-pass us", "2-pass/floor", "bnsym/2-pass", "samples")]
        for r in again:
            rt = r["retimed_floor"]
            table.append((_row_label(r), fmt_us(rt["bnsym_median"]), fmt_us(rt["floor_median"]),
                          fmt_ratio(rt["ratio_median"]), fmt_ratio(rt["ratio_min"]),
                          fmt_ratio(TARGETS[FLOOR_TARGET[r["pass"]]]), fmt_us(rt.get("two_pass_median")),
                          fmt_ratio(rt.get("two_pass_over_floor")), fmt_ratio(rt.get("bnsym_over_two_pass")),
                          str(rt["samples"])))
        lines.extend("  " + ln for ln in _align(table, left=1))
        if any(r["retimed_floor"].get("two_pass_median") is not None for r in again):
            lines.append("  2-pass: the two-pass floor of a training pass, its memory traffic without the "
                         "per-channel work (forward: a sum over x, then y = a*x + b; backward: sums of dy "
                         "and dy*x, then dx = a*dy + b*x + c), timed against the floor in a loop of its "
                         "own; 2-pass/floor is the least bnsym/floor a kernel that reads its input before "
                         "it writes can reach there")
    summ = report.get("summary", {})
    geo = summ.get("geomean_speedup_vs_torch", {})
    if geo and not any(g.get("n") for g in geo.values()):
        lines.append("")
        lines.append("geometric mean of the speed-up over torch: - (needs the bnsym and torch columns)")
    elif geo:
        lines.append("")
        lines.append("geometric mean of the speed-up over torch (torch time / bnsym time):")
        for p in PASSES:
            g = geo.get(p)
            if not g or g.get("n", 0) == 0:
                continue
            per_t = ", ".join(f"{k}: {fmt_ratio(v)}x" for k, v in g.items() if k.endswith("t"))
            if g.get("n_clean", g["n"]) < g["n"]:
                per_t += f"; without the ~ cells: {fmt_ratio(g.get('clean'))}x over {g['n_clean']}"
            lines.append(f"  {PASS_LABEL[p]:<9} {fmt_ratio(g['all'])}x over {g['n']} cells ({per_t})")
    if report.get("sweep"):
        lines.append("")
        lines.extend(format_sweep(report["sweep"]))
    oh = report.get("overheads", {})
    if oh:
        lines.append("")
        lines.append("fixed costs:")
        if "tiny_bnsym_s" in oh or "tiny_torch_s" in oh:
            bare = oh.get("tiny_bnsym_bare_s")
            lines.append(f"  tiny {TINY_SHAPE[0]}x{TINY_SHAPE[1]} f32 training call, 1 thread: "
                         f"bnsym.batch_norm {fmt_us(oh.get('tiny_bnsym_s'))} us"
                         + (f" (bare, no Python function around the kernel: "
                            f"{fmt_us(bare)} us)" if bare is not None else "")
                         + f", torch F.batch_norm {fmt_us(oh.get('tiny_torch_s'))} us")
            wins = oh.get("tiny_windows", ())
            if len(wins) > 1:
                lines.append("    windows (before the cases, after them, at the end; the highest ratio is "
                             "judged): " + "; ".join(
                                 f"{fmt_us(w.get('tiny_bnsym_s'))} / {fmt_us(w.get('tiny_torch_s'))} us "
                                 f"= {fmt_ratio(_tiny_ratio(w))}" for w in wins))
        imp = oh.get("import")
        if imp and "error" not in imp:
            lines.append(f"  fresh interpreter (median of {imp['runs']}, cached module): import numpy "
                         f"{imp['numpy_s'] * 1e3:.1f} ms, then import bnsym {imp['import_s'] * 1e3:.1f} ms, "
                         f"import bnsym + first call {imp['ready_s'] * 1e3:.1f} ms; all from scratch "
                         f"{imp['total_s'] * 1e3:.1f} ms")
        comp = oh.get("compile")
        if comp and "error" not in comp:
            lines.append(f"  first use with an empty cache: {comp['first_use_s']:.1f} s "
                         f"(subprocess wall {comp['wall_s']:.1f} s)")
    targets = summ.get("targets", [])
    if targets:
        lines.append("")
        lines.append("targets:")
        for t in targets:
            v = t["value"]
            if v is None:
                vs = "-"
            elif t["name"] in ("import",):
                vs = f"{v * 1e3:.1f} ms"
            elif t["name"] == "compile":
                vs = f"{v:.1f} s"
            else:
                vs = fmt_target_value(v, t["limit"])
            detail = f"  ({t['detail']})" if t["detail"] else ""
            lines.append(f"  {t['status']:<4}  {t['target']}: {vs}{detail}")
        if report["meta"]["config"]["quick"] or report["meta"]["config"]["cases"] != [case_name(c) for c in DEFAULT_CASES]:
            lines.append("  (subset of the cases: the targets are checked on the cells measured here)")
    lines.append("")
    ncont = sum(1 for r in report["rows"] if r.get("contended"))
    waited = sum({(r["case"], r["dtype"], r["layout"]): r.get("waited_s", 0) for r in report["rows"]}.values())
    lines.append(f"wall time {report['meta'].get('wall_s', 0):.0f} s (of which {waited:.0f} s waiting for idle CPUs); "
                 f"host steal {report['meta'].get('steal_frac_total', 0) * 100:.1f}%; "
                 f"load average at the end {report['meta'].get('loadavg_end', '?')}; "
                 f"{ncont} of {len(report['rows'])} cells contended")
    return "\n".join(lines)


def format_sweep(sweep) -> list[str]:
    keys = []
    for e in sweep:
        for k in e["ns_per_elem"]:
            if k not in keys:
                keys.append(k)
    order = [f"{i}_{p}" for p in PASSES for i in ("bnsym", "torch")] + ["floor"]
    keys = [k for k in order if k in keys]
    e0 = sweep[0]
    out = [f"sweep: ns per element, {e0['dtype']}, NCHW (2, 32, H, W), {e0['threads']} thread(s)"]
    hdr = ["bytes", "shape"] + [k.replace("_fwd", " fwd-train").replace("_", " ") for k in keys]
    table = [tuple(hdr)]
    for e in sweep:
        table.append(tuple([_fmt_bytes(e["bytes"]), e["case"]] +
                           [f"{e['ns_per_elem'][k]:.3f}" if k in e["ns_per_elem"] else "-" for k in keys]))
    out.extend(_align(table, left=2))
    return out


def _fmt_bytes(n) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _align(table, left=0) -> list[str]:
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    out = []
    for j, row in enumerate(table):
        cells = [str(c).ljust(widths[i]) if i < left else str(c).rjust(widths[i]) for i, c in enumerate(row)]
        out.append("  ".join(cells).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


# --------------------------------------------------------------------------------------------
# plot


def plot_report(report: dict, path: str) -> None:
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise RuntimeError("--plot needs matplotlib (pip install 'bnsym[bench]')") from None
    rows = report["rows"]
    passes = [p for p in PASSES if any(r["pass"] == p for r in rows)]
    nplots = len(passes) + (1 if report.get("sweep") else 0)
    if nplots == 0:
        raise RuntimeError("nothing to plot")
    labels_all = []
    for r in rows:
        lab = f"{r['case']} {DTYPE_SHORT[r['dtype']]} {LAYOUT_LABEL[r['layout']]} {r['threads']}t"
        if lab not in labels_all:
            labels_all.append(lab)
    width_in = max(10.0, 0.42 * len(labels_all) + 2)
    fig, axes = plt.subplots(nplots, 1, figsize=(width_in, 4.2 * nplots), squeeze=False)
    colors = {"bnsym": "tab:blue", "numpy": "tab:orange", "torch": "tab:red", "floor": "tab:gray"}
    for ax, p in zip(axes[:, 0], passes):
        prow = [r for r in rows if r["pass"] == p]
        labels = [f"{r['case']} {DTYPE_SHORT[r['dtype']]} {LAYOUT_LABEL[r['layout']]} {r['threads']}t" for r in prow]
        xs = np.arange(len(prow))
        bw = 0.2
        for k, impl in enumerate(IMPLS):
            vals = [(r["times"].get(impl) or np.nan) * 1e6 for r in prow]
            if all(np.isnan(vals)):
                continue
            ax.bar(xs + (k - 1.5) * bw, vals, bw, label=impl, color=colors[impl])
        ax.set_yscale("log")
        ax.set_ylabel("median time per call (us)")
        ax.set_title(f"{PASS_LABEL[p]}: bnsym, numpy, torch, floor (lower is better)")
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if report.get("sweep"):
        ax = axes[-1, 0]
        sw = report["sweep"]
        xb = [e["bytes"] for e in sw]
        styles = {"bnsym": "-", "torch": "--"}
        pcol = {"fwd": "tab:blue", "infer": "tab:green", "bwd": "tab:purple"}
        keys = sorted({k for e in sw for k in e["ns_per_elem"]})
        for k in keys:
            ys = [e["ns_per_elem"].get(k, np.nan) for e in sw]
            if k == "floor":
                ax.plot(xb, ys, ":", color="black", marker="o", label="floor")
            else:
                impl, p = k.split("_", 1)
                ax.plot(xb, ys, styles.get(impl, "-"), color=pcol.get(p, "gray"), marker=".",
                        label=f"{impl} {PASS_LABEL.get(p, p)}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("bytes per tensor")
        ax.set_ylabel("ns per element")
        ax.set_title(f"sweep: {sw[0]['dtype']}, NCHW (2, 32, H, W), {sw[0]['threads']} thread(s)")
        ax.grid(which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# command line


def _csv(choices=None, conv=str):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            vals = [conv(t) for t in items]
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if not vals or (choices and any(v not in choices for v in vals)):
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list" + (f" of {', '.join(map(str, choices))}" if choices else "")
                + f", got {text!r}")
        return vals

    return parse


def _positive_threads(text):
    n = int(text)
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    return n


def _case_list(text):
    # "256x1024,8x256x28x28": split on commas between shapes
    return [parse_case(t) for t in text.split(",") if t.strip()]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser(prog="bnsym bench") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Benchmark bnsym against NumPy, PyTorch's CPU kernels and a copy floor.",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Default: all cases, both dtypes and layouts, 1 and 2 threads, all passes, plus the "
                       "size sweep (about 5-8 minutes on 2 vCPUs).")
    p.add_argument("--quick", action="store_true",
                   help=f"a short run: cases {', '.join(case_name(c) for c in QUICK_CASES)}, few samples, "
                        "one median per cell, no sweep, no compile-time check")
    p.add_argument("--cases", type=_case_list, metavar="SHAPES",
                   help="comma-separated shapes NxC or NxCxHxW (default: the standard set)")
    p.add_argument("--dtypes", type=_csv(DTYPES), default=list(DTYPES), metavar="LIST",
                   help="float32,float64 (default: both)")
    p.add_argument("--layouts", type=_csv(("nchw", "nhwc")), default=["nchw", "nhwc"], metavar="LIST",
                   help="layouts of the 4-D cases: nchw,nhwc (default: both)")
    p.add_argument("--threads", type=_csv(None, _positive_threads), default=[1, 2], metavar="LIST",
                   help="thread counts (default: 1,2)")
    p.add_argument("--passes", type=_csv(PASSES), default=list(PASSES), metavar="LIST",
                   help="fwd,infer,bwd (default: all)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    p.add_argument("--no-numpy", action="store_true", help="skip the NumPy-backend column")
    sw = p.add_mutually_exclusive_group()
    sw.add_argument("--sweep", dest="sweep", action="store_true", default=None,
                    help="run the size sweep (default on, off with --quick)")
    sw.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the size sweep")
    p.add_argument("--sweep-max", type=float, default=256.0, metavar="MIB",
                   help="largest tensor of the sweep in MiB (default 256)")
    p.add_argument("--repeats", type=int, default=None,
                   help="medians per multi-thread cell, the minimum is kept (default 3, 1 with --quick)")
    p.add_argument("--repeats-1t", type=int, default=None,
                   help="medians per 1-thread cell, the minimum is kept (default 2, 1 with --quick)")
    p.add_argument("--min-time", type=float, default=None, help="seconds of sampling per cell (default 0.3)")
    p.add_argument("--min-samples", type=int, default=None, help="samples per cell (default 25)")
    p.add_argument("--no-compile-check", dest="compile_check", action="store_false", default=None,
                   help="skip the first-use compile time (a subprocess with an empty cache)")
    p.add_argument("--compile-check", dest="compile_check", action="store_true",
                   help="measure the first-use compile time even with --quick")
    p.add_argument("--no-overheads", action="store_true", help="skip the tiny-call and import-time measurements")
    p.add_argument("--malloc", choices=["steady", "default"], default="steady",
                   help="steady: no mmap/trim in glibc malloc, so fresh outputs > 32 MiB do not page-fault "
                        "(default); default: leave glibc as it is")
    p.add_argument("--wait-quiet", type=float, default=None, metavar="S",
                   help="before each case (and each retry), wait up to S seconds until other processes "
                        "leave the CPUs idle (default 5, 0 with --quick)")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--json", metavar="FILE", help="write every number to FILE as JSON")
    p.add_argument("--from-json", metavar="FILE", help="measure nothing: print (and --plot) a report saved with --json")
    p.add_argument("--plot", metavar="FILE.png", help="draw the results (needs matplotlib)")
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="always show the progress bar (default: only on a terminal)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any target is missed")
    return p


def config_from_args(ns) -> BenchConfig:
    quick = ns.quick
    cases = tuple(tuple(c) for c in ns.cases) if ns.cases else (QUICK_CASES if quick else DEFAULT_CASES)
    cfg = BenchConfig(
        cases=cases, dtypes=tuple(ns.dtypes), layouts=tuple(ns.layouts), threads=tuple(dict.fromkeys(ns.threads)),
        passes=tuple(p for p in PASSES if p in ns.passes), torch=not ns.no_torch, numpy=not ns.no_numpy,
        quick=quick, seed=ns.seed, progress=ns.progress, malloc_steady=(ns.malloc == "steady"),
        sweep=(not quick) if ns.sweep is None else ns.sweep,
        sweep_max_bytes=int(ns.sweep_max * (1 << 20)),
        compile_check=(not quick) if ns.compile_check is None else ns.compile_check,
        overheads=not ns.no_overheads,
    )
    if quick:
        cfg.repeats, cfg.repeats_1t, cfg.min_samples, cfg.min_time, cfg.warm_calls, cfg.warm_time = 1, 1, 5, 0.01, 1, 0.0
        cfg.max_samples = 100
        if ns.sweep is None or ns.sweep_max == 256.0:
            cfg.sweep_max_bytes = min(cfg.sweep_max_bytes, 1 << 20)
    if quick:
        cfg.wait_quiet = 0.0
    if ns.wait_quiet is not None:
        cfg.wait_quiet = max(0.0, ns.wait_quiet)
    if ns.repeats is not None:
        cfg.repeats = max(1, ns.repeats)
    if ns.repeats_1t is not None:
        cfg.repeats_1t = max(1, ns.repeats_1t)
    if ns.min_time is not None:
        cfg.min_time = ns.min_time
    if ns.min_samples is not None:
        cfg.min_samples = max(1, ns.min_samples)
    return cfg


def main(argv=None, prog="bnsym bench") -> int:
    ns = build_parser(prog).parse_args(argv)
    if ns.plot:
        try:
            import matplotlib  # noqa: F401, PLC0415
        except ImportError:
            print("bnsym bench: error: --plot needs matplotlib (pip install 'bnsym[bench]')", file=sys.stderr)
            return 2
    if ns.from_json:  # re-print (and re-plot) a saved report, with the summary recomputed
        try:
            report = json.loads(Path(ns.from_json).read_text(encoding="utf-8"))
            c = report["meta"].get("config", {})
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
            print(f"bnsym bench: error: cannot read a report from {ns.from_json} ({why}; "
                  f"expected a file written by 'bnsym bench --json')", file=sys.stderr)
            return 2
        cfg = BenchConfig(threads=tuple(c.get("threads", (1, 2))), quick=c.get("quick", False))
        report["summary"] = summarize(report, cfg)
    else:
        cfg = config_from_args(ns)
        report = run(cfg)
    sys.stdout.write(format_report(report) + "\n")
    sys.stdout.flush()
    if ns.json:
        Path(ns.json).write_text(json.dumps(report, indent=1, default=_json_default) + "\n", encoding="utf-8")
    if ns.plot:
        plot_report(report, ns.plot)
    if ns.strict and any(t["status"] == "MISS" for t in report["summary"]["targets"]):
        return 1
    return 0


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def cli_bench(args) -> int:
    """Entry point of ``bnsym bench``: ``args.bench_args`` holds the remaining argv strings."""
    argv = list(getattr(args, "bench_args", None) or [])
    if argv and argv[0] == "--":
        argv = argv[1:]
    return main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(prog="python -m bnsym.bench"))
