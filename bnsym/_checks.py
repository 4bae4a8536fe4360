"""Argument validation for the public API: clear exceptions before any C code runs.

The API functions test the common, valid case inline (a handful of attribute reads); when that
quick test fails they call the functions here, which either return a usable value (a contiguous
copy of a read-only argument, a Python float for a NumPy scalar) or raise a ``TypeError`` /
``ValueError`` naming the argument and what was expected. Nothing here modifies an argument, so
a call that raises leaves every array, running statistics included, exactly as it was.
"""

from __future__ import annotations

import math
import numbers
import sys

import numpy as np

# numpy.exceptions exists from NumPy 1.25; the project allows 1.24.
_TooHardError = getattr(getattr(np, "exceptions", np), "TooHardError", Exception)

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
SUPPORTED = (F32, F64)


def describe_dtype(dt: np.dtype) -> str:
    if not dt.isnative and dt.newbyteorder("=") in SUPPORTED:
        return f"{dt.newbyteorder('=')} in non-native byte order ({dt.str!r})"
    return str(dt)


def shape_str(shape) -> str:
    """A shape as PyTorch prints a size, e.g. ``(1, 3)`` (a tuple: NumPy has no torch.Size)."""
    return str(tuple(int(s) for s in shape))


def array(a, name: str) -> np.ndarray:
    """``a`` must be a NumPy array of float32 or float64 (native byte order)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy.ndarray of float32 or float64, got {type(a).__name__}"
            + (" (convert it with numpy.asarray(..., dtype=numpy.float32))"
               if isinstance(a, (list, tuple, numbers.Number)) else "")
        )
    _not_masked(a, name)
    dt = a.dtype
    if not (dt == F32 or dt == F64) or not dt.isnative:
        raise TypeError(
            f"{name} has dtype {describe_dtype(dt)}; bnsym supports float32 and float64 "
            f"in native byte order (convert with {name}.astype(numpy.float32))"
        )
    return a


def _not_masked(a: np.ndarray, name: str) -> None:
    """A masked array's mask would be ignored (the kernels see its data): refused."""
    ma = sys.modules.get("numpy.ma")  # never imported here: no masked array exists without it
    if ma is not None and isinstance(a, ma.MaskedArray):
        raise TypeError(
            f"{name} is a numpy.ma.MaskedArray, whose mask bnsym would ignore; pass "
            f"{name}.filled(value) or {name}.data"
        )


def input_array(x, name: str = "input") -> np.ndarray:
    """The (N, C, *spatial) input: a float32/float64 array with at least 2 dimensions."""
    x = array(x, name)
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have at least 2 dimensions (N, C, *spatial), got shape {shape_str(x.shape)}"
        )
    return x


def same_dtype(a: np.ndarray, name: str, dtype: np.dtype, ref_name: str = "input") -> None:
    if a.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {a.dtype} but {ref_name} has dtype {dtype}: all arrays of a call "
            f"must share one dtype (convert with {name}.astype(numpy.{dtype}))"
        )


def channel_array(a, name: str, dtype: np.dtype, C: int, *, inplace: bool = False) -> np.ndarray:
    """A per-channel array of shape (C,) and the input's dtype.

    Read-only arguments (``inplace=False``) that are not contiguous are copied; arguments
    updated in place (running statistics in training mode) must be contiguous and writeable:
    they are rejected, never silently copied (the update would be lost).
    """
    a = array(a, name)
    same_dtype(a, name, dtype)
    if a.shape != (C,):
        raise ValueError(
            f"{name} must have shape ({C},) (one value per channel of the input), "
            f"got shape {shape_str(a.shape)}"
        )
    if inplace:
        if not a.flags.writeable:
            raise ValueError(f"{name} is read-only, but it is updated in place in training mode")
        if not a.flags.c_contiguous:
            raise ValueError(
                f"{name} is not contiguous (strides {a.strides}); it is updated in place in "
                f"training mode, so pass a contiguous array (numpy.ascontiguousarray) and keep it"
            )
        return a
    if not a.flags.c_contiguous:
        return np.ascontiguousarray(a)
    return a


def like_input(a, name: str, x: np.ndarray, x_name: str = "input") -> np.ndarray:
    """An element-wise operand (grad_output) of the input's shape and dtype."""
    a = array(a, name)
    same_dtype(a, name, x.dtype, x_name)
    if a.shape != x.shape:
        raise ValueError(
            f"{name} must have the shape of {x_name} {shape_str(x.shape)}, got {shape_str(a.shape)}"
        )
    return a


def flag(v, name: str) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    raise TypeError(f"{name} must be a bool, got {type(v).__name__} {v!r}")


