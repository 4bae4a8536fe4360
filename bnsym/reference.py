"""The independent NumPy reference of Batch Normalization (float64), also the ``numpy`` backend.

Written by hand from the textbook formulas, independently of the derivation and the templates,
so that tests compare the compiled kernels against something that shares no code with them.
Everything is computed in float64 whatever the input dtype. Arrays are ``(N, C, *spatial)``
with any strides; statistics are per channel over the axes ``(0, 2, 3, ...)``; per-channel
arrays have shape ``(C,)``; ``None`` for weight / bias means 1 / 0.

PyTorch semantics (CPU):

* forward, training: ``mean``, biased ``var`` (two passes), ``invstd = 1/sqrt(var + eps)``,
  ``y = (x - mean) * invstd * weight + bias``;
* running statistics: ``new = (1 - momentum) * old + momentum * batch``, the running variance
  takes the unbiased batch variance ``var * m / (m - 1)``;
* forward, evaluation: the same with ``running_mean`` and ``running_var``;
* backward, training: ``dx = weight*invstd/m * (m*dy - sum(dy) - xhat*sum(dy*xhat))``,
  ``dweight = sum(dy*xhat)``, ``dbias = sum(dy)``;
* backward, evaluation (frozen statistics): ``dx = weight*invstd_running*dy``,
  ``dweight = sum(dy*(x - running_mean)*invstd_running)``, ``dbias = sum(dy)``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "reduce_axes",
    "channel_view",
    "batch_stats",
    "forward_train",
    "forward_eval",
    "update_running",
    "backward_train",
    "backward_eval",
]


def reduce_axes(ndim: int) -> tuple[int, ...]:
    """The axes a channel is reduced over: all but axis 1."""
    return (0,) + tuple(range(2, ndim))


def channel_view(v, ndim: int, default: float = 0.0) -> np.ndarray:
    """A per-channel vector (or None -> ``default``) as float64, broadcastable against the input."""
    if v is None:
        return np.asarray(default, dtype=np.float64)
    return np.asarray(v, dtype=np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def _quiet(fn):
    """Non-finite input propagates silently (NaN/inf results, no RuntimeWarning), as in C."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return wrapper


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


@_quiet
def batch_stats(x) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance, two passes in float64 over ``d = x - k``.

    ``k`` is each channel's first value (0 if it is not finite), so that the squares are those
    of deviations: with a mean beyond ``sqrt(DBL_MAX)`` (1.3e154) and a finite variance, a mean
    off by one rounding would square to inf (a constant channel of 1e200 would get variance
    inf); ``mean = k + mean(d)``, ``var = mean((d - mean(d))**2)``.
    """
    x = _f64(x)
    nd = x.ndim
    axes = reduce_axes(nd)
    k = x[(0, slice(None)) + (0,) * (nd - 2)] if x.shape[0] and x.size else np.zeros(x.shape[1])
    k = np.where(np.isfinite(k), k, 0.0)
    d = x - channel_view(k, nd)
    dmean = d.mean(axis=axes)
    var = np.square(d - channel_view(dmean, nd)).mean(axis=axes)
    return k + dmean, var


def invstd_of(var, eps: float) -> np.ndarray:
    """``1/sqrt(var + eps)``; 0 where ``var + eps`` is 0 (PyTorch's convention)."""
    s = _f64(var) + eps
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 1.0 / np.sqrt(s)
    return np.where(s == 0, 0.0, out)


@_quiet
def forward_train(x, weight=None, bias=None, eps: float = 1e-5):
    """Training forward: ``(y, mean, var_biased, invstd)``, all float64."""
    x = _f64(x)
    mean, var = batch_stats(x)
    invstd = invstd_of(var, eps)
    nd = x.ndim
    xhat = (x - channel_view(mean, nd)) * channel_view(invstd, nd)
    y = xhat * channel_view(weight, nd, 1.0) + channel_view(bias, nd, 0.0)
    return y, mean, var, invstd


@_quiet
def forward_eval(x, weight, bias, running_mean, running_var, eps: float = 1e-5) -> np.ndarray:
    """Evaluation forward with frozen statistics, float64."""
    x = _f64(x)
    nd = x.ndim
    invstd = invstd_of(running_var, eps)
    xhat = (x - channel_view(running_mean, nd)) * channel_view(invstd, nd)
    return xhat * channel_view(weight, nd, 1.0) + channel_view(bias, nd, 0.0)


@_quiet
def update_running(running_mean, running_var, mean, var, m: int, momentum: float):
    """New running statistics (float64; the caller stores them): PyTorch's update rule."""
    new_mean = new_var = None
    if running_mean is not None:
        new_mean = (1.0 - momentum) * _f64(running_mean) + momentum * _f64(mean)
    if running_var is not None:
        unbiased = _f64(var) * (m / (m - 1)) if m > 1 else np.full_like(_f64(var), np.nan)
        new_var = (1.0 - momentum) * _f64(running_var) + momentum * unbiased
    return new_mean, new_var


@_quiet
def backward_train(grad_output, x, weight, mean, invstd):
    """Training backward (batch statistics): ``(dx, dweight, dbias)``, float64."""
    dy, x = _f64(grad_output), _f64(x)
    nd = x.ndim
    axes = reduce_axes(nd)
    m = x.size // x.shape[1] if x.shape[1] else 0
    xhat = (x - channel_view(mean, nd)) * channel_view(invstd, nd)
    sum_dy = dy.sum(axis=axes)
    sum_dy_xhat = (dy * xhat).sum(axis=axes)
    scale = channel_view(weight, nd, 1.0) * channel_view(invstd, nd) / m if m else 0.0
    dx = scale * (m * dy - channel_view(sum_dy, nd) - xhat * channel_view(sum_dy_xhat, nd))
    return dx, sum_dy_xhat, sum_dy


@_quiet
def backward_eval(grad_output, x, weight, running_mean, running_var, eps: float = 1e-5):
    """Evaluation backward (frozen statistics): ``(dx, dweight, dbias)``, float64."""
    dy, x = _f64(grad_output), _f64(x)
    nd = x.ndim
    axes = reduce_axes(nd)
    invstd = invstd_of(running_var, eps)
    xhat = (x - channel_view(running_mean, nd)) * channel_view(invstd, nd)
    dx = dy * channel_view(weight, nd, 1.0) * channel_view(invstd, nd)
    return dx, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)
