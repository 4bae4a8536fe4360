"""Compile the generated C kernels with cffi (API mode, out-of-line) and cache the result.

Runtime path: imports neither sympy nor jinja2 (cffi and setuptools are loaded only when a
module actually has to be compiled).

How it works
------------
* The sources are ``bnsym.h`` plus every ``*.c`` of a folder (by default
  :func:`bnsym._paths.generated_dir`, overridable with ``$BNSYM_KERNEL_DIR`` or the
  ``source_dir`` argument). The cffi ``cdef`` is the list of function prototypes of the header:
  comments, preprocessor lines and ``extern "C"`` wrappers are dropped; if the header has a
  ``BNSYM_CDEF_BEGIN`` ... ``BNSYM_CDEF_END`` section, only that section is used. The compiled
  module declares the ``float *`` / ``double *`` parameters as ``void *`` (the C call converts
  them back): the Python API passes ``ffi.from_buffer(array)`` without a C type, which costs
  about 40% less per array, after it has checked every array's dtype and picked the kernel for
  that dtype.
* When the folder holds ``bnsym_python.h`` (the Python API's C entry points), the module's own
  source includes it and is compiled with NumPy's headers and without Python's limited API;
  ``bnsym_py_install`` is then declared too, and NumPy's version is part of the cache key.
* Cache folder: ``$BNSYM_CACHE_DIR``, else ``$XDG_CACHE_HOME/bnsym``, else ``~/.cache/bnsym``.
  An entry is named by a hash of everything that goes into the binary: the source bytes (names
  included), the compiler path and its ``--version`` output, the flags, the Python ABI
  (``EXT_SUFFIX``, cache tag), the cffi version and :func:`bnsym.compiler.cpu_key`. The Python
  module name contains the hash (``_bnsym_k_<hash>``), so a rebuilt module never collides with
  an old one already imported in the same process.
* An entry is ``_bnsym_k_<hash><EXT_SUFFIX>`` plus ``_bnsym_k_<hash>.json`` (a manifest holding
  the binary's size and sha256, written *after* the binary was moved into place). A binary
  without a matching manifest is a partial or corrupt entry and is rebuilt.
* Building happens in a temporary folder inside the cache folder, under a file lock
  (``filelock``); the lock holder looks again once it has the lock (another process may have
  finished the same build meanwhile); the finished binary is moved into place with one
  ``os.replace``.
* ``load(defines=[...])`` adds ``-DNAME=VALUE`` flags (the kernels' tuning macros, e.g.
  ``BNSYM_CACHE_BYTES``): part of the flags, hence of the entry's hash (``bnsym compare -D``).
* Without a working C compiler :class:`CompileError` (a ``RuntimeError``) says what to install;
  when the compiler ran and failed, the message carries its command lines and output. When the
  build fails only because of OpenMP (``-fopenmp``), it is retried without OpenMP (the kernels
  then run single-threaded), first with ``-fopenmp-simd`` (the loops' ``omp simd`` pragmas, which
  need no runtime), then without it, and a warning is printed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

__all__ = [
    "CompileError",
    "cache_dir",
    "kernel_dir",
    "load",
    "cdef_from_header",
    "cache_key",
    "cli_cache",
    "define_flags",
]

# Bump when the way modules are built or named changes (invalidates every cache entry).
_BUILD_SCHEMA = "3"  # 2: float/double pointer parameters declared void *; 3: bnsym_python.h
_PREFIX = "_bnsym_k_"
_EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or importlib.machinery.EXTENSION_SUFFIXES[0]

_lock = threading.Lock()
_loaded: dict[str, tuple] = {}  # key -> (ffi, lib)
_version_cache: dict[tuple, str] = {}
# Incremented every time a module is actually compiled in this process (tests read it).
build_count = 0


class CompileError(RuntimeError):
    """The kernels could not be compiled (no working C compiler, or the compiler failed)."""


_INSTALL_HINT = (
    "Install a C compiler and try again:\n"
    "  Debian/Ubuntu: sudo apt-get install gcc   (or build-essential)\n"
    "  Fedora/RHEL:   sudo dnf install gcc\n"
    "  Alpine:        apk add build-base\n"
    "  macOS:         xcode-select --install   (Xcode command line tools)\n"
    "  conda:         conda install -c conda-forge c-compiler\n"
    "  Windows:       Microsoft C++ Build Tools (Visual Studio)\n"
    "or point $CC at a working compiler. The NumPy backend (backend='numpy') needs no compiler."
)


# --------------------------------------------------------------------------- locations


def cache_dir() -> Path:
    """``$BNSYM_CACHE_DIR``, else ``$XDG_CACHE_HOME/bnsym``, else ``~/.cache/bnsym``."""
    env = os.environ.get("BNSYM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "bnsym"
    return Path.home() / ".cache" / "bnsym"


def kernel_dir() -> Path:
    """The folder holding ``bnsym.h`` and the ``*.c`` kernels (``$BNSYM_KERNEL_DIR`` overrides)."""
    env = os.environ.get("BNSYM_KERNEL_DIR")
    if env:
        return Path(env).expanduser()
    from bnsym._paths import generated_dir

    return generated_dir()


#: What the Python API (and ``bnsym compare``, which calls kernels through it) needs of a folder.
FULL_SET = ("the full set with the default prefix, as 'bnsym generate --out DIR' writes it "
            "without --prefix, --dtypes or --layouts")


def api_folder_problem(folder: Path) -> str | None:
    """Why the Python API cannot call the kernels of ``folder`` (checked before anything is
    compiled), or None: no ``bnsym.h``, or one that declares not every kernel it calls."""
    header = Path(folder) / "bnsym.h"
    if not header.is_file():
        return "holds no bnsym.h"
    from bnsym.api import KERNEL_NAMES

    text = header.read_text(errors="replace")
    missing = [name for row in KERNEL_NAMES for name in row if f"{name}(" not in text]
    if missing:
        return f"declares no {', '.join(missing[:2])}{' ...' if len(missing) > 2 else ''}"
    return None


def _source_files(src: Path) -> list[Path]:
    header = src / "bnsym.h"
    if not header.is_file():
        raise CompileError(
            f"bnsym: no generated kernels in {src} (bnsym.h is missing); "
            "run 'bnsym generate --update' in a source checkout"
        )
    sources = sorted(p for p in src.glob("*.c") if p.is_file())
    if not sources:
        raise CompileError(f"bnsym: no generated kernels in {src} (no *.c files)")
    return [header] + sources


_PYTHON_ENTRY = "bnsym_python.h"


def _python_entry(src: Path) -> Path | None:
    """``bnsym_python.h`` of the folder (the Python API's C entry points), or None when absent
    or when NumPy's C headers are not installed (a NumPy packaged without them): the module is
    then built without the entry points, and the Python API calls the kernels through cffi."""
    p = src / _PYTHON_ENTRY
    if not p.is_file():
        return None
    return p if (Path(_numpy_include()[1]) / "numpy" / "arrayobject.h").is_file() else None


def _numpy_include() -> tuple[str, str]:
    """(NumPy's version, its C headers' folder): the entry point is compiled against them."""
    import numpy

    return numpy.__version__, numpy.get_include()


# --------------------------------------------------------------------------- cdef


_COMMENT_RE = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_PROTO_RE = re.compile(r"[A-Za-z_][\w\s\*]*?\b[A-Za-z_]\w*\s*\([^;{}]*\)\s*;")


_ARRAY_PARAM_RE = re.compile(r"\b(?:const\s+)?(?:float|double)\s*\*\s*")


def cdef_from_header(text: str, void_pointers: bool = False) -> str:
    """The cffi ``cdef`` for a header: its function prototypes, without what cdef cannot parse.

    ``void_pointers``: declare ``float *`` and ``double *`` parameters as ``void *``.
    """
    begin, end = text.find("BNSYM_CDEF_BEGIN"), text.find("BNSYM_CDEF_END")
    if 0 <= begin < end:
        text = text[text.index("\n", begin) + 1 : end]
        text = text[: text.rfind("\n") + 1] if "\n" in text else text
    text = _COMMENT_RE.sub(" ", text)
    # Drop preprocessor lines, including their backslash continuations.
    lines, cont = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if cont or stripped.startswith("#"):
            cont = stripped.endswith("\\")
            continue
        lines.append(line)
    text = "\n".join(lines)
    text = re.sub(r'extern\s+"C"\s*\{', " ", text)
    text = re.sub(r"__attribute__\s*\(\(.*?\)\)", " ", text)
    protos = []
    for m in _PROTO_RE.finditer(text):
        proto = " ".join(m.group(0).split())
        proto = re.sub(r"^(?:extern|BNSYM_API|BNSYM_EXPORT)\s+", "", proto)
        if void_pointers:
            proto = _ARRAY_PARAM_RE.sub("void *", proto)
        protos.append(proto)
    if not protos:
        raise CompileError("bnsym: no function prototypes found in bnsym.h")
    return "\n".join(protos) + "\n"


# --------------------------------------------------------------------------- compiler


def _compiler_command() -> list[str]:
    """The C compiler setuptools will use: ``$CC``, else Python's configured ``CC``."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    try:
        return shlex.split(cc)
    except ValueError:
        return cc.split()


def _compiler_identity() -> tuple[str | None, str]:
    """(resolved compiler path or None, its ``--version`` output)."""
    cmd = _compiler_command()
    if not cmd:
        return None, ""
    path = shutil.which(cmd[0])
    if path is None:
        return None, ""
    try:
        st = os.stat(path)
        memo = (path, st.st_mtime_ns, st.st_size)
    except OSError:
        memo = (path, 0, 0)
    version = _version_cache.get(memo)
    if version is None:
        try:
            proc = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=30, check=False
            )
            version = (proc.stdout + proc.stderr).strip()
        except (OSError, subprocess.SubprocessError) as exc:
            version = f"<--version failed: {exc}>"
        _version_cache[memo] = version
    return path, version


