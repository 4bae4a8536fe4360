"""Concurrency: processes racing to build the kernel cache, corrupted cache entries, threads.

* 4 processes start together on an empty ``BNSYM_CACHE_DIR``, import bnsym and call a kernel:
  all succeed with the reference answer; exactly one of them compiled (``bnsym.build.
  build_count`` summed over the processes is 1); the cache holds one module and its manifest
  and no leftover temporary folder; a watcher polling the cache folder while they run never
  sees the module with a size other than its final one (no half-written library is visible).
* A cache entry whose binary was truncated, or overwritten with garbage of the same size, is
  detected (size / sha256 against the manifest) and rebuilt, and the call still succeeds.
* Several Python threads calling the kernels at once (cffi releases the GIL) get bitwise the
  results of the same calls made one after the other, with a fixed number of kernel threads.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import bnsym
from bnsym import build

from _fuzz_worker import Check, ref_backward, ref_forward

ROOT = Path(__file__).resolve().parent.parent

# A child: wait for the start signal, import bnsym, run a training forward and a backward,
# report what it computed and whether it compiled.
CHILD = r"""
import json, os, sys, time
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.002)
import numpy as np
import bnsym, bnsym.build
rng = np.random.default_rng(int(sys.argv[2]))
x = rng.standard_normal((6, 5, 7)).astype(np.float32)
rm, rv = np.zeros(5, np.float32), np.ones(5, np.float32)
y, sm, si = bnsym.batch_norm_forward(x, None, None, rm, rv, True, 0.1, 1e-5)
gi, gw, gb = bnsym.batch_norm_backward(y, x, None, None, None, sm, si, True, 1e-5)
key, _ = bnsym.build.cache_key()
print("RESULT " + json.dumps({
    "pid": os.getpid(), "build_count": bnsym.build.build_count, "key": key,
    "seed": int(sys.argv[2]), "y": y.tolist(), "rm": rm.tolist(), "rv": rv.tolist(),
    "sm": sm.tolist(), "si": si.tolist(), "gi": gi.tolist(), "gw": gw.tolist(), "gb": gb.tolist(),
}), flush=True)
"""


def _env(cache: Path) -> dict:
    env = dict(os.environ, BNSYM_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
    env.pop("BNSYM_KERNEL_DIR", None)
    return env


def _spawn(cache: Path, go: Path, seed: int):
    return subprocess.Popen([sys.executable, "-c", CHILD, str(go), str(seed)], cwd=str(ROOT),
                            env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _collect(proc) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"child exit {proc.returncode}\n{out[-3000:]}\n{err[-5000:]}"
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"child printed no result\n{out[-3000:]}\n{err[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def _check_child_result(r: dict) -> None:
    """The child's numbers against the reference (float32 tolerances of _fuzz_worker)."""
    rng = np.random.default_rng(r["seed"])
    x = rng.standard_normal((6, 5, 7)).astype(np.float32)
    f32 = np.dtype(np.float32)
    ref = ref_forward(x, None, None, np.zeros(5, f32), np.ones(5, f32), True, 0.1, 1e-5, f32)
    chk = Check(f32, f"child {r['pid']}")
    arr = lambda k: np.asarray(r[k], np.float32)  # noqa: E731 (JSON floats are exact doubles)
    chk.close("y", arr("y"), *ref["y"])
    chk.close("save_mean", arr("sm"), *ref["save_mean"])
    chk.close("save_invstd", arr("si"), *ref["save_invstd"])
    chk.close("running_mean", arr("rm"), *ref["running_mean"])
    chk.close("running_var", arr("rv"), *ref["running_var"])
    refb = ref_backward(arr("y"), x, None, arr("sm"), arr("si"), True, 1e-5, f32)
    chk.close("grad_input", arr("gi"), *refb["grad_input"])
    chk.close("grad_weight", arr("gw"), *refb["grad_weight"])
    chk.close("grad_bias", arr("gb"), *refb["grad_bias"])


def _modules(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.name.startswith("_bnsym_k_")
                  and p.suffix not in (".json", ".lock"))


@pytest.fixture(scope="module")
def raced_cache(tmp_path_factory):
    """An empty cache folder filled by 4 processes started at the same instant."""
    cache = tmp_path_factory.mktemp("race-cache")
    go = cache.parent / "go"
    seen: list[tuple[str, int]] = []
    stop = threading.Event()

    def watch():  # records every (module name, size) visible in the cache folder
        while not stop.is_set():
            try:
                for e in os.scandir(cache):
                    if e.name.startswith("_bnsym_k_") and not e.name.endswith((".json", ".lock")):
                        try:
                            seen.append((e.name, e.stat().st_size))
                        except FileNotFoundError:
                            pass
            except FileNotFoundError:
                pass
            time.sleep(0.001)

    procs = [_spawn(cache, go, seed) for seed in range(4)]
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(0.3)  # let the interpreters start and wait at the barrier
    go.write_text("go")
    try:
        results = [_collect(p) for p in procs]
    finally:
        stop.set()
        watcher.join()
        for p in procs:
            if p.poll() is None:
                p.kill()
    return cache, results, seen


