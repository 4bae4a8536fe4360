"""Functional API: NumPy arrays in and out, PyTorch semantics, compiled kernels underneath.

Runtime path: imports neither sympy nor jinja2.

Functions
---------
``batch_norm``          ``torch.nn.functional.batch_norm``.
``batch_norm_forward``  ``aten.native_batch_norm``: ``(output, save_mean, save_invstd)``.
``batch_norm_backward`` ``aten.native_batch_norm_backward``: ``(grad_input, grad_weight, grad_bias)``.
``set_num_threads`` / ``get_num_threads``.

Conventions
-----------
* dtypes: float32 and float64 (native byte order). Every array of a call has the input's dtype;
  results have it too. Statistics are accumulated in double inside the kernels.
* Layouts: a C-contiguous ``(N, C, *spatial)`` input uses the ``ncs`` kernels; a channels-last
  input (memory order ``N, *spatial, C``, e.g. ``x_nhwc.transpose(0, 3, 1, 2)``) uses the ``nsc``
  kernels; any other strides are first copied to a C-contiguous array. Outputs have the layout
  the kernel writes: channels-last in, channels-last out; otherwise C-contiguous.
* ``momentum``: ``new = (1 - momentum) * old + momentum * batch`` (PyTorch). ``momentum=None``
  (the cumulative average of ``nn.BatchNorm*d(momentum=None)``) needs the batch count, which a
  function does not have: it is accepted only where momentum is not used (evaluation, or no
  running statistics); :class:`bnsym.BatchNorm` implements it (factor ``1/num_batches_tracked``).
* ``eps`` must be a finite number > 0.
* ``out=`` arrays let a training loop allocate nothing per step. They must have the exact shape
  and dtype, be writeable, have the layout the kernel writes, and must not overlap any other
  operand, except that the forward ``out`` may be exactly the input (in-place normalization).
* ``skip_nonfinite=True`` (training): when a channel's batch mean or variance is not finite,
  the running statistics are left untouched for the whole batch and a
  :class:`NonFiniteBatchWarning` is issued (the output is still computed and holds the
  non-finite values).
* Empty input (``N == 0`` or a spatial size 0) behaves as PyTorch: ``batch_norm`` returns an
  empty output and leaves the running statistics untouched (``F.batch_norm``);
  ``batch_norm_forward`` raises ValueError in training mode, as ``aten.native_batch_norm`` does,
  and returns an empty output in evaluation mode; ``batch_norm_backward`` returns an empty
  ``grad_input`` and zero ``grad_weight`` / ``grad_bias`` (what autograd gives through
  ``F.batch_norm``; aten's CPU kernel itself crashes with SIGFPE there). The layer follows
  ``F.batch_norm``.
* Bad arguments raise ``TypeError`` / ``ValueError`` before any kernel runs: a call that raises
  changes nothing.
* Threads: ``set_num_threads(n)``; the default is ``$BNSYM_NUM_THREADS`` if set, else the number
  of CPUs this process may run on, capped at 8 (normalization is memory-bound: more threads than
  that rarely help). The kernels decide themselves when an input is too small to split.
* ``backend="numpy"``: the float64 NumPy reference (:mod:`bnsym.reference`), same semantics and
  checks, results cast to the input dtype. No compiler needed.
* Fast path: the compiled module's C entry points (:func:`_entry_points`) take the common calls
  (exact ndarrays, the input contiguous or channels-last, writes only into arrays that cannot
  overlap another operand) and run the kernel directly; every other call, and every error, goes
  through the Python code below, with the same results bit for bit.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np

from bnsym import _checks
from bnsym import reference as _ref

__all__ = [
    "batch_norm",
    "batch_norm_forward",
    "batch_norm_backward",
    "set_num_threads",
    "get_num_threads",
    "NonFiniteBatchWarning",
]


class NonFiniteBatchWarning(RuntimeWarning):
    """A training batch had non-finite statistics; running statistics were left untouched."""


_F32 = _checks.F32
_F64 = _checks.F64
_ndarray = np.ndarray
_INF = math.inf
_EMPTY = {}
for _dt in (_F32, _F64):
    _e = np.empty((0,), _dt)
    _e.flags.writeable = False
    _EMPTY[_dt] = _e
del _dt, _e
_EMPTIES = (_EMPTY[_F32], _EMPTY[_F64])  # by dtype is float64 (the C entry points')

_MAX_DEFAULT_THREADS = 8
_MAX_THREADS = 2**31 - 1  # the kernels take the count as a C int


def _default_threads() -> int:
    env = os.environ.get("BNSYM_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
            if 1 <= n <= _MAX_THREADS:
                return n
        except ValueError:
            pass
        warnings.warn(f"bnsym: ignoring BNSYM_NUM_THREADS={env!r} (expected an integer from 1 to {_MAX_THREADS})",
                      RuntimeWarning, stacklevel=3)
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, _MAX_DEFAULT_THREADS))


_num_threads = _default_threads()


def set_num_threads(n: int) -> None:
    """Threads used by the kernels (an int >= 1). Process-wide."""
    global _num_threads
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"num_threads must be an int >= 1, got {type(n).__name__} {n!r}")
    if not 1 <= n <= _MAX_THREADS:
        raise ValueError(f"num_threads must be >= 1 and <= {_MAX_THREADS} (a C int), got {n}")
    _num_threads = int(n)


def get_num_threads() -> int:
    """Threads used by the kernels (see :func:`set_num_threads`)."""
    return _num_threads


# --------------------------------------------------------------------------- kernels

# kernels: _K[2 * (dtype is float64) + (layout is nsc)] = (forward_train, forward_eval,
# backward_train, backward_eval); a tuple index is cheaper than hashing a dtype on every call
_K = None
_fb = None  # ffi.from_buffer: arrays are passed untyped (the compiled module declares void *)
_NULL = None
# the compiled module's C entry points for the common calls of _forward and batch_norm_backward
# (see _entry_points), or None
_CF = _CB = None
_PERMS: dict[int, tuple] = {}


_init_error = None


def _init():
    """Load (compiling on first use) the kernels and fill the lookup table.

    A failure (no compiler, compile error) is remembered: later calls raise the same error at
    once instead of compiling again. ``backend="numpy"`` never gets here.
    """
    global _init_error
    from bnsym import build

    if _init_error is not None:
        raise _init_error
    try:
        src = build.kernel_dir()
        problem = build.api_folder_problem(src)
        if problem is not None:
            raise build.CompileError(
                f"bnsym: the kernel folder {src} {problem}; the Python API needs {build.FULL_SET}"
                + (" ($BNSYM_KERNEL_DIR points there)" if os.environ.get("BNSYM_KERNEL_DIR")
                   else "; run 'bnsym generate --update' in a source checkout"))
        ffi, lib = build.load()
    except build.CompileError as exc:
        _init_error = exc
        raise
    _select_kernels(_kernels(ffi, lib))
    return _K


# the C names of the table's kernels, in its order
KERNEL_NAMES = tuple(
    tuple(f"bnsym_{k}_{sfx}_{layout}"
          for k in ("forward_train", "forward_eval", "backward_train", "backward_eval"))
    for sfx in ("f32", "f64") for layout in ("ncs", "nsc")
)


def _kernels(ffi, lib) -> tuple:
    """(table, from_buffer, NULL, entry points) of a compiled kernel module: what the calls below
    use. The table holds the four kernels per (dtype, layout), indexed by ``2 * (dtype is
    float64) + (layout is nsc)`` (names: :data:`KERNEL_NAMES`); the entry points are
    :func:`_entry_points`'."""
    table = tuple(tuple(getattr(lib, name) for name in row) for row in KERNEL_NAMES)
    return table, ffi.from_buffer, ffi.NULL, _entry_points(lib)


