"""bnsym: Batch Normalization derived with SymPy, proven, generated as C, compiled with cffi.

The runtime path (this module and the kernels it exposes) imports neither sympy nor jinja2:
the symbolic side lives in ``bnsym.derivation`` and friends, loaded only when asked for.

Public API (NumPy arrays in and out, PyTorch semantics)::

    bnsym.batch_norm(input, running_mean, running_var, weight=None, bias=None,
                     training=False, momentum=0.1, eps=1e-5)
    bnsym.batch_norm_forward(...)   # aten.native_batch_norm
    bnsym.batch_norm_backward(...)  # aten.native_batch_norm_backward
    bnsym.BatchNorm(num_features, ...)
    bnsym.set_num_threads(n) / bnsym.get_num_threads()
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "batch_norm": "bnsym.api",
    "batch_norm_forward": "bnsym.api",
    "batch_norm_backward": "bnsym.api",
    "set_num_threads": "bnsym.api",
    "get_num_threads": "bnsym.api",
    "BatchNorm": "bnsym.layer",
    "NonFiniteBatchWarning": "bnsym.api",
    "CompileError": "bnsym.build",
    "derive": "bnsym.derivation",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bnsym' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