def _flags() -> tuple[list[str], list[str]]:
    from bnsym import compiler

    return list(compiler.compile_args()), list(compiler.link_args())


_MACRO_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def define_flags(defines=()) -> list[str]:
    """``-DNAME`` / ``-DNAME=VALUE`` compiler flags for ``defines``: strings ``"NAME"`` or
    ``"NAME=VALUE"`` (the kernels' tuning macros, e.g. ``"BNSYM_CACHE_BYTES=8388608"``).
    Raises ValueError for a name that is not a C identifier or a value with a line break."""
    out = []
    for d in defines:
        if not isinstance(d, str):
            raise TypeError(f"a define must be a string NAME or NAME=VALUE, got {type(d).__name__} {d!r}")
        name, eq, value = d.partition("=")
        if not _MACRO_RE.match(name):
            raise ValueError(f"define {d!r}: {name!r} is not a C macro name (letters, digits, _)")
        if "\n" in value or "\r" in value or "\0" in value:
            raise ValueError(f"define {d!r}: the value must be on one line")
        out.append(f"-D{name}{eq}{value}")
    return out


def _cffi_version() -> str:
    import cffi

    return cffi.__version__


_key_memo: dict[tuple, tuple[str, dict]] = {}


def cache_key(source_dir: Path | str | None = None, defines=()) -> tuple[str, dict]:
    """(hash naming the cache entry, description of what went into it).

    ``defines``: macros for the compiler (:func:`define_flags`), part of the flags and the key.
    Memoized per process on the sources' names, sizes and mtimes and the environment variables
    that change the compiler or its flags, so that repeated calls do not re-read the sources.
    """
    src = Path(source_dir) if source_dir is not None else kernel_dir()
    dflags = tuple(define_flags(defines))
    try:
        sig = tuple((p.name, st.st_size, st.st_mtime_ns, st.st_ino)
                    for p in sorted(src.iterdir()) if p.suffix in (".c", ".h")
                    for st in (p.stat(),))
    except OSError:
        sig = None
    memo = (str(src), sig, dflags, os.environ.get("CC"), os.environ.get("PATH"),
            os.environ.get("BNSYM_NO_NATIVE"))
    hit = _key_memo.get(memo) if sig is not None else None
    if hit is not None:
        return hit
    result = _cache_key(src, list(dflags))
    if sig is not None:
        _key_memo[memo] = result
    return result