def _entry_points(lib) -> tuple:
    """The module's C functions ``(forward, backward)`` for the common calls of :func:`_forward`
    and :func:`batch_norm_backward` (``generated/bnsym_python.h``), or ``(None, None)`` (a
    module built without them, or NumPy's C API unavailable to them).

    Each takes its Python function's arguments (``forward``: ``_forward``'s without
    ``backend``, then ``_EMPTIES`` and the thread count; ``backward``: ``batch_norm_backward``'s
    without ``backend``, then the thread count) and returns what that function returns, or the
    kernel's nonzero return code (an int), or None for any call it does not take. It takes exact
    ndarrays of one float dtype, the input C-contiguous or channels-last, every other array in
    the input's layout or contiguous of shape (C,), float ``eps`` and ``momentum`` in range,
    bools; when the call writes into arrays the caller passed, only arrays that own their memory
    or are views of one that does, with different owners (see :func:`_owner`). Everything else,
    and every error message, is the Python path's, whose results it gives bitwise."""
    install = getattr(lib, "bnsym_py_install", None)
    if install is None:
        return None, None
    import sys

    name = f"_bnsym_entry_{id(lib):x}"
    if install(name.encode()) != 0:
        return None, None
    module = sys.modules.pop(name)
    return module.forward, module.backward


