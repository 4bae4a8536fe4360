"""bnsym compare: two folders of kernels timed call by call in one process, outputs compared."""

import json
import math
import re
import shutil

import numpy as np
import pytest

from bnsym import api, compare
from bnsym._paths import generated_dir

CASES = [(16, 8), (2, 4, 5, 6)]
FAST = {"min_time": 0.0, "min_samples": 3, "warm_time": 0.0}


def test_time_pair_alternates_and_counts():
    calls = []
    ta, tb = compare.time_pair(lambda: calls.append("a"), lambda: calls.append("b"),
                               min_samples=4, min_time=0.0, warm_time=0.0)
    assert len(ta) == len(tb) == 4
    timed = calls[6:]  # after three warm-up pairs
    assert timed == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_difference_is_zero_only_for_bitwise_equal_outputs():
    a = [np.array([1.0, -2.0, 4.0]), np.array([3.0])]
    assert compare._difference(a, [x.copy() for x in a]) == 0.0
    b = [np.array([1.0, -2.0, 4.0 + 4e-6]), np.array([3.0])]
    assert compare._difference(a, b) == pytest.approx(1e-6)
    nan = [np.array([np.nan, 1.0])]
    assert compare._difference(nan, [np.array([np.nan, 1.0])]) == 0.0
    assert compare._difference(nan, [np.array([1.0, np.nan])]) == math.inf


def test_same_folder_is_bitwise_itself_and_restores_the_api(kernels):
    before = api._K, api._CF, api._CB, api.get_num_threads()
    report = compare.compare(generated_dir(), generated_dir(), CASES, ["float32", "float64"],
                             ["nchw", "nhwc"], [1, 2], ["fwd", "infer", "bwd"], progress=False,
                             timing=FAST)
    # 2-D: one layout; 4-D: two; times 2 dtypes, 2 thread counts, 3 passes
    assert len(report["rows"]) == (1 + 2) * 2 * 2 * 3
    for r in report["rows"]:
        assert r["difference"] == 0.0, r
        assert r["a_min"] > 0 and r["b_min"] > 0 and r["samples"] >= 3
        assert r["ratio_min"] == pytest.approx(r["b_min"] / r["a_min"])
    assert set(report["geomean"]) == {"fwd", "infer", "bwd"}
    assert (api._K, api._CF, api._CB, api.get_num_threads()) == before
    text = compare.format_compare(report)
    assert "bitwise A's" in text and "geometric mean of B/A" in text


def test_a_changed_kernel_is_reported(tmp_path, kernels):
    """B = the package's kernels with the double sqrt scaled by 1 + 1e-7 in the inference file
    only: inference differs (the per-channel coefficients of both dtypes are computed in double),
    the training forward (another file) stays bitwise the same."""
    b = tmp_path / "b"
    shutil.copytree(generated_dir(), b)
    path = b / "bnsym_forward_eval.c"
    text = path.read_text()
    anchor = "#include <string.h>\n"
    assert anchor in text
    path.write_text(text.replace(anchor, anchor + "#define sqrt(v) (1.0000001 * (sqrt)(v))\n", 1))
    report = compare.compare(generated_dir(), b, [(16, 8)], ["float32", "float64"], ["nchw"], [1],
                             ["fwd", "infer"], progress=False, timing=FAST)
    diff = {(r["dtype"], r["pass"]): r["difference"] for r in report["rows"]}
    assert 1e-8 < diff[("float64", "infer")] < 1e-6
    assert 0.0 < diff[("float32", "infer")] < 1e-6
    assert diff[("float64", "fwd")] == diff[("float32", "fwd")] == 0.0
    assert re.search(r"differ: \d\.\de-0[78] rel", compare.format_compare(report))


def test_cli_refuses_a_folder_without_kernels(tmp_path, capsys):
    assert compare.main([str(tmp_path)]) == 2
    assert "holds no bnsym.h" in capsys.readouterr().err