def _cache_key(src: Path, dflags: list[str]) -> tuple[str, dict]:
    from bnsym import compiler

    h = hashlib.sha256()
    h.update(f"bnsym-build-schema={_BUILD_SCHEMA}\n".encode())
    files = _source_files(src)
    entry = _python_entry(src)
    for p in files + ([entry] if entry is not None else []):
        data = p.read_bytes()
        h.update(f"file {p.name} {len(data)}\n".encode())
        h.update(data)
    cc_path, cc_version = _compiler_identity()
    cflags, ldflags = _flags()
    cflags += dflags
    info = {
        "sources": [p.name for p in files] + ([entry.name] if entry is not None else []),
        "source_dir": str(src),
        "compiler": cc_path,
        "compiler_version": cc_version.splitlines()[0] if cc_version else "",
        "cflags": cflags,
        "ldflags": ldflags,
        "ext_suffix": _EXT_SUFFIX,
        "cache_tag": sys.implementation.cache_tag,
        "cffi": _cffi_version(),
        "cpu_key": compiler.cpu_key(),
        # the entry point uses NumPy's C API: a module built against other headers is another entry
        "numpy": _numpy_include()[0] if entry is not None else None,
    }
    for k in ("compiler", "cflags", "ldflags", "ext_suffix", "cache_tag", "cffi", "cpu_key", "numpy"):
        h.update(f"{k}={info[k]!r}\n".encode())
    h.update(f"compiler_version={cc_version!r}\n".encode())
    return h.hexdigest()[:24], info


