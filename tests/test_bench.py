"""Tests of ``bnsym bench`` in ``--quick`` mode on tiny cases.

They check the shape of the report (rows, columns, JSON, targets) and that every ratio is computed
from the measured numbers. They never assert anything about speed: speed is measured by the
benchmark, not asserted by tests.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from bnsym import bench

TINY_ARGS = ["--quick", "--cases", "16x8,2x4x3x3", "--no-progress", "--min-samples", "3",
             "--min-time", "0"]
# 16x8 has one layout, 2x4x3x3 two: 3 configurations x 2 dtypes x 2 threads x 3 passes
N_ROWS = 3 * 2 * 2 * 3


def _have_torch():
    try:
        import torch  # noqa: F401

        return True
    except ImportError:
        return False


class _FakeAPI:
    """A NumPy stand-in for bnsym's API, so the bnsym column is exercised whatever the kernels' state."""

    @staticmethod
    def _bc(v, x):
        return v.reshape((1, -1) + (1,) * (x.ndim - 2))

    def batch_norm_forward(self, input, weight, bias, running_mean, running_var, training, momentum, eps,
                           *, out=None, backend="c"):
        x = input
        axes = (0,) + tuple(range(2, x.ndim))
        m = x.size // x.shape[1]
        if training:
            mean, var = x.mean(axes), x.var(axes)
            if running_mean is not None:
                running_mean[...] = (1 - momentum) * running_mean + momentum * mean
                running_var[...] = (1 - momentum) * running_var + momentum * var * m / (m - 1)
        else:
            mean, var = running_mean, running_var
        invstd = 1 / np.sqrt(var + eps)
        w = weight if weight is not None else np.ones(x.shape[1], x.dtype)
        b = bias if bias is not None else np.zeros(x.shape[1], x.dtype)
        y = (x - self._bc(mean, x)) * self._bc(invstd * w, x) + self._bc(b, x)
        if out is not None:
            out[...] = y
            y = out
        return y, mean.astype(x.dtype), invstd.astype(x.dtype)

    def batch_norm_backward(self, grad_output, input, weight, running_mean, running_var, save_mean,
                            save_invstd, training, eps, output_mask=(True, True, True), *, out=None,
                            backend="c"):
        x, dy = input, grad_output
        axes = (0,) + tuple(range(2, x.ndim))
        m = x.size // x.shape[1]
        xhat = (x - self._bc(save_mean, x)) * self._bc(save_invstd, x)
        sdy, sdyx = dy.sum(axes), (dy * xhat).sum(axes)
        w = weight if weight is not None else np.ones(x.shape[1], x.dtype)
        dx = self._bc(w * save_invstd / m, x) * (m * dy - self._bc(sdy, x) - xhat * self._bc(sdyx, x))
        return dx, sdyx, sdy

    def batch_norm(self, input, running_mean, running_var, weight=None, bias=None, training=False,
                   momentum=0.1, eps=1e-5, *, out=None, backend="c"):
        return self.batch_norm_forward(input, weight, bias, running_mean, running_var, training, momentum,
                                       eps, out=out, backend=backend)[0]

    def set_num_threads(self, n):
        self.threads = n


@pytest.fixture
def fake_api(monkeypatch):
    api = _FakeAPI()
    monkeypatch.setattr(bench, "_load_api", lambda: (api, None))
    monkeypatch.setattr(bench, "measure_import_time", lambda runs=5: {"error": "not measured in tests"})
    return api


def _run(tmp_path, capsys, extra=()):
    path = tmp_path / "bench.json"
    rc = bench.main(TINY_ARGS + ["--json", str(path)] + list(extra))
    out = capsys.readouterr().out
    assert rc == 0
    return json.loads(path.read_text()), out


def _check_ratios(rows):
    for r in rows:
        t = r["times"]
        for impl, det in r["details"].items():
            # the reported time is the minimum of the medians measured for that cell
            assert t[impl] == pytest.approx(min(det["medians"]))
        for key, num, den in (("bnsym_over_torch", "bnsym", "torch"), ("bnsym_over_floor", "bnsym", "floor"),
                              ("speedup_vs_torch", "torch", "bnsym")):
            if t.get(num) is None or t.get(den) is None:
                assert r[key] is None
            else:
                assert r[key] == pytest.approx(t[num] / t[den])


def test_quick_rows_json_and_ratios(tmp_path, capsys, fake_api):
    report, out = _run(tmp_path, capsys)
    rows = report["rows"]
    assert len(rows) == N_ROWS
    keys = {(r["case"], r["dtype"], r["layout"], r["threads"], r["pass"]) for r in rows}
    assert len(keys) == N_ROWS
    assert {r["layout"] for r in rows if r["case"] == "2x4x3x3"} == {"nchw", "nhwc"}
    assert {r["layout"] for r in rows if r["case"] == "16x8"} == {"nc"}
    for r in rows:
        assert r["times"]["bnsym"] > 0 and r["times"]["floor"] > 0 and r["times"]["numpy"] > 0
        assert r["numel"] == math.prod(r["shape"])
        if r["threads"] == 2:  # numpy is single-threaded: measured once, at 1 thread
            assert r["details"]["numpy"]["measured_threads"] == 1
    _check_ratios(rows)
    if _have_torch():
        assert all(r["times"]["torch"] > 0 for r in rows)
        # geometric means are those of the per-row speed-ups
        geo = report["summary"]["geomean_speedup_vs_torch"]
        for p in bench.PASSES:
            sp = [r["speedup_vs_torch"] for r in rows if r["pass"] == p]
            want = math.exp(sum(math.log(v) for v in sp) / len(sp))
            assert geo[p]["all"] == pytest.approx(want)
            assert geo[p]["n"] == len(sp)
        # the fake API computes what torch computes: the cross-check agrees
        assert report["checks"] and all(c["ok"] for c in report["checks"])
    # the printed table: a header, one line per row, geomeans, targets
    assert "bnsym/torch" in out and "bnsym/floor" in out
    table_lines = [ln for ln in out.splitlines() if ln.startswith(("16x8 ", "2x4x3x3 "))]
    assert len(table_lines) == N_ROWS
    assert "targets:" in out
    names = [t["name"] for t in report["summary"]["targets"]]
    assert names == ["never_slower", "fwd_geomean", "bwd_geomean", "floor_fwd", "floor_bwd", "floor_infer",
                     "tiny", "import", "compile"]
    for t in report["summary"]["targets"]:
        assert t["status"] in ("PASS", "MISS", "n/a")
        assert f"{t['status']:<4}  {t['target']}" in out
    # floor targets are the worst 1-thread bnsym/floor ratio per pass
    for name, p in (("floor_fwd", "fwd"), ("floor_bwd", "bwd"), ("floor_infer", "infer")):
        t = next(t for t in report["summary"]["targets"] if t["name"] == name)
        worst = max(r["bnsym_over_floor"] for r in rows if r["pass"] == p and r["threads"] == 1)
        assert t["value"] == pytest.approx(worst)
        assert t["status"] == ("PASS" if worst <= t["limit"] else "MISS")
    # the tiny-call target compares the two measured tiny calls
    oh = report["overheads"]
    assert oh["tiny_bnsym_s"] > 0
    if _have_torch():
        t = next(t for t in report["summary"]["targets"] if t["name"] == "tiny")
        assert t["value"] == pytest.approx(oh["tiny_bnsym_s"] / oh["tiny_torch_s"])


def test_no_torch_and_subset(tmp_path, capsys, fake_api):
    report, out = _run(tmp_path, capsys, ["--no-torch", "--dtypes", "float64", "--threads", "1",
                                          "--passes", "fwd,bwd", "--no-overheads"])
    rows = report["rows"]
    assert len(rows) == 3 * 1 * 1 * 2
    assert all(r["times"]["torch"] is None and r["bnsym_over_torch"] is None for r in rows)
    assert all(r["dtype"] == "float64" and r["pass"] in ("fwd", "bwd") for r in rows)
    assert "torch column skipped" in out
    _check_ratios(rows)
    never = next(t for t in report["summary"]["targets"] if t["name"] == "never_slower")
    assert never["status"] == "n/a"


def test_sweep_quick(tmp_path, capsys, fake_api):
    report, out = _run(tmp_path, capsys, ["--sweep", "--sweep-max", "0.02", "--threads", "1",
                                          "--dtypes", "float32", "--cases", "16x8", "--no-overheads"])
    sweep = report["sweep"]
    assert [e["bytes"] for e in sweep] == [4096, 16384]
    for e in sweep:
        assert e["numel"] * 4 == e["bytes"]
        assert e["ns_per_elem"]["floor"] > 0
        assert e["ns_per_elem"]["bnsym_fwd"] > 0
    assert "sweep: ns per element" in out


def test_real_api_quick(tmp_path, capsys):
    """Whatever state bnsym's kernels are in, the benchmark runs and says what it skipped."""
    report, out = _run(tmp_path, capsys, ["--dtypes", "float32", "--threads", "1", "--no-overheads"])
    assert len(report["rows"]) == 3 * 1 * 1 * 3
    _check_ratios(report["rows"])
    for impl, status in report["meta"]["available"].items():
        if status != "yes":
            assert f"{impl} column skipped" in out