def _select_kernels(kernels) -> tuple:
    """Make ``kernels`` (from :func:`_kernels`, or None: load on next use) the ones calls use;
    returns the previous selection (``bnsym compare`` switches between two builds this way)."""
    global _K, _fb, _NULL, _CF, _CB
    previous = (_K, _fb, _NULL, (_CF, _CB)) if _K is not None else None
    if kernels is None:
        _K = _CF = _CB = None
    else:
        _K, _fb, _NULL, (_CF, _CB) = kernels
    return previous


def _perm(nd: int) -> tuple:
    p = _PERMS.get(nd)
    if p is None:
        p = _PERMS[nd] = (0,) + tuple(range(2, nd)) + (1,)
    return p


def _layout(x: np.ndarray):
    """(array to use, layout, perm): ncs when C-contiguous, nsc when channels-last, else a copy."""
    if x.flags.c_contiguous:
        return x, "ncs", None
    nd = x.ndim
    if nd > 2:
        p = _perm(nd)
        if x.transpose(p).flags.c_contiguous:
            return x, "nsc", p
    return np.ascontiguousarray(x), "ncs", None


def _layout_tag(x: np.ndarray) -> str:
    """The layout of the kernel's output for input ``x``: "ncs" or "nsc" (no copy made)."""
    if x.flags.c_contiguous:
        return "ncs"
    if x.ndim > 2 and x.transpose(_perm(x.ndim)).flags.c_contiguous:
        return "nsc"
    return "ncs"


def _input(x):
    """Fast validation of the input; returns (x, dtype)."""
    if type(x) is _ndarray and x.ndim >= 2:
        dt = x.dtype
        if dt is _F32 or dt is _F64:
            return x, dt
    x = _checks.input_array(x)
    return x, (_F32 if x.dtype == _F32 else _F64)


def _chan(a, name, dt, C):
    """A read-only per-channel operand: the fast test, else _checks (explains or copies).
    Returns (the array or None, whether it owns its memory: see :func:`_owner`; True for None)."""
    if a is None:
        return None, True
    if type(a) is _ndarray and a.dtype is dt and a.shape == (C,) and (f := a.flags).c_contiguous:
        return a, f.owndata
    a = _checks.channel_array(a, name, dt, C)
    return a, a.flags.owndata


def _out(o, name, shape, dt, layout, perm=None):
    """An ``out=`` array: the inline test, else _checks.out_array (explains)."""
    if (type(o) is _ndarray and o.dtype is dt and o.shape == shape and (f := o.flags).writeable
            and (f.c_contiguous if perm is None else o.transpose(perm).flags.c_contiguous)):
        return o
    return _checks.out_array(o, name, shape, dt, layout, perm)


def _owner(a):
    """The array that owns ``a``'s memory: ``a`` itself, or its base when that is an ndarray that
    owns its memory (``a`` is a view of it: a channels-last transpose, a slice); else None (memory
    of another object, or of a view of one: the pointers decide).

    Two different arrays that own their memory are two allocations, and a view lies inside its
    base's: arrays with different owners never overlap, which the checks below decide without
    comparing addresses."""
    if a.flags.owndata:
        return a
    b = a.base
    if type(b) is _ndarray and b.flags.owndata:
        return b
    return None


def _owner_id(a):
    """``id`` of :func:`_owner` of ``a``, or None."""
    o = _owner(a)
    return None if o is None else id(o)


def _apart(written, read) -> bool:
    """True when the arrays given (None skipped) all have owners (:func:`_owner`) and each
    written array's owner is no other array's: then nothing written overlaps another operand
    (read-only operands may share memory among themselves)."""
    seen = set()
    for a in read:
        if a is not None:
            if a.flags.owndata:  # the common case inline
                seen.add(id(a))
            else:
                i = _owner_id(a)
                if i is None:
                    return False
                seen.add(i)
    for a in written:
        if a is not None:
            i = id(a) if a.flags.owndata else _owner_id(a)
            if i is None or i in seen:
                return False
            seen.add(i)
    return True


def _empty_like_layout(x: np.ndarray, layout: str) -> np.ndarray:
    return np.empty_like(x) if layout == "nsc" else np.empty(x.shape, x.dtype)


# --------------------------------------------------------------------------- forward


