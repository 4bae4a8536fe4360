"""Proof by fuzzing: bnsym never crashes, never returns a wrong answer, never damages arguments.

The Hypothesis property tests live in ``tests/_fuzz_worker.py`` and run in child processes
(one per target, started together so that they share the 2 cores): a segfault or abort in the
compiled kernels shows up here as a negative return code, reported with the case that was
running (the worker writes each case to a trace file before calling bnsym).

Every generated call (shapes 2-D to 5-D with m = 2, C = 1, odd sizes; C-contiguous,
channels-last, Fortran, strided, negative-stride and zero-stride inputs; float32/float64 and
invalid dtypes; training/evaluation; affine or not; running statistics or not; momentum
incl. None; output masks; out= arrays incl. in place; NaN, inf, huge, tiny, denormal,
constant, offset values; 1-3 threads, with shapes large enough for 2 and 3 to run) must either
match an independent long-double NumPy reference within the dtype's tolerance or raise
TypeError/ValueError leaving every argument bit-for-bit unchanged; the C and NumPy backends must agree on raising.

Cases: ``BNSYM_FUZZ_EXAMPLES`` (default 1500) per functional target, half that for the layer
target; ``BNSYM_FUZZ_SEED`` (default 0) picks another fixed sequence. Run with ``-s`` to see
the counts, e.g. ``BNSYM_FUZZ_EXAMPLES=5000 pytest -s tests/test_fuzz.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bnsym

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_fuzz_worker.py"
EXAMPLES = int(os.environ.get("BNSYM_FUZZ_EXAMPLES", "1500"))
SEED = int(os.environ.get("BNSYM_FUZZ_SEED", "0"))
TARGETS = {"forward": EXAMPLES, "backward": EXAMPLES, "layer": max(1, EXAMPLES // 2)}
TIMEOUT = 120 + EXAMPLES  # seconds; generous: the default run (3750 cases) takes ~25 s


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by signal {signal.Signals(-rc).name} (a crash)"
        except ValueError:
            return f"killed by signal {-rc} (a crash)"
    return f"exit code {rc}"


def _start(cmd, trace: Path, env=None):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=str(HERE.parent))


def _finish(proc, trace: Path, name: str):
    """Wait for a worker; fail with its output and the last case when it did not exit 0."""
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        last = trace.read_text() if trace.exists() else "?"
        pytest.fail(f"fuzz worker {name} timed out after {TIMEOUT} s; last case:\n{last}\n{out[-4000:]}")
    if proc.returncode != 0:
        last = trace.read_text() if trace.exists() else "?"
        pytest.fail(
            f"fuzz worker {name}: {_describe_exit(proc.returncode)}\n"
            f"last case started:\n{last}\n--- worker output (tail) ---\n{out[-12000:]}"
        )
    return out


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """Start every fuzz target at once (each in its own process); yields {target: (proc, trace)}."""
    from bnsym import build

    build.load()  # compile once here, not in three workers at once
    d = tmp_path_factory.mktemp("fuzz")
    procs = {}
    for target, n in TARGETS.items():
        trace = d / f"{target}.trace"
        cmd = [sys.executable, str(WORKER), "--target", target, "--examples", str(n),
               "--seed", str(SEED), "--trace", str(trace)]
        procs[target] = (_start(cmd, trace), trace)
    yield procs
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("target", list(TARGETS))
def test_fuzz(workers, target):
    proc, trace = workers[target]
    out = _finish(proc, trace, target)
    last = [ln for ln in out.splitlines() if ln.startswith("FUZZ-OK")]
    assert last, f"worker {target} exited 0 without its summary line:\n{out[-4000:]}"
    n = int(last[-1].split()[2])
    assert n >= TARGETS[target], f"only {n} cases ran for {target}"
    print(f"\n{last[-1]} (seed {SEED}; BNSYM_FUZZ_EXAMPLES={EXAMPLES})")


def test_crash_is_detected(tmp_path):
    """The harness reports a child that dies of a signal (here a deliberate NULL read)."""
    trace = tmp_path / "t"
    trace.write_text("deliberate crash case\n")
    proc = _start([sys.executable, "-c", "import ctypes; ctypes.string_at(0)"], trace)
    with pytest.raises(pytest.fail.Exception) as info:
        _finish(proc, trace, "crash-self-test")
    assert "crash" in str(info.value) and "deliberate crash case" in str(info.value)


# --------------------------------------------------------------------------- regressions
# Deterministic versions of what the fuzzing found, so that each shows up by name.


@pytest.mark.parametrize("case", ["weight", "bias", "input"])
@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_running_stats_overlapping_an_operand_are_rejected(backend, case):
    """Running statistics are written in training: the API documents that nothing written may
    overlap another operand. Both backends must raise ValueError and change nothing."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    rm = np.zeros(3, np.float32)
    rv = np.ones(3, np.float32)
    kw = {}
    if case == "weight":
        kw["weight"] = rm
    elif case == "bias":
        kw["bias"] = rv
    else:
        rm = x[0]  # a contiguous (C,) view of the 2-D input
    before = [a.copy() for a in (x, rm, rv)]
    with pytest.raises(ValueError, match="overlap"):
        bnsym.batch_norm(x, rm, rv, training=True, backend=backend, **kw)
    for a, b in zip((x, rm, rv), before):
        np.testing.assert_array_equal(a, b)