def test_plot(tmp_path, capsys, fake_api):
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    _run(tmp_path, capsys, ["--threads", "1", "--dtypes", "float32", "--no-overheads", "--plot", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    rc = bench.main(TINY_ARGS + ["--plot", str(tmp_path / "x.png")])
    assert rc == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--cases", "abc"], ["--dtypes", "float16"], ["--threads", "0"],
                                  ["--passes", "fwd,nope"]])
def test_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert "bnsym bench: error" in capsys.readouterr().err


def test_parse_case_and_layouts():
    assert bench.parse_case("32x64x56x56") == (32, 64, 56, 56)
    assert bench.parse_case("(4, 8)") == (4, 8)
    assert bench.layouts_for((4, 8), ("nchw", "nhwc")) == ["nc"]
    assert bench.layouts_for((2, 3, 4, 5), ("nhwc",)) == ["nhwc"]
    x = bench.alloc((2, 3, 4, 5), np.float32, "nhwc")
    assert x.shape == (2, 3, 4, 5) and x.strides == (4 * 60, 4, 4 * 15, 4 * 3)


def test_geomean():
    assert bench.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert bench.geomean([None, 3.0]) == pytest.approx(3.0)
    assert bench.geomean([]) is None


def test_floor_kernel():
    ffi, lib = bench.load_floor()
    for dt, fn, ct in ((np.float32, lib.bnsym_floor_f32, "float[]"), (np.float64, lib.bnsym_floor_f64, "double[]")):
        x = np.arange(1000, dtype=dt)
        for threads in (1, 2):
            y = np.zeros_like(x)
            fn(ffi.from_buffer(ct, x), ffi.from_buffer(ct, y), x.size, 0.5, 0.25, threads)
            np.testing.assert_allclose(y, 0.5 * x + 0.25)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 31, 1000, 4099])