def test_processes_race_on_an_empty_cache(raced_cache):
    cache, results, seen = raced_cache
    for r in results:
        _check_child_result(r)
    assert sum(r["build_count"] for r in results) == 1, \
        f"build counts {[r['build_count'] for r in results]}: the module must be built once"
    assert len({r["key"] for r in results}) == 1
    mods = _modules(cache)
    assert len(mods) == 1, f"cache entries: {[p.name for p in cache.iterdir()]}"
    manifest = mods[0].with_name(mods[0].name.split(".")[0] + ".json")
    assert manifest.is_file()
    meta = json.loads(manifest.read_text())
    assert meta["size"] == mods[0].stat().st_size
    leftovers = [p.name for p in cache.iterdir() if p.name.startswith(".build-")]
    assert not leftovers, f"temporary build folders left behind: {leftovers}"
    final = mods[0].stat().st_size
    assert seen, "the watcher never saw the module appear"
    partial = {(n, s) for n, s in seen if n != mods[0].name or s != final}
    assert not partial, f"a partial or foreign module was visible in the cache: {partial}"


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupted_entry_is_rebuilt(raced_cache, tmp_path, damage):
    """Damage a copy of the raced cache's entry; the next process rebuilds it and succeeds."""
    src_cache, _, _ = raced_cache
    cache = tmp_path / "cache"
    cache.mkdir()
    for p in src_cache.iterdir():
        if p.is_file():
            (cache / p.name).write_bytes(p.read_bytes())
    mod = _modules(cache)[0]
    data = mod.read_bytes()
    if damage == "truncated":
        bad = data[: len(data) // 2]
    else:  # same size, so only the checksum can tell
        bad = np.random.default_rng(0).integers(0, 256, len(data), np.uint8).tobytes()
    mod.write_bytes(bad)
    go = tmp_path / "go"
    go.write_text("go")
    r = _collect(_spawn(cache, go, 7))
    _check_child_result(r)
    assert r["build_count"] == 1, "the damaged entry was not rebuilt"
    assert mod.read_bytes() != bad
    assert build._entry_valid(mod, mod.with_name(mod.name.split(".")[0] + ".json"))
    # and a healthy entry is reused: a second process compiles nothing
    r2 = _collect(_spawn(cache, go, 8))
    _check_child_result(r2)
    assert r2["build_count"] == 0


# --------------------------------------------------------------------------- threads


def _arrays(rng, shape, cl, dt, scale, loc):
    """Input (C-contiguous, or channels-last when ``cl``), weight, bias and grad_output of
    ``shape``, drawn from ``rng`` in that order."""
    vals = rng.standard_normal(shape) * scale + loc
    if cl:
        perm = (0,) + tuple(range(2, len(shape))) + (1,)
        x = np.ascontiguousarray(vals.transpose(perm).astype(dt)).transpose(np.argsort(perm))
    else:
        x = vals.astype(dt)
    C = shape[1]
    w = rng.uniform(0.5, 2, C).astype(dt)
    b = rng.uniform(-1, 1, C).astype(dt)
    dy = rng.standard_normal(shape).astype(dt)
    return x, w, b, dy


def _train(x, w, b, dy, rm0, rv0):
    """A training forward (updating copies of the running statistics) and its backward."""
    rm, rv = rm0.copy(), rv0.copy()
    y, sm, si = bnsym.batch_norm_forward(x, w, b, rm, rv, True, 0.1, 1e-5)
    g = bnsym.batch_norm_backward(dy, x, w, None, None, sm, si, True, 1e-5)
    return (y, sm, si, rm, rv) + g


def _calls():
    """A list of deterministic calls: (name, callable returning a tuple of arrays)."""
    out = []
    rng = np.random.default_rng(42)
    for dt in (np.float32, np.float64):
        for shape, cl in (((16, 8, 24, 24), False), ((16, 8, 24, 24), True), ((256, 64), False),
                          ((3, 5, 1000), False), ((2, 130, 9), True)):
            x, w, b, dy = _arrays(rng, shape, cl, dt, 2, 1)
            C = shape[1]
            rm0, rv0 = rng.uniform(-1, 1, C).astype(dt), rng.uniform(0.5, 2, C).astype(dt)

            def evaluate(x=x, w=w, b=b, dy=dy, rm0=rm0, rv0=rv0):
                y = bnsym.batch_norm(x, rm0, rv0, w, b, training=False)
                g = bnsym.batch_norm_backward(dy, x, w, rm0, rv0, None, None, False, 1e-5)
                return (y,) + g

            out.append((f"train {np.dtype(dt).name} {shape} cl={cl}",
                        functools.partial(_train, x, w, b, dy, rm0, rv0)))
            out.append((f"eval {np.dtype(dt).name} {shape} cl={cl}", evaluate))
    return out


def _same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and \
        np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


@pytest.mark.parametrize("kernel_threads", [1, 2])
def test_threads_get_bitwise_sequential_results(kernel_threads):
    build.load()
    old = bnsym.get_num_threads()
    bnsym.set_num_threads(kernel_threads)
    try:
        calls = _calls()
        sequential = [fn() for _, fn in calls]
        # every call 4 times, shuffled, from 8 Python threads at once
        order = [i for i in range(len(calls)) for _ in range(4)]
        np.random.default_rng(1).shuffle(order)
        barrier = threading.Barrier(8)

        def job(chunk):
            barrier.wait()
            return [(i, calls[i][1]()) for i in chunk]

        chunks = [order[k::8] for k in range(8)]
        with ThreadPoolExecutor(8) as pool:
            results = [r for part in pool.map(job, chunks) for r in part]
        assert len(results) == len(order)
        for i, got in results:
            want = sequential[i]
            for k, (g, w) in enumerate(zip(got, want)):
                assert _same_bits(g, w), f"{calls[i][0]}: output {k} differs from the sequential call"
    finally:
        bnsym.set_num_threads(old)


def test_threads_sharing_inputs_do_not_interfere():
    """Threads normalizing the same read-only input into their own outputs, with their own
    running statistics, while others run the backward on it: inputs unchanged, results equal."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 16, 40)).astype(np.float32)
    x.flags.writeable = False
    dy = rng.standard_normal(x.shape).astype(np.float32)
    x0 = x.copy()
    y_ref, sm, si = bnsym.batch_norm_forward(x, None, None, None, None, True, 0.1, 1e-5)
    g_ref = bnsym.batch_norm_backward(dy, x, None, None, None, sm, si, True, 1e-5)

    def fwd(_):
        rm, rv = np.zeros(16, np.float32), np.ones(16, np.float32)
        out = np.empty_like(x)
        y = bnsym.batch_norm(x, rm, rv, training=True, out=out)
        return _same_bits(y, y_ref)

    def bwd(_):
        g = bnsym.batch_norm_backward(dy, x, None, None, None, sm, si, True, 1e-5)
        return all(_same_bits(a, b) for a, b in zip(g, g_ref))

    with ThreadPoolExecutor(6) as pool:
        oks = list(pool.map(lambda i: fwd(i) if i % 2 else bwd(i), range(48)))
    assert all(oks)
    assert _same_bits(x, x0)


# A child under OMP_THREAD_LIMIT=1: every kernel asks for a team of 2 and gets 1.
SMALL_TEAM_CHILD = r"""
import sys
import numpy as np
import bnsym
sys.path.insert(0, sys.argv[2])
from test_concurrency import _team_calls
bnsym.set_num_threads(2)
np.savez(sys.argv[1], *[a for _, fn in _team_calls() for a in fn()])
"""


def _team_calls():
    """Training forward + backward on one shape per threaded schedule: rows (2-D and
    channels-last), short strips (with and without the lanes element pass), long strips; each
    of at least 2 * BNSYM_MIN_WORK elements, so that 2 threads run."""
    calls = []
    for shape, cl in [((40000, 3), False), ((320, 4, 8, 8), True), ((128, 8, 8, 8), False),
                      ((1024, 8, 3, 3), False), ((16, 4, 2000), False)]:
        for dt in (np.float32, np.float64):
            x, w, b, dy = _arrays(np.random.default_rng(7), shape, cl, dt, 3, 1)
            C = shape[1]
            calls.append((f"{np.dtype(dt).name} {shape} cl={cl}",
                          functools.partial(_train, x, w, b, dy, np.zeros(C, dt), np.ones(C, dt))))
    return calls


def test_team_smaller_than_asked_gives_the_one_thread_results(tmp_path):
    """OpenMP may start fewer threads than a kernel asks for (OMP_THREAD_LIMIT, a nested
    region): each thread then takes its share of a team of the size it got, and only the
    partials of threads that ran are merged. Under OMP_THREAD_LIMIT=1 with 2 threads set, every
    schedule gives bitwise the results of 1 thread (which the 1-thread tests check against the
    reference)."""
    build.load()
    old = bnsym.get_num_threads()
    try:
        bnsym.set_num_threads(2)
        two = [a for _, fn in _team_calls() for a in fn()]
        bnsym.set_num_threads(1)
        want = [a for _, fn in _team_calls() for a in fn()]
    finally:
        bnsym.set_num_threads(old)
    # (2 threads merge in another order: some output differs in its last bits, else the check
    # below could not tell a team of 1 from one of 2)
    assert any(not _same_bits(a, b) for a, b in zip(two, want))
    out = tmp_path / "team.npz"
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    proc = subprocess.run([sys.executable, "-c", SMALL_TEAM_CHILD, str(out), str(Path(__file__).parent)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    got = np.load(out)
    assert len(got.files) == len(want)
    for k, w in enumerate(want):
        assert _same_bits(got[f"arr_{k}"], w), f"output {k} differs from the 1-thread result"
