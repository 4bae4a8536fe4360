"""The generated C under AddressSanitizer and UndefinedBehaviorSanitizer.

Two programs are built from ``generated/*.c``: the codegen's own test program
(``tests/c/test_kernels.c``) and the edge-case driver ``tests/sanitize_edges.c`` (m = 2, C = 1,
odd sizes, wide rows, every optional pointer NULL, outputs aliasing inputs, skip_nonfinite,
1-4 threads, both dtypes and layouts, results checked against a double reference), each in
six configurations of the kernels: ``-O1`` without OpenMP; the production flags ``-O3
-march=native -fopenmp`` (vector code paths and threads); ``-O3 -fopenmp
-DBNSYM_CACHE_BYTES=0``, which sends every contiguous input through the channel-block schedule
that normally only inputs over 16 MiB take; ``-DBNSYM_SMALL_VALUES=0``, which sends small inputs
through the lane schedules instead of the small-input one (with ``-DBNSYM_ROW_TILE_BYTES=0``:
float32 rows summed row by row, as normally only rows over 16 MiB in all or 8 MiB per thread are; with
``-DBNSYM_ELEM_LANE_BYTES=512``: the element pass over lanes in blocks of a few lanes); the
production flags with
``-DBNSYM_STREAM_BYTES=0``, with which every call streams its outputs (normally only calls that
read and write 32 MiB or more); and, without OpenMP, every input through the small-input
schedule. The test programs are built at -O1.
``-fno-sanitize-recover=all`` turns any UB report into an abort; LeakSanitizer is on. A run
passes when it exits 0 and prints no sanitizer report.

First, two deliberately broken programs check that the toolchain really reports a heap
overflow and a signed overflow (so a silent toolchain cannot make these tests pass).
Skipped only when the C compiler cannot build and run a program with -fsanitize (said why).

The C entry points of the Python API (``generated/bnsym_python.h``) run inside Python: the
kernel module is compiled with the sanitizers (``tests/_sanitized_build.py``) and
``tests/test_entry.py`` runs in a Python process that preloads their runtimes (LeakSanitizer off:
the interpreter's own allocations are not leaks of ours).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT / "generated"
SAN = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g",
       "-fno-sanitize-recover=all"]
CONFIGS = {
    "O1": ["-O1"],
    "O3-native-openmp": ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math",
                         "-fopenmp"],
    # every contiguous input takes the channel-block schedule (normally only those over 16 MiB);
    # in this and the two below, every call runs all its threads (BNSYM_MIN_WORK=1: normally
    # an input needs 32768 values per thread), some of them with no rows or units
    "O3-openmp-channel-blocks": ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp",
                                 "-DBNSYM_CACHE_BYTES=0", "-DBNSYM_MIN_WORK=1"],
    # small inputs take the lane schedules too (normally they are summed strip by strip as one
    # block), float32 rows are summed row by row where their sums fit in L1 (normally only rows
    # of more than 16 MiB in all or 8 MiB per thread: smaller ones are summed in tiles), and the
    # element pass over lanes runs in blocks of 16-48 lanes, very short strips in sub-groups of a
    # few channels (normally only where the lanes' coefficients take more than 16 KiB)
    "O3-openmp-no-small": ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp",
                           "-DBNSYM_SMALL_VALUES=0", "-DBNSYM_MIN_WORK=1",
                           "-DBNSYM_ROW_TILE_BYTES=0", "-DBNSYM_ELEM_LANE_BYTES=512"],
    # every call streams its outputs (normally only those reading and writing 32 MiB or more)
    "O3-native-openmp-stream": ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math",
                                "-fopenmp", "-DBNSYM_STREAM_BYTES=0", "-DBNSYM_MIN_WORK=1"],
    # every input (one thread: no OpenMP) takes the small-input schedule
    "O3-all-small": ["-O3", "-fno-math-errno", "-fno-trapping-math",
                     "-DBNSYM_SMALL_VALUES=100000000", "-DBNSYM_SMALL_SAMPLES=100000000",
                     "-DBNSYM_SMALL_ROWS=100000000"],
}
PROGRAMS = {
    "test_kernels": ROOT / "tests" / "c" / "test_kernels.c",
    "sanitize_edges": ROOT / "tests" / "sanitize_edges.c",
}
ENV = dict(os.environ,
           ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=1",
           UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
           OMP_NUM_THREADS="4")
REPORT_MARKERS = ("runtime error", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                  "SUMMARY: AddressSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")


def _compile(cc, sources, out: Path, flags) -> subprocess.CompletedProcess:
    cmd = cc + ["-std=c99", *flags, *SAN, f"-I{GEN}", *map(str, sources), "-lm", "-o", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _run(exe: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=300, env=ENV)


@pytest.fixture(scope="module")
def toolchain(c_compiler, tmp_path_factory):
    """The compiler, after checking that it links and runs a sanitized program."""
    cc = c_compiler
    d = tmp_path_factory.mktemp("san-probe")
    src = d / "ok.c"
    src.write_text("#include <stdlib.h>\nint main(void){int *p=malloc(8);p[1]=3;int r=p[1]-3;free(p);return r;}\n")
    proc = _compile(cc, [src], d / "ok", ["-O1"])
    if proc.returncode != 0:
        pytest.skip(f"{cc[0]} cannot build with -fsanitize=address,undefined: {proc.stderr[-500:]}")
    run = _run(d / "ok")
    if run.returncode != 0:
        pytest.skip(f"sanitized programs do not run here (rc {run.returncode}): {run.stderr[-500:]}")
    return cc


@pytest.mark.parametrize("bug,marker", [
    ("int *p = malloc(4 * sizeof(int)); p[argc + 3] = 1; free(p);", "heap-buffer-overflow"),
    ("int big = 2147483647 - 1 + argc; big += argc; return big & 1;", "runtime error"),
])
def test_toolchain_reports_bugs(toolchain, tmp_path, bug, marker):
    """A heap overflow and a signed overflow are reported and abort (non-zero exit)."""
    src = tmp_path / "bug.c"
    src.write_text("#include <stdlib.h>\nint main(int argc, char **argv){(void)argv;\n"
                   + bug + "\nreturn 0;}\n")
    assert _compile(toolchain, [src], tmp_path / "bug", ["-O0"]).returncode == 0
    run = _run(tmp_path / "bug")
    assert run.returncode != 0 and marker in run.stderr, (run.returncode, run.stderr[-2000:])


def _parallel(cmds, width=2):
    """Run commands ``width`` at a time; returns [(cmd, rc, output)] in order."""
    out, running, queue = [], [], list(cmds)
    while queue or running:
        while queue and len(running) < width:
            c = queue.pop(0)
            running.append((c, subprocess.Popen(c, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True)))
        c, p = running.pop(0)
        log = p.communicate(timeout=600)[0]
        out.append((c, p.returncode, log))
    return out


@pytest.fixture(scope="module")
def built(toolchain, tmp_path_factory):
    """Every (program, config) binary: each source compiled once per config (two at a time),
    the kernels' objects shared by both programs. {(prog, cfg): (path, cmds, log, rc)}."""
    sources = sorted(GEN.glob("*.c"))
    assert (GEN / "bnsym.h").is_file() and sources, "generated/ holds no kernels"
    for main_src in PROGRAMS.values():
        assert main_src.is_file(), f"{main_src} is missing"
    d = tmp_path_factory.mktemp("san")
    compiles = []
    for cfg, flags in CONFIGS.items():
        for src in sources + list(PROGRAMS.values()):
            obj = d / f"{cfg}-{src.stem}.o"
            # the kernels get the configuration's flags; the test programs only drive them
            # (-O1, plus -fopenmp for the link), which keeps the build short
            f = flags if src in sources else ["-O1"] + [x for x in flags if "openmp" in x]
            compiles.append(toolchain + ["-std=c99", *f, *SAN, f"-I{GEN}", "-c", str(src),
                                         "-o", str(obj)])
    done = _parallel(compiles)
    failed = [(c, log) for c, rc, log in done if rc != 0]
    results = {}
    links = []
    for cfg, flags in CONFIGS.items():
        kobjs = [str(d / f"{cfg}-{s.stem}.o") for s in sources]
        for prog, main_src in PROGRAMS.items():
            out = d / f"{prog}-{cfg}"
            links.append(((prog, cfg), out, toolchain + [*flags, *SAN,
                                                         str(d / f"{cfg}-{main_src.stem}.o"),
                                                         *kobjs, "-lm", "-o", str(out)]))
    if failed:
        msg = "\n".join(" ".join(c) + "\n" + log[-3000:] for c, log in failed)
        return {key: (out, cmd, "compiling failed:\n" + msg, 1) for key, out, cmd in links}
    for (key, out, cmd), (_, rc, log) in zip(links, _parallel([c for _, _, c in links])):
        results[key] = (out, cmd, log, rc)
    return results


