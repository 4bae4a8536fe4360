"""`bnsym verify` and `bnsym derive` from the command line, and the proofs' verdicts."""

import subprocess
import sys

import pytest

from bnsym import cli
from bnsym.derivation import derive


def run(*args):
    return subprocess.run([sys.executable, "-m", "bnsym.cli", *args], capture_output=True, text=True, timeout=300)


def test_every_proof_passes_in_both_modes():
    for mode in ("train", "eval"):
        results = derive(mode).verify(max_m=6)
        checks = {r.check.split()[0] for r in results}
        assert checks == {"exact", "fd-float64", "fd-mpmath"}
        assert [r.inputs for r in results if r.check.startswith("exact")] == [
            f"m={k}: dx, dgamma, dbeta" for k in range(2, 7)]
        bad = [r for r in results if not r.passed]
        assert not bad, bad
        # the stated tolerances are met with margin, not barely
        for r in results:
            if r.check.startswith("fd"):
                assert r.max_error < r.tolerance / 10


def test_verify_cli_prints_table_and_exit_status(capsys):
    assert cli.main(["verify", "--mode", "eval", "--max-m", "3"]) == 0
    out = capsys.readouterr().out
    assert "check" in out and "verdict" in out and "PASS" in out
    assert "0 failed" in out


def test_verify_cli_exits_nonzero_on_a_failing_check(monkeypatch, capsys):
    from bnsym import verify

    real = verify.fd_check

    def wrong(*a, **k):
        r = real(*a, **k)
        r.passed, r.max_error = False, 1.0
        return r

    monkeypatch.setattr(verify, "fd_check", wrong)
    assert cli.main(["verify", "--mode", "train", "--max-m", "2"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_derive_cli_outputs(tmp_path):
    dot = tmp_path / "g.dot"
    p = run("derive", "--stages", "--plan", "--dot", str(dot))
    assert p.returncode == 0, p.stderr
    assert "bar_xhat" in p.stdout and "dx" in p.stdout and "kernel backward_train" in p.stdout
    assert dot.read_text().startswith("digraph")
    p = run("derive", "--mode", "eval", "--latex")
    assert p.returncode == 0 and "\\begin{align*}" in p.stdout


@pytest.mark.parametrize("args", [
    ["derive", "--mode", "nope"], ["verify", "--max-m", "x"], ["frobnicate"], ["verify", "--max-m", "40"],
    # once tracebacks (NumPy refuses a negative seed), an error on stdout, or silently ignored
    ["verify", "--seed", "-1"], ["pipeline", "--seed", "-1"], ["bench", "--seed", "-1"],
    ["compare", "--seed", "-1"], ["derive", "--latex", "--plan"], ["generate", "--out", ""],
    ["bench", "--from-json", "/nonexistent/report.json"], ["derive", "--dot", "/nonexistent/dir/g.dot"],
])
def test_bad_cli_arguments_give_one_line_and_nonzero_exit(args):
    p = run(*args)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not p.stdout.strip(), p.stdout


def test_generate_out_into_a_file_is_refused_before_deriving(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    for out in (afile, afile / "sub"):
        p = run("generate", "--out", str(out))
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert p.stderr.strip() == f"bnsym: error: cannot write the kernels into {out}: {afile} is not a folder"


def test_bench_options_reach_the_benchmark():
    p = run("bench", "--help")
    assert p.returncode == 0 and "--quick" in p.stdout
    p = run("bench", "--bogus")
    assert p.returncode == 2 and "--bogus" in p.stderr


def test_pipeline_runs_end_to_end():
    """The README's main command: derive, verify, generate (compared), compile, run."""
    p = run("pipeline")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for stage in ("1. derive", "2. verify", "3. generate", "4. compile", "5. run"):
        assert stage in p.stdout
    assert "identical to" in p.stdout and "all stages passed" in p.stdout