def _forward(x, weight, bias, running_mean, running_var, training, momentum, eps, out,
             save_mean, save_invstd, want_save, skip_nonfinite, backend):
    """Shared forward. Returns (y, save_mean, save_invstd, skipped)."""
    if (cf := _CF) is not None and type(backend) is str and backend == "c":
        # the common call, checked and run in C (None: not one it takes; an int: the kernel's
        # error code); every other call, and every error, is the Python path's below
        r = cf(x, weight, bias, running_mean, running_var, training, momentum, eps, out,
               save_mean, save_invstd, want_save, skip_nonfinite, _EMPTIES, _num_threads)
        if type(r) is tuple:
            return r
        if r is not None:
            _kernel_failed(r, "forward_train" if training else "forward_eval")
    # ---- validation (inline fast tests; _checks explains failures) ----
    if not (type(x) is _ndarray and x.ndim >= 2 and ((dt := x.dtype) is _F32 or dt is _F64)):
        x = _checks.input_array(x)
        dt = _F32 if x.dtype == _F32 else _F64
    shape = x.shape
    C = shape[1]
    cs = (C,)
    if training is not True and training is not False:
        training = _checks.flag(training, "training")
    if skip_nonfinite is not False and skip_nonfinite is not True:
        skip_nonfinite = _checks.flag(skip_nonfinite, "skip_nonfinite")
    # ``own``: every array checked so far owns its memory (two different such arrays never
    # overlap, which decides the overlap checks below without comparing pointers)
    w, b, rm, rv = weight, bias, running_mean, running_var
    own = True
    if w is not None:
        if type(w) is _ndarray and w.dtype is dt and w.shape == cs and (f := w.flags).c_contiguous:
            own = f.owndata
        else:
            w = _checks.channel_array(w, "weight", dt, C)
            own = w.flags.owndata
    if b is not None:
        if type(b) is _ndarray and b.dtype is dt and b.shape == cs and (f := b.flags).c_contiguous:
            own = own and f.owndata
        else:
            b = _checks.channel_array(b, "bias", dt, C)
            own = own and b.flags.owndata
    if rm is not None:
        if not (type(rm) is _ndarray and rm.dtype is dt and rm.shape == cs
                and (f := rm.flags).c_contiguous and (f.writeable or not training)):
            rm = _checks.channel_array(rm, "running_mean", dt, C, inplace=training)
            f = rm.flags
        own = own and f.owndata
    if rv is not None:
        if not (type(rv) is _ndarray and rv.dtype is dt and rv.shape == cs
                and (f := rv.flags).c_contiguous and (f.writeable or not training)):
            rv = _checks.channel_array(rv, "running_var", dt, C, inplace=training)
            f = rv.flags
        own = own and f.owndata
    if type(eps) is not float or not (0.0 < eps < _INF):
        eps = _checks.eps(eps)
    if type(momentum) is not float or not (0.0 <= momentum <= 1.0):
        momentum = _checks.momentum(momentum, used=training and (rm is not None or rv is not None))
        if momentum is None:
            momentum = 0.0
    if type(backend) is not str or backend != "c":
        backend = _checks.backend(backend)
    size = x.size
    NC = shape[0] * C
    S = size // NC if NC else 0
    if training:
        if (rm is None) is not (rv is None):
            raise ValueError("running_mean and running_var must either both be None or neither be None")
        if shape[0] * S == 1:
            _checks.training_batch(shape)
    elif rm is None or rv is None:
        raise ValueError(
            "running_mean and running_var must be given in evaluation mode (training=False)"
        )
    x0 = x
    # ``xo``: the owner of the input's memory (see _owner): the input, or for a view (a batch
    # sliced from a larger array, a channels-last transpose) its base. A statistic, of shape (C,),
    # cannot hold a training batch (N*S > 1 rows of C), but it is excluded all the same.
    if (f := x.flags).c_contiguous:
        perm = None
        layout = "ncs"
        if f.owndata:
            xo = x
        else:
            xo = _owner(x) if own else None
            own = xo is not None and xo is not rm and xo is not rv
    else:
        x, layout, perm = _layout(x)
        # a copy (other strides) leaves the caller's array to the pointer checks
        xo = _owner(x) if own and x is x0 else None
        own = xo is not None and xo is not rm and xo is not rv
    if out is not None:
        out = _out(out, "out", shape, dt, layout, perm)
    if training and want_save:
        if save_mean is not None:
            save_mean = _out(save_mean, "save_mean", cs, dt, "ncs")
        if save_invstd is not None:
            save_invstd = _out(save_invstd, "save_invstd", cs, dt, "ncs")
    else:
        save_mean = save_invstd = None

    if backend == "numpy" or size == 0:
        return _forward_numpy(x0, x, layout, w, b, rm, rv, training, momentum, eps, out,
                              save_mean, save_invstd, want_save, skip_nonfinite)

    # ---- pointers (everything below is valid: from_buffer cannot fail) ----
    kern = (_K or _init())[2 * (dt is _F64) + (perm is not None)]
    fb, NULL = _fb, _NULL
    xk = x if perm is None else x.transpose(perm)  # the C-contiguous view the kernel reads
    px = fb(xk)
    pw = NULL if w is None else fb(w)
    pb = NULL if b is None else fb(b)
    prm = NULL if rm is None else fb(rm)
    prv = NULL if rv is None else fb(rv)
    if out is None:
        yk = np.empty(shape if perm is None else xk.shape, dt)
        out = yk if perm is None else yk.transpose(_inv_perm(len(shape)))
        py = fb(yk)
        own_out = True
        oo = yk
    else:
        py = fb(out if perm is None else out.transpose(perm))
        if x is not x0:  # the kernel reads a copy: check out against the caller's array too
            _checks.no_overlap([("out", out)], [("input", x0)])
        # out may be exactly the input (in place); owners decide the rest (see _owner)
        oo = (out if out.flags.owndata else _owner(out)) if own else None
        own_out = (oo is not None and oo is not w and oo is not b and oo is not rm
                   and oo is not rv and (oo is not xo or out is x0))
        if not own_out:
            _overlap("out", py, (("input", px), ("weight", pw), ("bias", pb),
                                 ("running_mean", prm), ("running_var", prv)), NULL, alias="input")
    N = shape[0]
    if training:
        if rm is not None or rv is not None:
            # running statistics are written in place: they must not overlap any other operand
            # (different arrays that all own their memory never overlap: decided without
            # comparing pointers; a statistic, of shape (C,), is never the input itself)
            if not (own and own_out and rm is not rv
                    and (rm is None or (rm is not w and rm is not b))
                    and (rv is None or (rv is not w and rv is not b))):
                ops = (("input", px), ("out", py), ("weight", pw), ("bias", pb),
                       ("running_mean", prm), ("running_var", prv))
                if x is not x0:
                    _checks.no_overlap([("running_mean", rm), ("running_var", rv)],
                                       [("input", x0)])
                if rm is not None:
                    _overlap("running_mean", prm, ops, NULL)
                if rv is not None:
                    _overlap("running_var", prv, ops, NULL)
        if want_save:
            user_sm, user_si = save_mean is not None, save_invstd is not None
            if save_mean is None:
                save_mean = np.empty(C, dt)
            psm = fb(save_mean)
            if save_invstd is None:
                save_invstd = np.empty(C, dt)
            psi = fb(save_invstd)
            # (with ``own`` and ``own_out``, a save output that owns its memory and is no other
            # operand overlaps none; being of shape (C,), it can only be another per-channel
            # array: the owners of the input and the output hold N*S >= 2 rows of C values)
            if (user_sm or user_si) and not (
                    own and own_out
                    and (not user_sm or (save_mean.flags.owndata and save_mean is not w
                                         and save_mean is not b and save_mean is not rm
                                         and save_mean is not rv and save_mean is not save_invstd))
                    and (not user_si or (save_invstd.flags.owndata and save_invstd is not w
                                         and save_invstd is not b and save_invstd is not rm
                                         and save_invstd is not rv))):
                ops = (("input", px), ("out", py), ("weight", pw), ("bias", pb),
                       ("running_mean", prm), ("running_var", prv), ("save_mean", psm),
                       ("save_invstd", psi))
                if user_sm:
                    _overlap("save_mean", psm, ops, NULL)
                if user_si:
                    _overlap("save_invstd", psi, ops, NULL)
        else:
            psm = psi = NULL
        rc = kern[0](N, C, S, px, py, pw, pb, prm, prv, psm, psi, eps, momentum,
                     1 if skip_nonfinite else 0, _num_threads)
        if rc:
            if rc == 1:
                return out, save_mean, save_invstd, True
            _kernel_failed(rc, "forward_train")
        return out, save_mean, save_invstd, False
    rc = kern[1](N, C, S, px, py, pw, pb, prm, prv, eps, _num_threads)
    if rc:
        _kernel_failed(rc, "forward_eval")
    e = _EMPTY[dt]
    return out, e, e, False


