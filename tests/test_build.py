"""bnsym.build: cdef extraction, the on-disk cache (hit, rebuild, corruption, lock), errors, CLI."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bnsym import build

HEADER = textwrap.dedent("""\
    /* probe header: same shape as the generated one */
    #ifndef BNSYM_H
    #define BNSYM_H
    #include <stdint.h>
    #ifdef __cplusplus
    extern "C" {
    #endif
    /* scale: y = a * x */
    int bnsym_probe(int64_t n, const double *x,
                    double *y, double a);  // trailing comment
    #ifdef __cplusplus
    }
    #endif
    #endif
""")

SOURCE = textwrap.dedent("""\
    #include "bnsym.h"
    int bnsym_probe(int64_t n, const double *x, double *y, double a) {
        for (int64_t i = 0; i < n; i++) y[i] = a * x[i] + VERSION;
        return 0;
    }
""")


def _write_sources(folder: Path, version: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bnsym.h").write_text(HEADER)
    (folder / "probe.c").write_text(f"#define VERSION {version}\n" + SOURCE)
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("BNSYM_CACHE_DIR", str(root))
    monkeypatch.setattr(build, "_loaded", {})
    return root


def _probe(lib, ffi, version):
    x = np.arange(4.0)
    y = np.empty(4)
    assert lib.bnsym_probe(4, ffi.from_buffer("double[]", x), ffi.from_buffer("double[]", y), 2.0) == 0
    np.testing.assert_array_equal(y, 2 * x + version)


# --------------------------------------------------------------------------- cdef


def test_cdef_from_header_keeps_only_prototypes():
    cdef = build.cdef_from_header(HEADER)
    assert cdef.strip() == "int bnsym_probe(int64_t n, const double *x, double *y, double a);"


def test_cdef_void_pointers():
    # the compiled module takes untyped buffers: float/double pointers become void *, the rest stays
    cdef = build.cdef_from_header(HEADER, void_pointers=True)
    assert cdef.strip() == "int bnsym_probe(int64_t n, void *x, void *y, double a);"
    text = "int g(const float *x, float* y, int64_t *n, double s);\n"
    assert build.cdef_from_header(text, void_pointers=True).strip() == \
        "int g(void *x, void *y, int64_t *n, double s);"


def test_cdef_section_markers_and_attributes():
    text = ("#include <stdint.h>\nstatic inline int helper(void) { return 1; }\n"
            "/* BNSYM_CDEF_BEGIN */\nint f(int64_t n);\n"
            "__attribute__((visibility(\"default\"))) int g(const float *x);\n"
            "/* BNSYM_CDEF_END */\n")
    assert build.cdef_from_header(text).split("\n")[:2] == ["int f(int64_t n);", "int g(const float *x);"]


def test_cdef_of_generated_header_parses(kernels):
    import cffi
    header = (build.kernel_dir() / "bnsym.h").read_text()
    cdef = build.cdef_from_header(header)
    cffi.FFI().cdef(cdef)  # must not raise
    assert cdef.count("bnsym_forward_train_f32_ncs") == 1
    assert len(cdef.strip().splitlines()) == 16


# --------------------------------------------------------------------------- cache


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("BNSYM_CACHE_DIR", str(tmp_path / "a"))
    assert build.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("BNSYM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert build.cache_dir() == tmp_path / "x" / "bnsym"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert build.cache_dir() == Path.home() / ".cache" / "bnsym"


def test_cache_hit_does_not_rebuild(tmp_path, cache):
    src = _write_sources(tmp_path / "src")
    n0 = build.build_count
    ffi, lib = build.load(src)
    _probe(lib, ffi, 0)
    assert build.build_count == n0 + 1
    (so,) = cache.glob("_bnsym_k_*" + build._EXT_SUFFIX)
    mtime = so.stat().st_mtime_ns
    assert build.load(src)[1] is lib  # in-process memo
    build._loaded.clear()
    ffi2, lib2 = build.load(src)  # from disk
    _probe(lib2, ffi2, 0)
    assert build.build_count == n0 + 1
    assert so.stat().st_mtime_ns == mtime
    assert not list(cache.glob(".build-*"))  # temporary folders removed


def test_changed_source_gets_a_new_module(tmp_path, cache):
    src = _write_sources(tmp_path / "src", version=0)
    ffi, lib = build.load(src)
    _probe(lib, ffi, 0)
    _write_sources(src, version=7)
    ffi2, lib2 = build.load(src)
    _probe(lib2, ffi2, 7)  # not the old code under the same name
    assert len(list(cache.glob("_bnsym_k_*" + build._EXT_SUFFIX))) == 2


def test_native_build_is_keyed_by_cpu(tmp_path, monkeypatch):
    """A ``-march=native`` build never serves another CPU: the CPU is in the key. Without native
    flags (``BNSYM_NO_NATIVE``) the build gets another key too."""
    import platform

    from bnsym import compiler

    src = _write_sources(tmp_path / "src")
    monkeypatch.delenv("BNSYM_NO_NATIVE", raising=False)
    monkeypatch.setattr(build, "_key_memo", {})
    key, info = build.cache_key(src)
    if platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64"):
        assert "-march=native" in info["cflags"]
    assert info["cpu_key"] == compiler.cpu_key()
    monkeypatch.setattr(compiler, "cpu_key", lambda: "another-cpu")
    monkeypatch.setattr(build, "_key_memo", {})
    key_other_cpu, info_other = build.cache_key(src)
    assert info_other["cpu_key"] == "another-cpu" and key_other_cpu != key
    monkeypatch.undo()
    monkeypatch.setenv("BNSYM_NO_NATIVE", "1")
    monkeypatch.setattr(build, "_key_memo", {})
    key_portable, info_portable = build.cache_key(src)
    assert not any(f.startswith("-march") for f in info_portable["cflags"])
    assert key_portable != key


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_manifest", "bad_manifest"])
def test_corrupt_entry_is_rebuilt(damage, tmp_path, cache):
    src = _write_sources(tmp_path / "src")
    key, _ = build.cache_key(src)
    name, so, manifest = build._entry_paths(key, cache)
    # Build in another process: a shared library mapped into this one must not be damaged in place.
    code = "import sys; from bnsym import build; build.load(sys.argv[1])"
    p = subprocess.run([sys.executable, "-c", code, str(src)], capture_output=True, text=True,
                       env=dict(os.environ), timeout=600)
    assert p.returncode == 0, p.stderr
    assert build._entry_valid(so, manifest)
    if damage == "truncate":
        so.write_bytes(so.read_bytes()[:1000])
    elif damage == "garbage":
        so.write_bytes(b"\0" * so.stat().st_size)
    elif damage == "no_manifest":
        manifest.unlink()
    else:
        manifest.write_text("{not json")
    n0 = build.build_count
    ffi, lib = build.load(src)
    assert build.build_count == n0 + 1
    _probe(lib, ffi, 0)
    assert build._entry_valid(so, manifest)


def _run(code, env_extra, cwd=None):
    env = dict(os.environ)
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_concurrent_first_use_compiles_once(tmp_path):
    src = _write_sources(tmp_path / "src")
    env = dict(os.environ, BNSYM_CACHE_DIR=str(tmp_path / "cache"))
    code = ("import sys; from bnsym import build; ffi, lib = build.load(sys.argv[1]); "
            "print(build.build_count)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(src)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sorted(int(o[0]) for o in outs) == [0, 0, 1]
    assert sum("compiling kernels" in o[1] for o in outs) == 1


# --------------------------------------------------------------------------- errors


def test_missing_compiler_cc(tmp_path):
    src = _write_sources(tmp_path / "src")
    code = ("import sys\nfrom bnsym import build\ntry:\n    build.load(sys.argv[1])\n"
            "except build.CompileError as e:\n    print(e); sys.exit(3)\n")
    env = dict(os.environ, BNSYM_CACHE_DIR=str(tmp_path / "cache"), CC="/nonexistent/cc")
    p = subprocess.run([sys.executable, "-c", code, str(src)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode == 3, p.stderr
    assert "no working C compiler was found" in p.stdout
    assert "/nonexistent/cc" in p.stdout
    assert "apt-get install gcc" in p.stdout and "xcode-select --install" in p.stdout
    assert isinstance(build.CompileError("x"), RuntimeError)


def test_missing_compiler_path(tmp_path):
    src = _write_sources(tmp_path / "src")
    code = ("import sys\nfrom bnsym import build\ntry:\n    build.load(sys.argv[1])\n"
            "except build.CompileError as e:\n    print(e); sys.exit(3)\n")
    env = dict(os.environ, BNSYM_CACHE_DIR=str(tmp_path / "cache"), PATH=str(tmp_path / "empty"))
    env.pop("CC", None)
    p = subprocess.run([sys.executable, "-c", code, str(src)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode == 3, p.stderr
    assert "no working C compiler was found" in p.stdout


def test_missing_compiler_through_the_api(tmp_path):
    code = ("import numpy as np, bnsym\n"
            "try:\n    bnsym.batch_norm(np.ones((4, 3), np.float32), None, None, training=True)\n"
            "except RuntimeError as e:\n    print(e); raise SystemExit(3)\n"
            "y = bnsym.batch_norm(np.ones((4, 3), np.float32), None, None, training=True, backend='numpy')\n")
    env = dict(os.environ, BNSYM_CACHE_DIR=str(tmp_path / "cache"), CC="/nonexistent/cc")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "no working C compiler was found" in p.stdout


def test_compile_error_shows_command_and_output(tmp_path, cache):
    src = _write_sources(tmp_path / "src")
    (src / "probe.c").write_text('#include "bnsym.h"\nint bnsym_probe(int64_t n { oops }\n')
    with pytest.raises(build.CompileError) as info:
        build.load(src)
    msg = str(info.value)
    assert "compiling the kernels failed" in msg
    assert "probe.c" in msg and "error" in msg  # the compiler's own diagnostics
    assert "-O3" in msg  # the command line
    assert not list(cache.glob("_bnsym_k_*" + build._EXT_SUFFIX))
    assert not list(cache.glob(".build-*"))


def test_missing_sources(tmp_path, cache):
    with pytest.raises(build.CompileError, match="bnsym.h is missing"):
        build.load(tmp_path)


# --------------------------------------------------------------------------- CLI


def test_cli_cache_info_and_clear(tmp_path, cache, capsys, monkeypatch):
    from bnsym.cli import main
    src = _write_sources(tmp_path / "src")
    monkeypatch.setenv("BNSYM_KERNEL_DIR", str(src))
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(cache) in out and "not compiled yet" in out
    build.load()
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "[current]" in out and "entries: 1" in out
    assert main(["cache", "clear"]) == 0
    assert "removed" in capsys.readouterr().out
    assert not list(cache.glob("_bnsym_k_*"))
    assert main(["cache", "info"]) == 0
    assert "entries: none" in capsys.readouterr().out


def test_cli_cache_info_subprocess_no_sympy(tmp_path):
    code = ("import sys; from bnsym.cli import main; main(['cache', 'info']); "
            "print('HEAVY', [m for m in ('sympy', 'jinja2') if m in sys.modules])")
    p = _run(code, {"BNSYM_CACHE_DIR": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    assert "HEAVY []" in p.stdout


# --------------------------------------------------------------------------- OpenMP fallback


def _cc_without(tmp_path, rejected):
    """A compiler wrapper that refuses the options ``rejected`` as a compiler without OpenMP does
    (e.g. Apple's clang), and otherwise runs the real one."""
    import shutil
    real = shutil.which("gcc") or shutil.which("cc")
    if real is None:
        pytest.skip("no C compiler")
    cases = "|".join(rejected)
    script = tmp_path / "cc-no-openmp"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        for a in "$@"; do
            case "$a" in
                {cases}) echo "cc: error: unsupported option '$a'" >&2; exit 1;;
            esac
        done
        exec {real} "$@"
    """))
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("rejected, simd", [(["-fopenmp"], True),
                                            (["-fopenmp", "-fopenmp-simd"], False)],
                         ids=["no-openmp", "no-openmp-no-simd"])
def test_openmp_fallback(tmp_path, cache, monkeypatch, capfd, rejected, simd):
    """Without OpenMP the build retries with -fopenmp-simd (the omp simd pragmas alone), then
    without it; the module works either way and its manifest says which flags built it."""
    import json

    monkeypatch.setenv("CC", _cc_without(tmp_path, rejected))
    src = _write_sources(tmp_path / "src")
    ffi, lib = build.load(src)
    _probe(lib, ffi, 0)
    err = capfd.readouterr().err
    assert "does not support OpenMP; kernels built single-threaded" in err
    assert ("without 'omp simd'" in err) is (not simd)
    (manifest,) = cache.glob("_bnsym_k_*.json")
    meta = json.loads(manifest.read_text())
    assert meta["openmp"] is False
    assert "-fopenmp" not in meta["built_cflags"]
    assert ("-fopenmp-simd" in meta["built_cflags"]) is simd
    assert ("-DBNSYM_OPENMP_SIMD" in meta["built_cflags"]) is simd