def test_two_pass_floor_kernels(dt, threads, n):
    """The two-pass floors read every value twice and write every output: with scale 1/n,
    y = x/2 + sum(x)/n and dx = dy/2 + sum(dy*x)/n*x + sum(dy)/n, against NumPy in float64, for
    lengths that split unevenly among the threads and their lanes."""
    ffi, lib = bench.load_floor()
    ct = "float[]" if dt == np.float32 else "double[]"
    suf = "f32" if dt == np.float32 else "f64"
    rng = np.random.default_rng(n)
    x, dy = rng.standard_normal(n).astype(dt), rng.standard_normal(n).astype(dt)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    tol = 1e-5 if dt == np.float32 else 1e-12
    y = np.full(n, np.nan, dtype=dt)
    getattr(lib, f"bnsym_floor_fwd_{suf}")(ffi.from_buffer(ct, x), ffi.from_buffer(ct, y), n, 1.0 / n, threads)
    np.testing.assert_allclose(y, x64 / 2 + x64.sum() / n, rtol=tol, atol=tol)
    dx = np.full(n, np.nan, dtype=dt)
    getattr(lib, f"bnsym_floor_bwd_{suf}")(ffi.from_buffer(ct, dy), ffi.from_buffer(ct, x),
                                           ffi.from_buffer(ct, dx), n, 1.0 / n, threads)
    np.testing.assert_allclose(dx, dy64 / 2 + (dy64 * x64).sum() / n * x64 + dy64.sum() / n, rtol=tol, atol=tol)