def _kernel_failed(rc: int, kernel: str):
    """Raise the error of a kernel's nonzero return code (-1: a workspace allocation failed)."""
    if rc == -1:
        raise MemoryError(f"bnsym: out of memory in {kernel}")
    raise RuntimeError(f"bnsym: {kernel} failed (code {rc})")


def _overlap(wname, w, operands, NULL, alias=None):
    """Raise ValueError when written pointer ``w`` overlaps an operand (all arrays are dense).

    ``alias``: the operand ``w`` may be exactly (same start, same length) for in-place calls.
    """
    w1 = w + len(w)
    for oname, o in operands:
        if o is NULL or oname == wname:
            continue
        if w < o + len(o) and o < w1:
            if oname == alias:
                if w == o and len(w) == len(o):
                    continue
                raise ValueError(f"{wname} overlaps {oname} in memory ({wname} may be exactly "
                                 f"{oname} for an in-place call, but not a shifted or "
                                 f"reshaped view of it)")
            raise ValueError(f"{wname} overlaps {oname} in memory")


def _count(shape) -> int:
    m = shape[0]
    for s in shape[2:]:
        m *= s
    return m


_INV: dict[int, tuple] = {}


def _inv_perm(nd: int) -> tuple:
    p = _INV.get(nd)
    if p is None:
        p = _INV[nd] = (0, nd - 1) + tuple(range(1, nd - 1))
    return p