def eps(v) -> float:
    """``eps`` must be a finite real number > 0."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"eps must be a finite number > 0, got {type(v).__name__} {v!r}")
    f = float(v)
    if not (math.isfinite(f) and f > 0.0):
        raise ValueError(f"eps must be a finite number > 0, got {v!r}")
    return f


def momentum(v, *, used: bool) -> float | None:
    """``momentum`` must be a number in [0, 1]; None only where it is not used."""
    if v is None:
        if used:
            raise ValueError(
                "momentum=None (cumulative moving average) needs the number of batches seen: "
                "use bnsym.BatchNorm(momentum=None), or pass momentum=1/num_batches_tracked"
            )
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"momentum must be a number in [0, 1] or None, got {type(v).__name__} {v!r}")
    f = float(v)
    if not (0.0 <= f <= 1.0):
        raise ValueError(f"momentum must be in [0, 1], got {v!r}")
    return f


def training_batch(shape) -> None:
    """PyTorch's check: more than one value per channel when training."""
    m = int(shape[0])
    for s in shape[2:]:
        m *= int(s)
    if m == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {shape_str(shape)}"
        )


def output_mask(mask) -> tuple[bool, bool, bool]:
    """A sequence of three bools (grad_input, grad_weight, grad_bias)."""
    if isinstance(mask, (str, bytes)) or not hasattr(mask, "__len__") or not hasattr(mask, "__iter__"):
        raise TypeError(
            f"output_mask must be a sequence of 3 bools (grad_input, grad_weight, grad_bias), "
            f"got {type(mask).__name__} {mask!r}"
        )
    items = list(mask)
    if len(items) != 3:
        raise ValueError(
            f"output_mask must have 3 entries (grad_input, grad_weight, grad_bias), got {len(items)}"
        )
    for i, v in enumerate(items):
        if not isinstance(v, (bool, np.bool_)):
            raise TypeError(f"output_mask[{i}] must be a bool, got {type(v).__name__} {v!r}")
    return bool(items[0]), bool(items[1]), bool(items[2])


def backend(v) -> str:
    if type(v) is not str:
        raise TypeError(f"backend must be a str, 'c' or 'numpy', got {type(v).__name__} {v!r}")
    if v in ("c", "numpy"):
        return v
    raise ValueError(f"backend must be 'c' or 'numpy', got {v!r}")


def out_array(o, name: str, shape: tuple, dtype: np.dtype, layout: str, perm=None) -> np.ndarray:
    """An ``out=`` array: exact shape and dtype, writeable, in the layout the kernel writes.

    ``layout`` is ``"ncs"`` (C-contiguous) or ``"nsc"`` (channels-last: ``o.transpose(perm)``
    C-contiguous).
    """
    if not isinstance(o, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(o).__name__}")
    _not_masked(o, name)
    if o.dtype != dtype:
        raise TypeError(f"{name} has dtype {o.dtype}, expected {dtype} (the input's dtype)")
    if o.shape != tuple(shape):
        raise ValueError(f"{name} has shape {shape_str(o.shape)}, expected {shape_str(shape)}")
    if not o.flags.writeable:
        raise ValueError(f"{name} is read-only")
    if layout == "nsc":
        if not o.transpose(perm).flags.c_contiguous:
            raise ValueError(
                f"{name} must be channels-last like the input (memory order N, *spatial, C), "
                f"got strides {o.strides}"
            )
    elif not o.flags.c_contiguous:
        raise ValueError(
            f"{name} must be C-contiguous (the layout the kernel writes for this input), "
            f"got strides {o.strides}"
        )
    return o


def _data_ptr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` are exactly the same elements (same start, shape and strides)."""
    return a.shape == b.shape and a.strides == b.strides and _data_ptr(a) == _data_ptr(b)


def no_overlap(written, operands, allow_alias=()) -> None:
    """Raise ValueError when an array written by the call overlaps any other operand.

    ``written``/``operands``: lists of ``(name, array)`` (arrays may be None). ``allow_alias``:
    pairs of names that may be exactly the same memory (``out`` and ``input``).
    """
    for wname, w in written:
        if w is None:
            continue
        w_own = w.flags.owndata
        for oname, o in operands:
            if o is None or oname == wname:
                continue
            if w_own and o is not w and o.flags.owndata:
                continue  # two distinct allocations never overlap
            if not np.may_share_memory(w, o):
                continue
            if ((wname, oname) in allow_alias or (oname, wname) in allow_alias) and same_memory(w, o):
                continue
            try:
                if not np.shares_memory(w, o, max_work=10**6):
                    continue
            except _TooHardError:
                pass  # assume the worst
            extra = ""
            if (wname, oname) in allow_alias or (oname, wname) in allow_alias:
                extra = f" ({wname} may be exactly {oname}, for an in-place call, but not a shifted or strided view of it)"
            raise ValueError(f"{wname} overlaps {oname} in memory{extra}")