def test_cli_reports_a_folder_that_does_not_compile(tmp_path, capsys, monkeypatch, kernels):
    monkeypatch.setenv("BNSYM_CACHE_DIR", str(tmp_path / "cache"))
    b = tmp_path / "b"
    shutil.copytree(generated_dir(), b)
    (b / "bnsym_forward_eval.c").write_text("int broken(void) { return undeclared_name; }\n")
    assert compare.main([str(b), "--cases", "4x8", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "undeclared_name" in err and "bnsym_forward_eval.c" in err


def test_cli_refuses_a_partial_set_before_compiling(tmp_path, capsys):
    """A float32-only folder (``bnsym generate --out --dtypes float32``) is refused up front."""
    b = tmp_path / "b"
    shutil.copytree(generated_dir(), b)
    header = b / "bnsym.h"
    header.write_text("\n".join(line for line in header.read_text().split("\n")
                                if "_f64_" not in line))
    assert compare.main([str(b), "--cases", "4x8", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "declares no bnsym_forward_train_f64_ncs" in err and "--dtypes" in err
    assert "compiling" not in err


def test_define_flags():
    from bnsym.build import define_flags

    assert define_flags(["BNSYM_NO_STREAM", "BNSYM_CACHE_BYTES=8388608", "X_1=(1 << 20)"]) == [
        "-DBNSYM_NO_STREAM", "-DBNSYM_CACHE_BYTES=8388608", "-DX_1=(1 << 20)"]
    for bad in ("1BAD", "A-B=1", "=3", ""):
        with pytest.raises(ValueError, match="not a C macro name"):
            define_flags([bad])
    with pytest.raises(ValueError, match="one line"):
        define_flags(["A=1\n#include <evil.h>"])
    with pytest.raises(TypeError):
        define_flags([("A", 1)])


def test_defines_are_part_of_the_flags_and_the_cache_key():
    from bnsym import build

    key0, info0 = build.cache_key(generated_dir())
    key1, info1 = build.cache_key(generated_dir(), ["BNSYM_CACHE_BYTES=8388608"])
    assert key1 != key0
    assert info1["cflags"] == info0["cflags"] + ["-DBNSYM_CACHE_BYTES=8388608"]
    assert build.cache_key(generated_dir(), ["BNSYM_CACHE_BYTES=8388608"])[0] == key1
    assert build.cache_key(generated_dir(), ["BNSYM_CACHE_BYTES=4194304"])[0] not in (key0, key1)


def test_cli_define_refuses_a_macro_the_kernels_do_not_use(capsys):
    assert compare.main(["-D", "BNSYM_CACHE_BYTE=1", "--cases", "4x8", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "never use BNSYM_CACHE_BYTE" in err
    for name in ("BNSYM_CACHE_BYTES", "BNSYM_STREAM_BYTES", "BNSYM_NO_STREAM", "BNSYM_SMALL_VALUES",
                 "BNSYM_CHANNEL_BLOCK_BYTES", "BNSYM_ELEM_LANE_BYTES"):
        assert name in err  # the macros they do use
    assert not re.search(r"\b_OPENMP\b", err) and "compiling" not in err  # the compiler's own
    assert compare.main(["--base-define", "2X", "--cases", "4x8"]) == 2
    assert "not a C macro name" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # nothing to compare
        compare.main(["--cases", "4x8"])
    assert exc.value.code == 2
    assert "give a folder of kernels (DIR), or -D" in capsys.readouterr().err


def test_cli_define_reaches_the_compiler(tmp_path, capsys, monkeypatch, kernels):
    """-D builds B with the macro: a value that cannot compile fails with the compiler's command
    (which carries the flag); a good one runs, is said in the report and recorded in the build's
    manifest."""
    from bnsym import build

    monkeypatch.setenv("BNSYM_CACHE_DIR", str(tmp_path / "cache"))
    assert compare.main(["-D", "BNSYM_CACHE_BYTES=(", "--cases", "4x8", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "-DBNSYM_CACHE_BYTES=(" in err and "compiling the kernels failed" in err
    rc = compare.main(["-D", "BNSYM_NO_STREAM", "--cases", "16x8", "--dtypes", "float32",
                       "--threads", "1", "--passes", "fwd", "--min-samples", "3", "--min-time", "0",
                       "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"B: {generated_dir()} with -DBNSYM_NO_STREAM" in out and "bitwise A's" in out
    key, _ = build.cache_key(generated_dir(), ["BNSYM_NO_STREAM"])
    manifest = json.loads((tmp_path / "cache" / f"_bnsym_k_{key}.json").read_text())
    assert "-DBNSYM_NO_STREAM" in manifest["built_cflags"]
