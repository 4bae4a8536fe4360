"""A/B timing of two folders of kernels in one process, call by call: ``bnsym compare``.

For a kernel change (a template, a tuning macro, a variant of your own from ``bnsym generate
--out``) the question is how it compares with the kernels it replaces, and on a shared machine
two separate benchmark runs cannot tell 10% apart: memory bandwidth and cache taken by other
tenants change from one minute to the next. Here both folders are compiled (cached like the
package's own kernels) and loaded into one process, and every sample times a call of one, then
a call of the other, through the same Python API on the same arrays (the order alternates, so
that neither always finds the other's data in cache). What the machine does to one sample it
does to the other.

``-D NAME[=VALUE]`` compiles B with a macro (``--base-define`` does so for A), so that a tuning
macro of the kernels (``BNSYM_CACHE_BYTES``, ``BNSYM_STREAM_BYTES``, ``BNSYM_SMALL_VALUES``, ...:
their ``#ifndef`` defaults) is compared without copying a folder; without DIR, B is the package's
kernels. A macro the kernels never use is refused, with the list of those they do.

For every cell (case, dtype, layout, threads, pass) it prints the median and minimum time per
call of each and the ratios B/A, with their geometric means per pass, and whether B's outputs
are bitwise A's (else the largest difference relative to the largest magnitude).

Runtime path: not imported by ``import bnsym``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from bnsym import bench, build
from bnsym.bench import time_pair
from bnsym.cli import seed_arg

__all__ = ["compare", "format_compare", "main", "cli_compare"]


def _tuning_macros(folder: Path) -> list[str]:
    """The macros of the kernels of ``folder`` that a ``-D`` sets: the ``#ifndef NAME`` defaults
    and the ``defined(NAME)`` switches of their ``.c`` files, without the compiler's own
    (``_OPENMP``, ``__AVX__``: leading underscores)."""
    names = set()
    for f in sorted(folder.glob("*.c")):
        text = f.read_text(errors="replace")
        names.update(re.findall(r"^\s*#\s*ifndef\s+([A-Za-z]\w*)", text, re.M))
        names.update(re.findall(r"\bdefined\s*\(?\s*([A-Za-z]\w*)", text))
    return sorted(names)


def _define_problem(folder: Path, defines) -> str | None:
    """Why ``defines`` cannot be applied to the kernels of ``folder``, or None: a malformed
    define, or a macro the kernels never test (it would change nothing, silently)."""
    from bnsym.build import define_flags

    try:
        define_flags(defines)
    except ValueError as exc:
        return str(exc)
    known = _tuning_macros(folder)
    for d in defines:
        name = d.partition("=")[0]
        if name not in known:
            return (f"define {d!r}: the kernels in {folder} never use {name} (their tuning macros: "
                    f"{', '.join(known) or 'none'})")
    return None


def _load(folder: Path, defines=()):
    from bnsym import api, build

    ffi, lib = build.load(folder, defines)
    try:
        return api._kernels(ffi, lib)
    except AttributeError as exc:
        raise ValueError(f"the kernels of {folder} are not the full set ({exc}); bnsym compare "
                         f"calls them through the API, which needs {build.FULL_SET}") from None


def _outputs(result) -> list:
    """The arrays a pass returned (None skipped), copied."""
    if isinstance(result, np.ndarray):
        result = (result,)
    return [np.array(r, copy=True) for r in result if isinstance(r, np.ndarray)]


def _difference(a: list, b: list):
    """0.0 when every array of ``b`` is bitwise the one of ``a``, else max |b - a| / max |a|."""
    worst = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape or not np.array_equal(x, y, equal_nan=True):
            scale = float(np.max(np.abs(x))) if x.size else 0.0
            diff = float(np.max(np.abs(y.astype(np.float64) - x.astype(np.float64)))) if x.size else 0.0
            worst = max(worst, diff / scale if scale else math.inf)
            worst = worst or math.inf  # unequal but no finite difference (NaN placement)
    return worst


def compare(dir_a, dir_b, cases, dtypes, layouts, threads, passes, *, seed=0, progress=None,
            timing=None, defines_a=(), defines_b=()) -> dict:
    """Time every cell with the kernels of ``dir_a`` and of ``dir_b`` (compiled with the macros
    ``defines_a`` / ``defines_b``, ``"NAME"`` or ``"NAME=VALUE"``); a JSON-able report."""
    from bnsym import api

    kern_a, kern_b = _load(Path(dir_a), defines_a), _load(Path(dir_b), defines_b)
    saved = api._select_kernels(kern_a)
    threads0 = api.get_num_threads()
    timing = dict(timing or {})
    rows = []
    cells = [(shape, dt, lay, th) for shape in cases for dt in dtypes
             for lay in bench.layouts_for(shape, layouts) for th in threads]
    bar = bench._Progress(len(cells) * len(passes), progress)
    try:
        for shape, dt, lay, th in cells:
            d = bench.Data(shape, dt, lay, seed)
            fns, _ = bench.bnsym_callables(api, d, "c")
            api.set_num_threads(th)
            for p in passes:
                bar.desc(f"{bench.case_name(shape)} {bench.DTYPE_SHORT[dt]} {lay} {th}t {p}")
                fn = fns[p]

                def fa(fn=fn):
                    api._select_kernels(kern_a)
                    return fn()

                def fb(fn=fn):
                    api._select_kernels(kern_b)
                    return fn()

                out_a = _outputs(fa())
                out_b = _outputs(fb())
                ta, tb = time_pair(fa, fb, **timing)
                row = {"case": bench.case_name(shape), "dtype": dt, "layout": lay, "threads": th,
                       "pass": p, "a_median": float(np.median(ta)), "a_min": min(ta),
                       "b_median": float(np.median(tb)), "b_min": min(tb), "samples": len(ta),
                       "difference": _difference(out_a, out_b)}
                row["ratio_median"] = row["b_median"] / row["a_median"]
                row["ratio_min"] = row["b_min"] / row["a_min"]
                rows.append(row)
                bar.step()
    finally:
        bar.close()
        api._select_kernels(saved)
        api.set_num_threads(threads0)
    geo = {}
    for p in passes:
        for k in ("ratio_median", "ratio_min"):
            vals = [r[k] for r in rows if r["pass"] == p]
            geo.setdefault(p, {})[k] = bench.geomean(vals)
    return {"a": str(dir_a), "b": str(dir_b), "defines_a": list(defines_a),
            "defines_b": list(defines_b), "rows": rows, "geomean": geo}


def _label(folder, defines) -> str:
    return str(folder) + (f" with {' '.join('-D' + d for d in defines)}" if defines else "")


def format_compare(report: dict) -> str:
    head = ["case", "dtype", "layout", "thr", "pass", "A us", "B us", "B/A median", "B/A min",
            "B's outputs"]
    table = [head]
    for r in report["rows"]:
        diff = r["difference"]
        table.append([r["case"], bench.DTYPE_SHORT[r["dtype"]], bench.LAYOUT_LABEL[r["layout"]],
                      str(r["threads"]), bench.PASS_LABEL[r["pass"]], bench.fmt_us(r["a_median"]),
                      bench.fmt_us(r["b_median"]), f"{r['ratio_median']:.3f}",
                      f"{r['ratio_min']:.3f}",
                      "bitwise A's" if diff == 0.0 else f"differ: {diff:.1e} rel"])
    lines = [f"A: {_label(report['a'], report.get('defines_a', ()))}",
             f"B: {_label(report['b'], report.get('defines_b', ()))}",
             "medians and minima of interleaved calls (A, B, B, A, ...), microseconds", ""]
    lines += bench._align(table, left=5)
    lines.append("")
    lines.append("geometric mean of B/A (below 1: B is faster):")
    for p, g in report["geomean"].items():
        lines.append(f"  {bench.PASS_LABEL[p]:9s} median {g['ratio_median']:.3f}, min {g['ratio_min']:.3f}")
    return "\n".join(lines)


def build_parser(prog="bnsym compare") -> argparse.ArgumentParser:
    p = bench._Parser(prog=prog, description="Time two folders of kernels against each other, call by "
                      "call in one process (A, B, B, A, ...), through the Python API on the same arrays.")
    p.add_argument("b", metavar="DIR", nargs="?", default=None,
                   help="folder of kernels to time (B), e.g. from 'bnsym generate --out' "
                        "(default: the package's, for -D alone)")
    p.add_argument("--base", metavar="DIR", help="folder of kernels to compare with (A; default: the package's)")
    p.add_argument("-D", "--define", dest="defines", action="append", default=[], metavar="NAME[=VALUE]",
                   help="compile B with this macro (repeatable), e.g. -D BNSYM_CACHE_BYTES=8388608; "
                        "the names the kernels accept are listed when one is not")
    p.add_argument("--base-define", dest="base_defines", action="append", default=[],
                   metavar="NAME[=VALUE]", help="compile A with this macro (repeatable)")
    p.add_argument("--cases", type=bench._case_list, default=None, metavar="SHAPES",
                   help="comma-separated shapes NxC or NxCxHxW (default: the benchmark's set)")
    p.add_argument("--dtypes", type=bench._csv(bench.DTYPES), default=list(bench.DTYPES), metavar="LIST",
                   help="float32,float64 (default: both)")
    p.add_argument("--layouts", type=bench._csv(("nchw", "nhwc")), default=["nchw", "nhwc"], metavar="LIST",
                   help="layouts of the 4-D cases: nchw,nhwc (default: both)")
    p.add_argument("--threads", type=bench._csv(conv=bench._positive_threads), default=[1, 2], metavar="LIST",
                   help="thread counts (default: 1,2)")
    p.add_argument("--passes", type=bench._csv(bench.PASSES), default=list(bench.PASSES), metavar="LIST",
                   help="fwd,infer,bwd (default: all)")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds of sampling per cell (default 0.3)")
    p.add_argument("--min-samples", type=int, default=25, help="samples of each per cell (default 25)")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    prog_group = p.add_mutually_exclusive_group()
    prog_group.add_argument("--progress", dest="progress", action="store_true", default=None,
                            help="a progress bar (tqdm; default: when stderr is a terminal)")
    prog_group.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv=None, prog="bnsym compare") -> int:
    from bnsym.build import kernel_dir

    parser = build_parser(prog)
    ns = parser.parse_args(argv)
    if ns.b is None and not ns.defines and not ns.base_defines:
        parser.error("give a folder of kernels (DIR), or -D / --base-define to compare builds "
                     "of the package's kernels")
    base = Path(ns.base) if ns.base else kernel_dir()
    b = Path(ns.b) if ns.b is not None else kernel_dir()
    for name, folder, defines, flag in (("DIR", b, ns.defines, "-D"),
                                        ("--base", base, ns.base_defines, "--base-define")):
        problem = build.api_folder_problem(folder)
        if problem:
            print(f"bnsym compare: {name} {folder} {problem}: it needs a folder of kernels, "
                  f"{build.FULL_SET}", file=sys.stderr)
            return 2
        problem = _define_problem(folder, defines)
        if problem:
            print(f"bnsym compare: {flag}: {problem}", file=sys.stderr)
            return 2
    print(f"bnsym compare: loading the kernels of {_label(base, ns.base_defines)} (A) and "
          f"{_label(b, ns.defines)} (B); a build not in the cache is compiled first (about 20 s)",
          file=sys.stderr, flush=True)
    from bnsym.build import CompileError

    try:
        report = compare(base, b, ns.cases or list(bench.DEFAULT_CASES), ns.dtypes, ns.layouts,
                         ns.threads, ns.passes, seed=ns.seed, progress=ns.progress,
                         timing={"min_time": ns.min_time, "min_samples": ns.min_samples},
                         defines_a=ns.base_defines, defines_b=ns.defines)
    except CompileError as exc:  # carries the compiler's command and output
        print(f"bnsym compare: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"bnsym compare: {exc}", file=sys.stderr)
        return 2
    print(format_compare(report))
    if ns.json:
        Path(ns.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


def cli_compare(args) -> int:
    return main(args.compare_args)