# --------------------------------------------------------------------------- entries


def _entry_paths(key: str, root: Path) -> tuple[str, Path, Path]:
    name = _PREFIX + key
    return name, root / (name + _EXT_SUFFIX), root / (name + ".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _entry_valid(so: Path, manifest: Path) -> bool:
    """True when the binary exists and matches its manifest (size and sha256)."""
    try:
        meta = json.loads(manifest.read_text())
        st = so.stat()
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or st.st_size != meta.get("size"):
        return False
    try:
        return _sha256(so) == meta.get("sha256")
    except OSError:
        return False


def _import(name: str, so: Path):
    spec = importlib.util.spec_from_file_location(name, str(so))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {so}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ffi, module.lib


@contextlib.contextmanager
def _captured_output():
    """Capture everything written to fds 1 and 2 (the compiler's output) and to sys.stdout/err."""
    buf = tempfile.TemporaryFile(mode="w+b")
    text = []
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = []
    try:
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(buf.fileno(), fd)
            except OSError:
                pass
        import io

        pyout = io.StringIO()
        with contextlib.redirect_stdout(pyout), contextlib.redirect_stderr(pyout):
            try:
                yield text
            finally:
                text.append(pyout.getvalue())
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, dup in saved:
            os.dup2(dup, fd)
            os.close(dup)
        buf.seek(0)
        text.insert(0, buf.read().decode("utf-8", "replace"))
        buf.close()


def _compile(name: str, src: Path, workdir: Path, cflags: list[str], ldflags: list[str]) -> Path:
    """Run cffi's out-of-line compilation; returns the built binary. Raises CompileError."""
    import cffi

    files = _source_files(src)
    entry = _python_entry(src)
    ffi = cffi.FFI()
    cdef = cdef_from_header(files[0].read_text(), void_pointers=True)
    main = '#include "bnsym.h"\n'
    include_dirs = [str(src.resolve())]
    macros = []
    if entry is not None:
        # the Python API's C entry point: a CPython function using NumPy's C API, included into
        # the module's own source (which has Python.h); not the limited API (NumPy's macros)
        cdef += cdef_from_header(entry.read_text())
        main += f'#include "{entry.name}"\n'
        include_dirs.append(_numpy_include()[1])
        macros.append(("_CFFI_NO_LIMITED_API", None))
    ffi.cdef(cdef)
    ffi.set_source(
        name,
        main,
        sources=[str(p.resolve()) for p in files[1:]],
        include_dirs=include_dirs,
        define_macros=macros,
        extra_compile_args=cflags,
        extra_link_args=ldflags,
        py_limited_api=False,
    )
    output: list[str] = []
    try:
        with _captured_output() as output:
            so = ffi.compile(tmpdir=str(workdir), verbose=True)
    except Exception as exc:  # cffi.VerificationError, distutils errors, OSError
        log = "".join(output).strip()
        err = CompileError(
            f"bnsym: compiling the kernels failed: {exc}\n"
            f"--- compiler commands and output ---\n{log}\n------------------------------------"
        )
        err.log = log
        raise err from exc
    return Path(so)


def _build(name: str, src: Path, root: Path, so_path: Path, manifest: Path, info: dict) -> None:
    global build_count
    cc_path = info.get("compiler")
    if cc_path is None:
        cmd = " ".join(_compiler_command())
        raise CompileError(
            f"bnsym: no working C compiler was found (looked for {cmd!r}, from "
            f"{'$CC' if os.environ.get('CC') else 'Python build configuration'}); the kernels "
            f"are compiled on first use.\n{_INSTALL_HINT}"
        )
    cflags, ldflags = list(info["cflags"]), list(info["ldflags"])
    print("bnsym: compiling kernels (first use, ~20 s)...", file=sys.stderr, flush=True)
    if (src / _PYTHON_ENTRY).is_file() and _python_entry(src) is None:
        print(f"bnsym: warning: NumPy's C headers are not installed ({_numpy_include()[1]}); "
              "building without the C entry points (every call takes the Python path, a few "
              "microseconds more)", file=sys.stderr)
    t0 = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    openmp = True
    used = cflags
    try:
        try:
            built = _compile(name, src, workdir / "a", cflags, ldflags)
        except CompileError as first:
            omp_c = [f for f in cflags if f.startswith("-fopenmp")]
            omp_l = [f for f in ldflags if f.startswith("-fopenmp")]
            if not (omp_c or omp_l) or not re.search(
                r"openmp|omp\.h|gomp|lomp", getattr(first, "log", ""), re.I
            ):
                raise
            from bnsym import compiler

            serial = [f for f in cflags if f not in omp_c]
            serial_l = [f for f in ldflags if f not in omp_l]
            # first with the ``omp simd`` pragmas alone (no runtime needed: the loops stay
            # vectorized), then without them
            for attempt, flags in (("b", compiler.serial_args(serial)), ("c", serial)):
                try:
                    built = _compile(name, src, workdir / attempt, flags, serial_l)
                    used = flags
                    break
                except CompileError:
                    continue
            else:
                raise first from first.__cause__
            openmp = False
            print(
                "bnsym: warning: the compiler does not support OpenMP; kernels built single-threaded"
                + ("" if attempt == "b" else " and without 'omp simd' (-fopenmp-simd)"),
                file=sys.stderr,
            )
        os.replace(built, so_path)
        meta = dict(info, size=so_path.stat().st_size, sha256=_sha256(so_path), openmp=openmp,
                    built_cflags=used,
                    created=time.strftime("%Y-%m-%d %H:%M:%S"), module=name)
        tmp_manifest = workdir / "manifest.json"
        tmp_manifest.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_manifest, manifest)
        build_count += 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"bnsym: kernels compiled in {time.perf_counter() - t0:.1f} s, cached in {root}",
          file=sys.stderr, flush=True)


