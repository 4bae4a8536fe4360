"""Which loops of the generated C the compiler vectorized (GCC's ``-fopt-info-vec``).

The templates mark every loop meant to run in vector registers: the line before its ``for`` is
``BNSYM_SIMD`` or ``BNSYM_SIMD_PRAGMA(omp simd ...)``. :func:`report` compiles one kernel file with the
build's flags (:func:`bnsym.compiler.compile_args`, OpenMP optional) plus GCC's vectorization
remarks and pairs every marked loop with them; ``bnsym vectorized [DIR]`` prints the result for
a folder of kernels (``generated/`` or one written by ``bnsym generate --out``) and fails when a
marked loop stays scalar. GCC reports an ``omp simd`` loop at the first statement of its body,
so a marked loop at line n counts as vectorized when a remark names line n or n + 1.

``-fno-ipa-icf`` keeps identical functions (the two dtypes' ``fold``, say) apart: folded into
one, only one of them would be reported. ``-fkeep-static-functions`` compiles the functions a
kernel set never calls (a set of one layout, from ``bnsym generate --layouts``), which GCC
would otherwise drop unoptimized and unreported. A marked loop that GCC replaces by library
calls (a copy loop by ``memcpy``: "split to 0 loops and 1 library calls") is vector code too,
reported as such. Other compilers (Clang) have no such remarks: :class:`Unavailable` says so.

Runtime path: not imported by ``import bnsym`` (no sympy, no jinja2 either way).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LoopReport", "Unavailable", "marked_loops", "report", "report_dir", "cli_vectorized"]

_MARKER = re.compile(r"^\s*(BNSYM_SIMD|BNSYM_SIMD_PRAGMA\(omp simd\b.*\))\s*$")
_REMARK = re.compile(r"^(?P<file>.*?):(?P<line>\d+):\d+: optimized: loop vectorized using (?P<bytes>\d+) byte vectors")
_LIBCALL = re.compile(r"^(?P<file>.*?):(?P<line>\d+):\d+: optimized: Loop \d+ distributed: split to 0 loops and \d+ library calls")
_FUNCTION = re.compile(r"^(?:static\s+)?(?:inline\s+)?(?:__attribute__\(\(\w+\)\)\s+)?[A-Za-z_][\w ]*?\b(\w+)\(")


class Unavailable(RuntimeError):
    """The compiler gives no vectorization remarks (not GCC), or is missing."""


@dataclass
class LoopReport:
    """A marked loop: its line (1-based), the function holding it, the ``for`` statement, the
    vector widths GCC used for it (bytes; empty: not vectorized), and whether GCC replaced it
    by library calls (``memcpy``, ``memset``)."""

    file: str
    line: int
    function: str
    text: str
    widths: list[int] = field(default_factory=list)
    library_call: bool = False

    @property
    def vectorized(self) -> bool:
        return bool(self.widths) or self.library_call


def marked_loops(text: str) -> list[tuple[int, str, str]]:
    """(line of the ``for``, enclosing function, the ``for`` line) of every marked loop."""
    lines = text.split("\n")
    out = []
    function = ""
    for i, line in enumerate(lines):
        if line[:1].isalpha():
            m = _FUNCTION.match(line)
            if m:
                function = m.group(1)
        if _MARKER.match(line):
            j = i + 1
            while j < len(lines) and not lines[j].lstrip().startswith("for"):
                j += 1
            if j < len(lines):
                out.append((j + 1, function, lines[j].strip()))
    return out


def _compiler() -> list[str]:
    from bnsym.build import _compiler_command

    return _compiler_command()


def report(c_file: Path | str, *, openmp: bool = True, cc: list[str] | None = None,
           extra_flags: list[str] | None = None) -> list[LoopReport]:
    """Compile ``c_file`` (its folder on the include path) with the build's flags (``openmp``
    False: those of its fallback without OpenMP, ``-fopenmp-simd``) and GCC's vectorization
    remarks; one :class:`LoopReport` per marked loop, in file order."""
    from bnsym import compiler

    c_file = Path(c_file)
    cc = list(cc or _compiler())
    flags = compiler.compile_args() if openmp else compiler.serial_args(compiler.compile_args())
    with tempfile.TemporaryDirectory(prefix="bnsym-vec-") as tmp:
        remarks = Path(tmp) / "remarks.txt"
        cmd = cc + flags + list(extra_flags or []) + [
            "-fno-ipa-icf", "-fkeep-static-functions", f"-fopt-info-vec-loop-optimized={remarks}",
            f"-I{c_file.parent}",
            "-c", str(c_file), "-o", str(Path(tmp) / "kernel.o")]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as exc:
            raise Unavailable(f"cannot run the C compiler {cc[0]!r}: {exc}") from exc
        if proc.returncode != 0:
            if "fopt-info" in proc.stderr:
                raise Unavailable(f"{cc[0]} gives no GCC vectorization remarks (-fopt-info); "
                                  f"use GCC (CC=gcc)")
            raise RuntimeError(f"compiling {c_file.name} failed:\n$ {' '.join(cmd)}\n{proc.stderr}")
        text = remarks.read_text() if remarks.exists() else ""
    widths: dict[int, list[int]] = {}
    libcalls: set[int] = set()
    for line in text.splitlines():
        m = _REMARK.match(line)
        if m and Path(m.group("file")).name == c_file.name:
            widths.setdefault(int(m.group("line")), []).append(int(m.group("bytes")))
        m = _LIBCALL.match(line)
        if m and Path(m.group("file")).name == c_file.name:
            libcalls.add(int(m.group("line")))
    loops = []
    for n, function, stmt in marked_loops(c_file.read_text()):
        w = sorted(set(widths.get(n, []) + widths.get(n + 1, [])), reverse=True)
        loops.append(LoopReport(c_file.name, n, function, stmt, w, n in libcalls or n + 1 in libcalls))
    return loops


def report_dir(folder: Path | str, *, openmp: bool = True, progress=None) -> dict[str, list[LoopReport]]:
    """:func:`report` for every ``*.c`` of ``folder`` (two at a time), by file name."""
    files = sorted(Path(folder).glob("*.c"))
    if not files:
        raise FileNotFoundError(f"no *.c kernels in {folder}")

    def one(path):
        result = report(path, openmp=openmp)
        if progress is not None:
            progress(path.name)
        return path.name, result

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, files))


def cli_vectorized(args) -> int:
    from bnsym.build import kernel_dir

    folder = Path(args.dir) if args.dir else kernel_dir()
    openmp = not args.no_openmp
    n_files = len(list(folder.glob("*.c")))
    if n_files == 0:
        print(f"bnsym vectorized: no *.c kernels in {folder} (a folder as 'bnsym generate --out' "
              f"writes)", file=sys.stderr)
        return 2
    done = []

    def progress(name):
        done.append(name)
        print(f"\r  compiled {len(done)}/{n_files} ({name})" + " " * 10, end="", file=sys.stderr,
              flush=True)

    print(f"bnsym: compiling the kernels in {folder} with GCC's vectorization remarks "
          f"({'with' if openmp else 'without'} OpenMP; about 10 s a file)", file=sys.stderr, flush=True)
    try:
        result = report_dir(folder, openmp=openmp, progress=progress)
    except Unavailable as exc:
        print(f"\nbnsym vectorized: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # the compiler failed: its command and output
        print(f"\nbnsym vectorized: {exc}", file=sys.stderr)
        return 1
    print(file=sys.stderr)
    missed = 0
    for name, loops in result.items():
        bad = [lp for lp in loops if not lp.vectorized]
        widths = sorted({w[0] for w in (lp.widths for lp in loops) if w}, reverse=True)
        libcalls = sum(1 for lp in loops if lp.library_call and not lp.widths)
        print(f"{name}: {len(loops) - len(bad)} of {len(loops)} marked loops vectorized"
              + (f" ({libcalls} of them as library calls such as memcpy)" if libcalls else "")
              + (f" (widest vectors: {', '.join(f'{w} bytes' for w in widths)})" if widths else ""))
        for lp in bad:
            print(f"  NOT VECTORIZED  line {lp.line} in {lp.function}: {lp.text}")
        missed += len(bad)
    return 1 if missed else 0
