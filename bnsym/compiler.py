"""C compiler flags for the compiled kernels (runtime path: no sympy, no jinja2).

``-O3 -fno-math-errno`` rather than ``-ffast-math``, which breaks NaN handling. The kernels are
tuned for the build machine's CPU (``-march=native``), so the compiled-module cache key includes
:func:`cpu_key`: a cache shared between different CPUs never loads a binary built for another.
"""

from __future__ import annotations

import hashlib
import os
import platform

BASE_CFLAGS = ["-std=c99", "-O3", "-fno-math-errno", "-fno-trapping-math"]
OPENMP_CFLAGS = ["-fopenmp"]
OPENMP_LDFLAGS = ["-fopenmp"]
# Without OpenMP (a compiler without its runtime): the kernels' ``omp simd`` pragmas alone, which
# need no runtime and keep the marked loops vectorized (see ``bnsym vectorized --no-openmp``).
OPENMP_SIMD_CFLAGS = ["-fopenmp-simd", "-DBNSYM_OPENMP_SIMD"]


def native_flags() -> list[str]:
    """``-march=native`` on x86-64/aarch64 with GCC or Clang (disable with BNSYM_NO_NATIVE=1)."""
    if os.environ.get("BNSYM_NO_NATIVE"):
        return []
    if platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64"):
        return ["-march=native"]
    return []


def compile_args() -> list[str]:
    return BASE_CFLAGS + native_flags() + OPENMP_CFLAGS


def serial_args(cflags: list[str]) -> list[str]:
    """``cflags`` without OpenMP, with the ``omp simd`` pragmas alone: the first fallback of a
    build whose compiler lacks OpenMP (the second drops these too)."""
    return [f for f in cflags if f not in OPENMP_CFLAGS] + OPENMP_SIMD_CFLAGS


def link_args() -> list[str]:
    return list(OPENMP_LDFLAGS)


def cpu_key() -> str:
    """A short hash naming this CPU (model and feature flags), part of the cache key."""
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    text += line
                if line.strip() == "":
                    break  # the first processor is enough
    except OSError:
        pass
    return hashlib.sha256(text.encode()).hexdigest()[:16]
