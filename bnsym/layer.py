"""``BatchNorm``: a Batch Normalization layer for NumPy networks (PyTorch ``nn.BatchNorm*d``).

Runtime path: imports neither sympy nor jinja2.

::

    bn = bnsym.BatchNorm(64)                 # float32, affine, tracks running statistics
    y = bn(x)                                # x: (N, 64), (N, 64, L), (N, 64, H, W) or (N, 64, D, H, W)
    dx = bn.backward(dy)                     # also sets bn.grad_weight, bn.grad_bias
    bn.weight -= lr * bn.grad_weight         # parameters are plain NumPy arrays
    bn.eval(); y = bn(x)                     # running statistics

Semantics follow ``torch.nn.BatchNorm2d`` (and 1d / 3d; one class takes 2-D to 5-D input):

* training mode normalizes with the batch statistics and, when ``track_running_stats``,
  updates ``running_mean`` / ``running_var`` in place (unbiased variance) and increments
  ``num_batches_tracked``; ``momentum=None`` is the cumulative average (factor
  ``1/num_batches_tracked``). Evaluation mode normalizes with the running statistics, or with
  the batch statistics when ``track_running_stats=False``.
* ``backward(grad_output)`` returns ``grad_input`` for the last ``forward`` and **overwrites**
  ``grad_weight`` / ``grad_bias`` (PyTorch accumulates into ``.grad``; here every backward sets
  them afresh, so there is nothing to zero between steps; add them up yourself to accumulate).
  The input of ``forward`` is kept (by reference) until ``backward``: do not modify it in
  between. Only one ``backward`` per ``forward``.
* ``skip_nonfinite=True``: a training batch whose mean or variance is not finite leaves the
  running statistics and ``num_batches_tracked`` untouched, sets ``last_batch_skipped`` and
  issues a :class:`bnsym.api.NonFiniteBatchWarning`.
* ``reuse_buffers=True`` (opt-in): outputs (``forward``'s result, ``grad_input``,
  ``grad_weight``, ``grad_bias``, saved statistics) are written into arrays kept from the
  previous step of the same shape and layout, so a training loop allocates nothing per step.
  The arrays returned are then **overwritten by the next call**: copy them if you keep them.
  Off by default: every call returns fresh arrays.
* ``state_dict()`` returns copies under PyTorch's key names (``weight``, ``bias``,
  ``running_mean``, ``running_var``, ``num_batches_tracked``); ``load_state_dict`` copies values
  in (NumPy arrays, PyTorch tensors or anything ``numpy.asarray`` takes), validating everything
  before changing anything.
* A call that raises changes nothing (parameters, running statistics, ``num_batches_tracked``).
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from bnsym import _checks
from bnsym import api as _api

__all__ = ["BatchNorm"]


class BatchNorm:
    """Batch Normalization over axis 1 of 2-D to 5-D NumPy input (see the module docstring)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32, *, backend="c",
                 skip_nonfinite=False, reuse_buffers=False):
        if isinstance(num_features, (bool, np.bool_)) or not isinstance(num_features, numbers.Integral):
            raise TypeError(f"num_features must be an int >= 1, got {type(num_features).__name__}")
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        dt = np.dtype(dtype)
        if dt not in (_checks.F32, _checks.F64):
            raise TypeError(f"dtype must be float32 or float64, got {dt}")
        self.num_features = int(num_features)
        self.eps = _checks.eps(eps)
        self.momentum = _checks.momentum(momentum, used=False)
        self.affine = _checks.flag(affine, "affine")
        self.track_running_stats = _checks.flag(track_running_stats, "track_running_stats")
        self.dtype = _checks.F32 if dt == _checks.F32 else _checks.F64
        self.backend = _checks.backend(backend)
        self.skip_nonfinite = _checks.flag(skip_nonfinite, "skip_nonfinite")
        self.reuse_buffers = _checks.flag(reuse_buffers, "reuse_buffers")
        C = self.num_features
        if self.affine:
            self.weight = np.ones(C, self.dtype)
            self.bias = np.zeros(C, self.dtype)
        else:
            self.weight = self.bias = None
        if self.track_running_stats:
            self.running_mean = np.zeros(C, self.dtype)
            self.running_var = np.ones(C, self.dtype)
            self.num_batches_tracked = 0
        else:
            self.running_mean = self.running_var = None
            self.num_batches_tracked = None
        self.grad_weight = None
        self.grad_bias = None
        self.training = True
        self.last_batch_skipped = False
        self._saved = None
        self._buf: dict = {}

    # ------------------------------------------------------------------ modes and parameters

    def train(self, mode: bool = True) -> "BatchNorm":
        self.training = _checks.flag(mode, "mode")
        return self

    def eval(self) -> "BatchNorm":
        return self.train(False)

    def parameters(self) -> list:
        """The learnable arrays ``[weight, bias]`` (empty when ``affine=False``)."""
        return [self.weight, self.bias] if self.affine else []

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked = 0

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            self.weight[...] = 1
            self.bias[...] = 0

    def __repr__(self) -> str:
        return (f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}, "
                f"dtype={self.dtype.name})")

    # ------------------------------------------------------------------ forward / backward

    def __call__(self, x):
        return self.forward(x)

    def _check_input(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"BatchNorm expects a numpy.ndarray, got {type(x).__name__}")
        if not 2 <= x.ndim <= 5:
            raise ValueError(f"BatchNorm expects 2-D to 5-D input (N, C, *spatial), got shape "
                             f"{_checks.shape_str(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm({self.num_features}) expects {self.num_features} channels "
                             f"(axis 1), got input of shape {_checks.shape_str(x.shape)}")
        if x.dtype != self.dtype:
            hint = (f"convert the input or create the layer with dtype=numpy.{x.dtype}"
                    if x.dtype in (np.float32, np.float64) and x.dtype.isnative
                    else f"convert it with x.astype(numpy.{self.dtype.name})")
            raise TypeError(f"BatchNorm(dtype={self.dtype.name}) got input of dtype "
                            f"{_checks.describe_dtype(x.dtype)}: {hint}")

    def _buffer(self, name, shape, tag, avoid=()):
        """A kept output array of this shape and layout tag, or None (then a fresh one is made)."""
        if not self.reuse_buffers:
            return None
        entry = self._buf.get(name)
        if entry is None or entry[1] != tag or entry[0].shape != shape:
            return None
        buf = entry[0]
        for a in avoid:
            if a is not None and np.may_share_memory(buf, a):
                return None  # e.g. the layer applied to its own previous output
        return buf

    def _keep(self, name, arr, tag):
        if self.reuse_buffers and arr is not None:
            self._buf[name] = (arr, tag)

    def forward(self, x):
        """Normalize ``x`` (training or evaluation mode); keeps ``x`` for :meth:`backward`."""
        self._check_input(x)
        track = self.track_running_stats
        rm, rv = self.running_mean, self.running_var  # None when not tracking
        use_batch = self.training or rm is None
        momentum = self.momentum
        if momentum is None:
            # Cumulative average (PyTorch): factor 1/num_batches_tracked, counting this batch.
            momentum = 1.0 / float(self.num_batches_tracked + 1) if (self.training and track) else 0.0
        reuse = self.reuse_buffers
        out = sm = si = tag = None
        if reuse:
            tag = _api._layout_tag(x)
            C = (self.num_features,)
            out = self._buffer("y", x.shape, tag, avoid=(x,))
        if use_batch:
            if reuse:
                sm = self._buffer("save_mean", C, "c")
                si = self._buffer("save_invstd", C, "c")
            y, sm, si, skipped = _api._forward(
                x, self.weight, self.bias, rm, rv, True, momentum, self.eps, out, sm, si, True,
                self.skip_nonfinite, self.backend)
            if reuse:
                self._keep("save_mean", sm, "c")
                self._keep("save_invstd", si, "c")
            self._saved = (x, True, sm, si)
            self.last_batch_skipped = skipped
            if skipped:
                warnings.warn(
                    "bnsym: non-finite batch statistics (NaN or inf in the batch mean or "
                    "variance); running statistics and num_batches_tracked left untouched",
                    _api.NonFiniteBatchWarning, stacklevel=2)
            elif self.training and track:
                self.num_batches_tracked += 1
        else:
            y, _, _, _ = _api._forward(
                x, self.weight, self.bias, rm, rv, False, momentum, self.eps, out, None, None,
                False, False, self.backend)
            self._saved = (x, False, rm, rv)
            self.last_batch_skipped = False
        if reuse:
            self._keep("y", y, tag)
        return y

    def backward(self, grad_output):
        """``grad_input`` of the last :meth:`forward`; sets ``grad_weight`` and ``grad_bias``."""
        if self._saved is None:
            raise RuntimeError(
                "BatchNorm.backward() needs a forward() first (one backward per forward)")
        x, batch_stats, a, b = self._saved
        mask = (True, self.affine, self.affine)
        out = None
        if self.reuse_buffers:
            tag = _api._layout_tag(x)
            C = (self.num_features,)
            gi = self._buffer("grad_input", x.shape, tag, avoid=(x, grad_output))
            gw = self._buffer("grad_weight", C, "c") if self.affine else None
            gb = self._buffer("grad_bias", C, "c") if self.affine else None
            out = (gi, gw, gb)
        if batch_stats:
            gi, gw, gb = _api.batch_norm_backward(
                grad_output, x, self.weight, None, None, a, b, True, self.eps, mask, out=out,
                backend=self.backend)
        else:
            gi, gw, gb = _api.batch_norm_backward(
                grad_output, x, self.weight, a, b, None, None, False, self.eps, mask, out=out,
                backend=self.backend)
        self._saved = None
        self.grad_weight, self.grad_bias = gw, gb
        if self.reuse_buffers:
            self._keep("grad_input", gi, _api._layout_tag(x))
            self._keep("grad_weight", gw, "c")
            self._keep("grad_bias", gb, "c")
        return gi

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Copies of the state under PyTorch's key names."""
        sd = {}
        if self.affine:
            sd["weight"] = self.weight.copy()
            sd["bias"] = self.bias.copy()
        if self.track_running_stats:
            sd["running_mean"] = self.running_mean.copy()
            sd["running_var"] = self.running_var.copy()
            sd["num_batches_tracked"] = np.array(self.num_batches_tracked, dtype=np.int64)
        return sd

    def load_state_dict(self, state_dict, strict: bool = True) -> None:
        """Copy a state in (validated entirely before anything changes)."""
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        expected = []
        if self.affine:
            expected += ["weight", "bias"]
        if self.track_running_stats:
            expected += ["running_mean", "running_var", "num_batches_tracked"]
        keys = set(state_dict.keys())
        missing = [k for k in expected if k not in keys]
        # PyTorch tolerates a missing num_batches_tracked (old checkpoints): so do we.
        missing = [k for k in missing if k != "num_batches_tracked"]
        unexpected = sorted(keys - set(expected))
        if strict and (missing or unexpected):
            raise KeyError(f"Error(s) in loading state_dict for BatchNorm: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        staged = {}
        C = self.num_features
        for k in expected[:4] if self.track_running_stats else expected:
            if k not in keys or k == "num_batches_tracked":
                continue
            v = _to_numpy(state_dict[k], k)
            if v.shape != (C,):
                raise ValueError(f"state_dict[{k!r}] has shape {_checks.shape_str(v.shape)}, "
                                 f"expected ({C},)")
            with np.errstate(over="ignore"):
                staged[k] = v.astype(self.dtype)
        nbt = None
        if self.track_running_stats and "num_batches_tracked" in keys:
            v = _to_numpy(state_dict["num_batches_tracked"], "num_batches_tracked")
            if v.size != 1 or not (np.issubdtype(v.dtype, np.integer) or
                                   (np.issubdtype(v.dtype, np.floating) and np.isfinite(v).all()
                                    and float(v.reshape(())) == int(v.reshape(())))):
                raise ValueError("state_dict['num_batches_tracked'] must be a single integer")
            nbt = int(v.reshape(()))
            if nbt < 0:
                raise ValueError("state_dict['num_batches_tracked'] must be >= 0")
        for k, v in staged.items():
            getattr(self, k)[...] = v
        if nbt is not None:
            self.num_batches_tracked = nbt


def _to_numpy(v, name) -> np.ndarray:
    if hasattr(v, "detach") and hasattr(v, "cpu"):  # a torch.Tensor, without importing torch
        v = v.detach().cpu().numpy()
    try:
        a = np.asarray(v)
    except Exception as exc:  # noqa: BLE001
        raise TypeError(f"state_dict[{name!r}] cannot be converted to an array: {exc}") from exc
    if a.dtype.kind not in "fiub":
        raise TypeError(f"state_dict[{name!r}] has dtype {a.dtype}, expected numbers")
    return a