def _forward_numpy(x0, x, layout, w, b, rm, rv, training, momentum, eps, out, save_mean,
                   save_invstd, want_save, skip_nonfinite):
    """NumPy backend (also the empty-input path of the C backend)."""
    dt = x.dtype
    C = x.shape[1]
    written = [("out", out), ("save_mean", save_mean), ("save_invstd", save_invstd)]
    if training:
        written += [("running_mean", rm), ("running_var", rv)]
    operands = [("input", x0), ("weight", w), ("bias", b), ("running_mean", rm),
                ("running_var", rv), ("out", out), ("save_mean", save_mean),
                ("save_invstd", save_invstd)]
    _checks.no_overlap(written, operands, allow_alias={("out", "input")})
    if out is None:
        out = _empty_like_layout(x, layout)
    skipped = False
    if x.size == 0:
        # PyTorch: empty output, running statistics untouched.
        if training and want_save:
            save_mean = _fill(save_mean, C, dt, np.nan)
            save_invstd = _fill(save_invstd, C, dt, np.nan)
        elif not training:
            save_mean = save_invstd = _EMPTY[dt]
        return out, save_mean, save_invstd, False
    if training:
        y, mean, var, invstd = _ref.forward_train(x, w, b, eps)
        if rm is not None or rv is not None:
            finite = bool(np.isfinite(mean).all() and np.isfinite(var).all())
            if skip_nonfinite and not finite:
                skipped = True
            else:
                new_mean, new_var = _ref.update_running(rm, rv, mean, var, _count(x.shape), momentum)
                if rm is not None:
                    rm[...] = new_mean
                if rv is not None:
                    rv[...] = new_var
        elif skip_nonfinite:
            skipped = not bool(np.isfinite(mean).all() and np.isfinite(var).all())
        if want_save:
            save_mean = _fill(save_mean, C, dt, mean)
            save_invstd = _fill(save_invstd, C, dt, invstd)
    else:
        y = _ref.forward_eval(x, w, b, rm, rv, eps)
        save_mean = save_invstd = _EMPTY[dt]
    with np.errstate(over="ignore", invalid="ignore"):
        out[...] = y
    return out, save_mean, save_invstd, skipped


def _fill(dst, C, dt, value):
    if dst is None:
        dst = np.empty(C, dt)
    with np.errstate(over="ignore", invalid="ignore"):
        dst[...] = value
    return dst


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, out=None, skip_nonfinite=False, backend="c"):
    """``torch.nn.functional.batch_norm`` for NumPy arrays; returns the normalized array.

    In training mode the batch statistics normalize the input and the running statistics (when
    given, as contiguous writeable arrays of shape (C,)) are updated in place; in evaluation mode
    the running statistics normalize the input and are required. See the module docstring for
    layouts, ``out=``, ``skip_nonfinite`` and ``backend``.
    """
    y, _, _, skipped = _forward(input, weight, bias, running_mean, running_var, training,
                                momentum, eps, out, None, None, False, skip_nonfinite, backend)
    if skipped:
        _warn_skipped()
    return y