@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("prog", list(PROGRAMS))
def test_sanitized_run_is_clean(built, prog, cfg):
    out, cmd, log, rc = built[prog, cfg]
    assert rc == 0, f"compiling failed: {' '.join(cmd)}\n{log[-4000:]}"
    run = _run(out)
    text = run.stdout + run.stderr
    reports = [m for m in REPORT_MARKERS if m in text]
    assert run.returncode == 0 and not reports, (
        f"{prog} [{cfg}] exit {run.returncode}, sanitizer reports {reports}\n{text[-8000:]}")
    if prog == "sanitize_edges":
        assert "SANITIZE-EDGES OK" in run.stdout, text[-2000:]
    print(f"\n{prog} [{cfg}]: clean; {run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ''}")


def test_entry_points_under_sanitizers(toolchain, tmp_path):
    """tests/test_entry.py against a kernel module built with ASan and UBSan: no report."""
    libs = []
    for name in ("libasan.so", "libubsan.so"):
        path = subprocess.run(toolchain + [f"-print-file-name={name}"], capture_output=True,
                              text=True).stdout.strip()
        if not os.path.isabs(path) or not os.path.exists(path):
            pytest.skip(f"{toolchain[0]} has no {name} to preload into Python")
        libs.append(path)
    env = dict(ENV, LD_PRELOAD=" ".join(libs), BNSYM_CACHE_DIR=str(tmp_path / "cache"),
               ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
               BNSYM_ENTRY_EXAMPLES="120", OMP_NUM_THREADS="2")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "_sanitized_build",
                          "-p", "no:cacheprovider", str(ROOT / "tests" / "test_entry.py")],
                         capture_output=True, text=True, timeout=1200, env=env, cwd=tmp_path)
    text = run.stdout + run.stderr
    reports = [m for m in REPORT_MARKERS if m in text]
    assert run.returncode == 0 and not reports, f"exit {run.returncode}, reports {reports}\n{text[-8000:]}"
    assert "passed" in run.stdout
    import json

    manifests = list((tmp_path / "cache").glob("_bnsym_k_*.json"))  # every module built there
    assert manifests and all("-fsanitize=address,undefined" in json.loads(m.read_text())["cflags"]
                             for m in manifests)