def load(source_dir: Path | str | None = None, defines=()):
    """``(ffi, lib)`` of the compiled kernels; compiles them on first use (cached on disk).

    ``defines``: macros for the compiler, ``"NAME"`` or ``"NAME=VALUE"`` (the kernels' tuning
    macros, such as ``BNSYM_CACHE_BYTES``); a build with other defines is another cache entry.
    """
    key, info = cache_key(source_dir, defines)
    hit = _loaded.get(key)
    if hit is not None:
        return hit
    with _lock:
        hit = _loaded.get(key)
        if hit is not None:
            return hit
        result = _load_locked(key, info)
        _loaded[key] = result
        return result


def _load_locked(key: str, info: dict):
    from filelock import FileLock

    src = Path(info["source_dir"])
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    name, so_path, manifest = _entry_paths(key, root)
    if _entry_valid(so_path, manifest):
        try:
            return _import(name, so_path)
        except ImportError:
            pass  # rebuilt below
    with FileLock(str(root / (name + ".lock")), timeout=900):
        if _entry_valid(so_path, manifest):
            try:
                return _import(name, so_path)
            except ImportError:
                pass
        # Missing, partial or corrupt: (re)build. Remove the stale manifest first so that a
        # crash mid-build never leaves a manifest that vouches for another binary.
        with contextlib.suppress(FileNotFoundError):
            manifest.unlink()
        _build(name, src, root, so_path, manifest, info)
    try:
        return _import(name, so_path)
    except ImportError as exc:
        raise CompileError(f"bnsym: the freshly compiled kernels cannot be imported: {exc}") from exc