def batch_norm_forward(input, weight, bias, running_mean, running_var, training, momentum, eps,
                       *, out=None, save_mean=None, save_invstd=None, skip_nonfinite=False,
                       backend="c"):
    """``aten.native_batch_norm``: ``(output, save_mean, save_invstd)``.

    Training: ``save_mean`` is the batch mean and ``save_invstd`` ``1/sqrt(var + eps)`` of the
    biased batch variance, both of shape (C,) in the input's dtype (``save_mean=`` /
    ``save_invstd=`` may supply the arrays). Evaluation: both are empty arrays of shape (0,), as
    aten's CPU kernel returns (read-only, shared).
    """
    if (training is True or type(training) is np.bool_ and training) and isinstance(input, _ndarray) \
            and input.size == 0:
        # aten.native_batch_norm refuses empty input in training mode (batch_norm does not).
        raise ValueError(f"input tensor must have at least one element, but got input size "
                         f"{_checks.shape_str(input.shape)} (use batch_norm for empty batches)")
    y, sm, si, skipped = _forward(input, weight, bias, running_mean, running_var, training,
                                  momentum, eps, out, save_mean, save_invstd, True,
                                  skip_nonfinite, backend)
    if skipped:
        _warn_skipped()
    return y, sm, si


def _warn_skipped(stacklevel: int = 3) -> None:
    warnings.warn(
        "bnsym: non-finite batch statistics (NaN or inf in the batch mean or variance); "
        "running statistics left untouched", NonFiniteBatchWarning, stacklevel=stacklevel)


# --------------------------------------------------------------------------- backward

_ALL = (True, True, True)


