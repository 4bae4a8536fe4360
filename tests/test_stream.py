"""Streaming (non-temporal) stores of the element pass.

A call whose element pass reads and writes at least ``BNSYM_STREAM_BYTES`` (default 32 MiB)
writes its outputs around the cache, in vectors from the first aligned output value (GCC vector
extensions on x86-64 with AVX). Two checks (and a third with the same program: the float32 rows
reduction's two orders, tiles and row by row, give the same bits):

- ``tests/c/stream_outputs.c`` built twice from ``generated/``, with ``-DBNSYM_NO_STREAM`` and
  with ``-DBNSYM_STREAM_BYTES=0`` (every call streams), prints digests of every output of every
  kernel for odd shapes of every schedule, outputs at each alignment, in place or not, 1 and 3
  threads (``-DBNSYM_MIN_WORK=1``: even small shapes run them): the two must print the same
  lines (streaming changes no bit).
- Through the Python API (the production build), inputs large enough to stream match the
  float64 reference (:mod:`bnsym.reference`), both layouts, outputs in place too.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import bnsym
from bnsym import reference as R

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT / "generated"
PROGRAM = ROOT / "tests" / "c" / "stream_outputs.c"
# BNSYM_MIN_WORK=1: the 3-thread calls run 3 threads (or one per row or unit), whatever the shape
FLAGS = ["-std=c99", "-O2", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp",
         "-DBNSYM_MIN_WORK=1"]


def _build_and_run(cc, tmp_path, name, define) -> list[str]:
    exe = tmp_path / name
    cmd = cc + FLAGS + [define, f"-I{GEN}", str(PROGRAM), *map(str, sorted(GEN.glob("*.c"))),
                        "-lm", "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "march" in proc.stderr:
        pytest.skip(f"{cc[0]} does not take -march=native: {proc.stderr[-300:]}")
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-3000:]}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="3"))
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.splitlines()


def test_streaming_changes_no_bit(c_compiler, tmp_path):
    cc = c_compiler
    plain = _build_and_run(cc, tmp_path, "plain", "-DBNSYM_NO_STREAM")
    if plain[0] != "stream-capable 1":
        pytest.skip("streaming stores need GCC vector extensions and AVX on x86-64")
    streamed = _build_and_run(cc, tmp_path, "streamed", "-DBNSYM_STREAM_BYTES=0")
    results = [line for line in plain if not line.startswith(("case", "stream"))]
    assert len(results) == 16 * 2 * 4 * 2 * 2 * 2 * 4  # every case ran every kernel
    assert all(line.split()[2] == "0" for line in results), "a kernel returned an error"
    diff = [(a, b) for a, b in zip(plain, streamed) if a != b]
    assert len(plain) == len(streamed) and not diff, diff[:10]


def test_row_tiles_change_no_bit(c_compiler, tmp_path):
    """The float32 pass over rows sums them in tiles when each thread's rows stay in the cache
    (``BNSYM_ROW_TILE_BYTES``), row by row otherwise: the same float operations in another order
    of rows and lanes, so the same bits. The program of the test above built with every rows
    reduction row by row where its sums fit in L1 (``BNSYM_ROW_TILE_BYTES=0``) and with every one
    in tiles prints the same digests (its cases include rows of 96, 160, 608 and 64 lanes)."""
    cc = c_compiler
    by_rows = _build_and_run(cc, tmp_path, "by_rows", "-DBNSYM_ROW_TILE_BYTES=0")
    tiles = _build_and_run(cc, tmp_path, "tiles", "-DBNSYM_ROW_TILE_BYTES=1e18")
    results = [line for line in by_rows if not line.startswith(("case", "stream"))]
    assert len(results) == 16 * 2 * 4 * 2 * 2 * 2 * 4
    assert all(line.split()[2] == "0" for line in results), "a kernel returned an error"
    diff = [(a, b) for a, b in zip(by_rows, tiles) if a != b]
    assert len(by_rows) == len(tiles) and not diff, diff[:10]


# ------------------------------------------------------------- production build, large inputs

# 9.4 M values: forward passes read and write 75 MB (float32), above the 32 MiB threshold
SHAPE = (6, 24, 256, 255)


@pytest.fixture(scope="module")
def large():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(SHAPE) * 2 + 5).astype(np.float32)
    dy = rng.standard_normal(SHAPE).astype(np.float32)
    return x, dy


@pytest.mark.parametrize("layout", ["ncs", "nsc"])
def test_large_inputs_match_reference(kernels, large, layout, assert_close):
    x, dy = large
    if layout == "nsc":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        dy = np.ascontiguousarray(dy.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    C = SHAPE[1]
    rng = np.random.default_rng(8)
    w = (rng.random(C) + 0.5).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    rm = (rng.standard_normal(C) + 5).astype(np.float32)
    rv = (rng.random(C) + 0.5).astype(np.float32)

    y, sm, si = bnsym.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5)
    yr, mean, _, invstd = R.forward_train(x, w, b, 1e-5)
    assert_close(y, yr, np.float32, "y")
    assert_close(si, invstd, np.float32, "save_invstd")

    ye = bnsym.batch_norm(x, rm, rv, w, b, training=False)
    assert_close(ye, R.forward_eval(x, w, b, rm, rv, 1e-5), np.float32, "y (evaluation)")

    gi, gw, gb = bnsym.batch_norm_backward(dy, x, w, None, None, sm, si, True, 1e-5)
    gir, gwr, gbr = R.backward_train(dy, x, w, mean, invstd)
    assert_close(gi, gir, np.float32, "grad_input")
    assert_close(gw, gwr, np.float32, "grad_weight")
    assert_close(gb, gbr, np.float32, "grad_bias")

    # in place: the output is the input (the element pass reads each value before its store)
    xi = x.copy()
    bnsym.batch_norm(xi, rm, rv, w, b, training=False, out=xi)
    np.testing.assert_array_equal(xi, ye)