# --------------------------------------------------------------------------- CLI


def _entries(root: Path) -> list[dict]:
    out = []
    if not root.is_dir():
        return out
    for so in sorted(root.glob(_PREFIX + "*" + _EXT_SUFFIX)):
        name = so.name[: -len(_EXT_SUFFIX)]
        manifest = root / (name + ".json")
        meta = {}
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads(manifest.read_text())
        out.append({"name": name, "so": so, "manifest": manifest, "meta": meta,
                    "size": so.stat().st_size, "valid": _entry_valid(so, manifest)})
    return out


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def cli_cache(args) -> int:
    """``bnsym cache info`` / ``bnsym cache clear``."""
    root = cache_dir()
    if args.action == "info":
        print(f"cache folder: {root}")
        try:
            key, _ = cache_key()
            current = _PREFIX + key
        except CompileError as exc:
            current = None
            print(f"current sources: unavailable ({str(exc).splitlines()[0]})")
        entries = _entries(root)
        if not entries:
            print("entries: none")
        total = 0
        for e in entries:
            total += e["size"]
            meta = e["meta"]
            tags = []
            if e["name"] == current:
                tags.append("current")
            if not e["valid"]:
                tags.append("INVALID (rebuilt on next use)")
            if meta.get("openmp") is False:
                tags.append("no OpenMP")
            tag = f"  [{', '.join(tags)}]" if tags else ""
            print(f"  {e['so'].name}  {_human(e['size'])}  {meta.get('created', '?')}  "
                  f"{meta.get('compiler_version', '')}{tag}")
        if entries:
            print(f"entries: {len(entries)}, {_human(total)}")
        if current is not None and not any(e["name"] == current for e in entries):
            print(f"current sources: not compiled yet ({current}{_EXT_SUFFIX})")
        return 0
    if args.action == "clear":
        removed = 0
        if root.is_dir():
            for p in list(root.iterdir()):
                if not p.name.startswith((_PREFIX, ".build-")):
                    continue
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        p.unlink()
                removed += 1
        print(f"removed {removed} file(s) from {root}")
        return 0
    raise ValueError(f"unknown cache action {args.action!r}")