def batch_norm_backward(grad_output, input, weight, running_mean, running_var, save_mean,
                        save_invstd, training, eps, output_mask=_ALL, *, out=None, backend="c"):
    """``aten.native_batch_norm_backward``: ``(grad_input, grad_weight, grad_bias)``.

    Training: the gradient through the batch statistics, from ``save_mean`` / ``save_invstd``
    of the forward (required; the running statistics are ignored). Evaluation: the statistics
    are constants, ``running_mean`` / ``running_var`` (required) and ``eps`` give them.
    ``weight=None`` means 1. ``output_mask`` selects the gradients to compute; a masked-off
    gradient is returned as None. ``out``: None or a tuple of 3 arrays-or-None receiving the
    gradients (``grad_input`` in the layout the kernel writes: that of ``input``). No output may
    overlap any operand, except that ``grad_input`` may be exactly ``grad_output`` (in place).
    ``grad_output`` is copied to the input's layout when they differ.
    """
    if (cb := _CB) is not None and type(backend) is str and backend == "c":
        # the common call in C (see _forward)
        r = cb(grad_output, input, weight, running_mean, running_var, save_mean, save_invstd,
               training, eps, output_mask, out, _num_threads)
        if type(r) is tuple:
            return r
        if r is not None:
            _kernel_failed(r, "batch_norm_backward")
    x, dt = _input(input)
    shape = x.shape
    C = shape[1]
    if training is not True and training is not False:
        training = _checks.flag(training, "training")
    dy = grad_output
    if not (type(dy) is _ndarray and dy.dtype is dt and dy.shape == shape):
        dy = _checks.like_input(dy, "grad_output", x)
    # ``own``: every operand checked so far owns its memory (see _owner: the overlap checks of
    # out= below are then decided by identity alone)
    w, own = _chan(weight, "weight", dt, C)
    if training:
        if save_mean is None or save_invstd is None:
            raise ValueError("save_mean and save_invstd (from the training forward) are required "
                             "when training=True")
        sa, own_a = _chan(save_mean, "save_mean", dt, C)
        sb, own_b = _chan(save_invstd, "save_invstd", dt, C)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var must be given in evaluation mode "
                             "(training=False)")
        sa, own_a = _chan(running_mean, "running_mean", dt, C)
        sb, own_b = _chan(running_var, "running_var", dt, C)
    own = own and own_a and own_b
    if type(eps) is not float or not (0.0 < eps < _INF):
        eps = _checks.eps(eps)
    if output_mask is not _ALL and not (
            type(output_mask) is tuple and len(output_mask) == 3 and type(output_mask[0]) is bool
            and type(output_mask[1]) is bool and type(output_mask[2]) is bool):
        output_mask = _checks.output_mask(output_mask)
    m0, m1, m2 = output_mask
    if type(backend) is not str or backend != "c":
        backend = _checks.backend(backend)
    x0, dy0 = x, dy
    if (f := x.flags).c_contiguous:
        layout, perm = "ncs", None
        own = own and f.owndata
    else:
        x, layout, perm = _layout(x)
        own = False  # a view (channels-last) or a copy: the owners or the pointers decide
    gi = gw = gb = None
    if out is not None:
        if not (isinstance(out, (tuple, list)) and len(out) == 3):
            raise TypeError("out must be a tuple of 3 arrays or None (grad_input, grad_weight, grad_bias)")
        gi, gw, gb = out
        if (gi is not None and not m0) or (gw is not None and not m1) or (gb is not None and not m2):
            for i, (o, m, name) in enumerate(((gi, m0, "grad_input"), (gw, m1, "grad_weight"),
                                              (gb, m2, "grad_bias"))):
                if o is not None and not m:
                    raise ValueError(f"out[{i}] ({name}) is given but output_mask[{i}] is False")
        if gi is not None:
            gi = _out(gi, "out[0] (grad_input)", shape, dt, layout, perm)
        if gw is not None:
            gw = _out(gw, "out[1] (grad_weight)", (C,), dt, "ncs")
        if gb is not None:
            gb = _out(gb, "out[2] (grad_bias)", (C,), dt, "ncs")
        sa_name, sb_name = (("save_mean", "save_invstd") if training
                            else ("running_mean", "running_var"))
        # The operands may share objects among themselves (nothing writes them). When every
        # operand and output owns its memory (the common case), different arrays are different
        # allocations and only identity can overlap (grad_input, of the input's shape, is never a
        # per-channel array); otherwise the owners (_apart), then the pointers, decide.
        if not (own and dy0.flags.owndata
                and (gi is None or (gi is not x0 and gi is not dy0 and gi.flags.owndata))
                and (gw is None or (gw is not w and gw is not sa and gw is not sb
                                    and gw is not gb and gw.flags.owndata))
                and (gb is None or (gb is not w and gb is not sa and gb is not sb
                                    and gb.flags.owndata))) \
                and not _apart((gi, gw, gb), (x0, dy0, w, sa, sb)):
            _checks.no_overlap(
                [("grad_input", gi), ("grad_weight", gw), ("grad_bias", gb)],
                [("input", x0), ("grad_output", dy0), ("weight", w), (sa_name, sa), (sb_name, sb),
                 ("grad_input", gi), ("grad_weight", gw), ("grad_bias", gb)],
                allow_alias={("grad_input", "grad_output")},
            )
    # grad_output in the kernel's layout.
    if layout == "nsc":
        if not dy.transpose(perm).flags.c_contiguous:
            dy = np.empty_like(x)
            np.copyto(dy, dy0)
    elif not dy.flags.c_contiguous:
        dy = np.ascontiguousarray(dy)

    if backend == "numpy" or x.size == 0:
        return _backward_numpy(dy, x, layout, w, sa, sb, training, eps, m0, m1, m2, gi, gw, gb)

    kern = (_K or _init())[2 * (dt is _F64) + (layout == "nsc")]
    fb, NULL = _fb, _NULL
    if layout == "nsc":
        px = fb(x.transpose(perm))
        pdy = fb(dy.transpose(perm))
        if m0:
            if gi is None:
                gi = np.empty_like(x)
            pgi = fb(gi.transpose(perm))
        else:
            pgi = NULL
    else:
        px = fb(x)
        pdy = fb(dy)
        if m0:
            if gi is None:
                gi = np.empty(shape, dt)
            pgi = fb(gi)
        else:
            pgi = NULL
    if m1:
        if gw is None:
            gw = np.empty(C, dt)
        pgw = fb(gw)
    else:
        pgw = NULL
    if m2:
        if gb is None:
            gb = np.empty(C, dt)
        pgb = fb(gb)
    else:
        pgb = NULL
    pw = NULL if w is None else fb(w)
    N = shape[0]
    S = x.size // (N * C)
    if training:
        rc = kern[2](N, C, S, pdy, px, pw, fb(sa), fb(sb), pgi, pgw, pgb, _num_threads)
    else:
        rc = kern[3](N, C, S, pdy, px, pw, fb(sa), fb(sb), pgi, pgw, pgb, eps,
                     _num_threads)
    if rc:
        _kernel_failed(rc, "batch_norm_backward")
    return gi, gw, gb


def _backward_numpy(dy, x, layout, w, sa, sb, training, eps, m0, m1, m2, gi, gw, gb):
    dt = x.dtype
    C = x.shape[1]
    if x.size == 0:
        # PyTorch: empty grad_input, zero grad_weight / grad_bias.
        dx = np.zeros(x.shape)
        dgw = dgb = np.zeros(C)
    elif training:
        dx, dgw, dgb = _ref.backward_train(dy, x, w, sa, sb)
    else:
        dx, dgw, dgb = _ref.backward_eval(dy, x, w, sa, sb, eps)
    with np.errstate(over="ignore", invalid="ignore"):
        if m0:
            if gi is None:
                gi = _empty_like_layout(x, layout)
            gi[...] = dx
        if m1:
            gw = _fill(gw, C, dt, dgw)
        if m2:
            gb = _fill(gb, C, dt, dgb)
    return (gi if m0 else None), (gw if m1 else None), (gb if m2 else None)