def test_import_is_light():
    code = ("import sys, bnsym.bench; "
            "print(','.join(m for m in ('sympy', 'jinja2', 'torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_cli_dispatch_and_module_help():
    from bnsym import cli

    # 'bnsym bench -- ARGS' reaches cli_bench (the '--' is dropped)
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--", "--help"])
    assert exc.value.code == 0
    proc = subprocess.run([sys.executable, "-m", "bnsym.bench", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--quick" in proc.stdout


def test_measure_and_contention_flags():
    cfg = bench.BenchConfig(min_samples=5, min_time=0.0, warm_calls=1, warm_time=0.0)
    m = bench.measure(lambda: None, cfg)
    assert m["samples"] >= 5 and m["median"] >= 0 and m["median"] >= m["min"]
    assert set(m) >= {"median", "min", "samples", "faults_per_call", "steal_frac", "others_cpu"}
    ncpu = __import__("os").cpu_count() or 1
    assert bench.contended({"others_cpu": None}, 1) is False
    assert bench.contended({"others_cpu": 0.0}, ncpu) is False
    assert bench.contended({"others_cpu": float(ncpu)}, 1) is True
    assert bench.wait_quiet(0) == 0.0


def test_from_json_reprints_the_same_table(tmp_path, capsys, fake_api):
    report, out = _run(tmp_path, capsys, ["--threads", "1", "--dtypes", "float32", "--no-overheads"])
    rc = bench.main(["--from-json", str(tmp_path / "bench.json")])
    again = capsys.readouterr().out
    assert rc == 0
    table = [ln for ln in out.splitlines() if ln.startswith(("16x8 ", "2x4x3x3 "))]
    assert table == [ln for ln in again.splitlines() if ln.startswith(("16x8 ", "2x4x3x3 "))]
    assert "targets:" in again


def test_measure_pair_alternates_and_compares():
    """A B B A order (after an A B warm-up), one sample of each per call, ratios of what was timed."""
    log = []
    cfg = bench.BenchConfig(min_samples=4, min_time=0.0, warm_calls=1, warm_time=0.0)
    m = bench.measure_pair(lambda: log.append("A"), lambda: log.append("B"), cfg)
    assert "".join(log) == "AB" + "ABBAABBA"
    assert m["samples"] == 4
    assert m["ratio_median"] == pytest.approx(m["a_median"] / m["b_median"])
    assert m["ratio_min"] == pytest.approx(m["a_min"] / m["b_min"])
    # a slower A shows as a ratio above 1, whatever the host does meanwhile
    import time

    slow = bench.measure_pair(lambda: time.sleep(0.003), lambda: None,
                              bench.BenchConfig(min_samples=5, min_time=0.0, warm_calls=1, warm_time=0.0))
    assert slow["ratio_median"] > 10 and slow["ratio_min"] > 10


def test_time_interleaved_takes_turns_in_batches():
    """A B C C B A order, ``batch`` calls back to back per sample, times per call."""
    import time

    log = []
    fns = [lambda k=k: log.append(k) for k in "ABC"]
    times = bench.time_interleaved(fns, min_samples=4, min_time=0.0, warm_calls=1, warm_time=0.0)
    assert "".join(log) == "ABC" + "ABCCBAABCCBA"
    assert [len(t) for t in times] == [4, 4, 4]
    log.clear()
    bench.time_interleaved(fns, min_samples=2, min_time=0.0, warm_calls=1, warm_time=0.0, batch=2)
    assert "".join(log) == "AABBCC" + "AABBCCCCBBAA"
    # a sample is the mean of its batch: a 2 ms call in batches of 3 gives samples of about
    # 2 ms, not 6 ms, and the fast function stays far below it
    slow, fast = bench.time_interleaved([lambda: time.sleep(0.002), lambda: None], min_samples=3,
                                        min_time=0.0, warm_calls=1, warm_time=0.0, batch=3)
    assert min(slow) > 0.0019 and sorted(slow)[1] < 0.0045  # the median of 3: a late wake-up
    assert sorted(fast)[1] < 0.0005                          # of sleep() moves one sample only


def test_slower_cells_are_timed_again_call_by_call(tmp_path, capsys, fake_api):
    """The NumPy stand-in loses to torch: those cells get a call-by-call re-timing, reported."""
    pytest.importorskip("torch")
    report, out = _run(tmp_path, capsys, ["--threads", "1", "--dtypes", "float32", "--no-overheads"])
    rows = report["rows"]
    for r in rows:
        t = r["times"]
        if t["bnsym"] > t["torch"]:
            rt = r["retimed"]
            assert rt["samples"] >= 3
            assert rt["ratio_median"] == pytest.approx(rt["bnsym_median"] / rt["torch_median"])
            assert rt["ratio_min"] == pytest.approx(rt["bnsym_min"] / rt["torch_min"])
        else:
            assert r["retimed"] is None
    again = [r for r in rows if r["retimed"]]
    assert again, "the NumPy stand-in is never faster than torch on every cell"
    assert "timed again call by call" in out
    for r in again:
        assert bench._row_label(r) in out
    never = next(t for t in report["summary"]["targets"] if t["name"] == "never_slower")
    assert "re-timed call by call with torch: " in never["detail"]
    still = sum(1 for r in again if r["retimed"]["ratio_median"] > 1.0)
    assert f"{still} of {len(again)} still slower" in never["detail"]


def test_cells_above_their_floor_target_are_timed_again_call_by_call(tmp_path, capsys, fake_api):
    """The NumPy stand-in is far above the floor targets at 1 thread: those cells get a
    call-by-call re-timing against the floor, reported in the table's notes and the targets."""
    report, out = _run(tmp_path, capsys, ["--threads", "1,2", "--dtypes", "float32", "--no-torch",
                                          "--no-overheads"])
    rows = report["rows"]
    for r in rows:
        t = r["times"]
        limit = bench.TARGETS[bench.FLOOR_TARGET[r["pass"]]]
        if r["threads"] == 1 and t["bnsym"] / t["floor"] > limit:
            rt = r["retimed_floor"]
            assert rt["samples"] >= 3
            assert rt["ratio_median"] == pytest.approx(rt["bnsym_median"] / rt["floor_median"])
            assert rt["ratio_min"] == pytest.approx(rt["bnsym_min"] / rt["floor_min"])
            if r["pass"] == "infer":  # the copy floor is the inference pass's own
                assert rt["two_pass_median"] is None and rt["bnsym_over_two_pass"] is None
            else:  # the training passes: their two-pass floor in the same loop
                assert rt["two_pass_median"] > 0 and rt["two_pass_min"] <= rt["two_pass_median"]
                assert rt["two_pass_over_floor"] == pytest.approx(rt["two_pass_median"] / rt["two_pass_floor_median"])
                assert rt["bnsym_over_two_pass"] == pytest.approx(rt["ratio_median"] / rt["two_pass_over_floor"])
        else:
            assert r["retimed_floor"] is None  # 2 threads, or within the target: not re-timed
    again = [r for r in rows if r["retimed_floor"]]
    assert again, "the NumPy stand-in is never within 1.25x of the floor on every cell"
    assert any(r["threads"] == 2 for r in rows)
    assert "timed again call by call (bnsym and the floor" in out
    for r in again:
        assert bench._row_label(r) in out
    for p, key in bench.FLOOR_TARGET.items():
        target = next(t for t in report["summary"]["targets"] if t["name"] == key)
        mine = [r for r in again if r["pass"] == p]
        if mine:
            still = sum(1 for r in mine if r["retimed_floor"]["ratio_median"] > bench.TARGETS[key])
            assert f"re-timed call by call with the floor: {still} of {len(mine)} still above" in target["detail"]
            two = [r["retimed_floor"]["two_pass_over_floor"] for r in mine
                   if r["retimed_floor"]["ratio_median"] > bench.TARGETS[key]]
            if two and p != "infer":
                assert f"the two-pass floor alone takes {min(two):.2f}x-{max(two):.2f}x" in target["detail"]
    assert "2-pass/floor" in out and "bnsym/2-pass" in out


def test_tiny_target_is_judged_on_its_least_favourable_window(monkeypatch, tmp_path, capsys, fake_api):
    """Three windows of the tiny call (before the cases, after them, at the end): the target takes
    the one with the highest bnsym/torch ratio, and every window is kept and printed."""
    earlier = [{"tiny_bnsym_s": 4e-6, "tiny_torch_s": 10e-6},   # 0.40
               {"tiny_bnsym_s": 5e-6, "tiny_torch_s": 9e-6}]    # 0.56: the judged one
    last = {"tiny_bnsym_s": 8e-6, "tiny_bnsym_bare_s": 5e-6, "tiny_torch_s": 17e-6}  # 0.47
    monkeypatch.setattr(bench, "_tiny_window", lambda *a: dict(last))
    have = {"bnsym": True, "numpy": False, "torch": True, "floor": False}
    cfg = bench.BenchConfig()
    oh = bench._run_overheads(cfg, fake_api, None, have, earlier)
    assert (oh["tiny_bnsym_s"], oh["tiny_torch_s"]) == (5e-6, 9e-6)
    assert oh["tiny_windows"] == earlier + [last]
    report = {"rows": [], "overheads": oh}
    tiny = next(t for t in bench.summarize(report, cfg)["targets"] if t["name"] == "tiny")
    assert tiny["value"] == pytest.approx(5 / 9) and tiny["status"] == "MISS"
    assert "the highest of 3 windows' ratios (0.40, 0.56, 0.47)" in tiny["detail"]
    # a full run (not --quick) times three windows and prints them
    calls = []
    monkeypatch.setattr(bench, "_tiny_window", lambda *a: calls.append(1) or dict(last))
    args = [a for a in TINY_ARGS if a != "--quick"] + ["--dtypes", "float32", "--threads", "1",
                                                      "--no-torch", "--no-numpy", "--no-sweep",
                                                      "--no-compile-check", "--repeats-1t", "1"]
    path = tmp_path / "b.json"
    assert bench.main(args + ["--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert len(calls) == 3
    assert len(json.loads(path.read_text())["overheads"]["tiny_windows"]) == 3
    assert "windows (before the cases, after them, at the end; the highest ratio is judged)" in out


def test_bare_tiny_call_is_the_kernel_of_batch_norm():
    """The tiny call's bare call (the C entry point called directly) computes what
    bnsym.batch_norm does (same kernel, bitwise); it is only measured for bnsym's own API."""
    import bnsym
    from bnsym import api as bn_api

    try:
        bn_api._K or bn_api._init()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"kernels unavailable: {exc}")
    assert bn_api.KERNEL_NAMES[0][0] == "bnsym_forward_train_f32_ncs"
    api, err = bench._load_api()
    assert err is None
    rng = np.random.default_rng(3)
    n, c = bench.TINY_SHAPE
    x = rng.standard_normal((n, c)).astype(np.float32)
    w = (1 + rng.standard_normal(c)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    bare = bench.bare_tiny_call(api, x, w, b)
    threads = bnsym.get_num_threads()
    bnsym.set_num_threads(1)
    try:
        want = bnsym.batch_norm(x, np.zeros(c, np.float32), np.ones(c, np.float32), w, b, True,
                                bench.MOMENTUM, bench.EPS)
    finally:
        bnsym.set_num_threads(threads)
    got = bare()
    assert got.dtype == np.float32 and got.shape == (n, c)
    assert np.array_equal(got, want)
    assert bench.bare_tiny_call(_FakeAPI(), x, w, b) is None


def test_target_value_never_prints_the_limit_for_a_miss():
    """A ratio just below or above a target's limit is printed with enough decimals to show on
    which side it is ("1.498 MISS" against 1.5x, not "1.50 MISS"); others keep two."""
    assert bench.fmt_target_value(1.498, 1.5) == "1.498"
    assert bench.fmt_target_value(1.5003, 1.5) == "1.5003"
    assert bench.fmt_target_value(1.5, 1.5) == "1.50"
    assert bench.fmt_target_value(2.58, 2.0) == "2.58"
    assert bench.fmt_target_value(0.6106, 0.5) == "0.61"
