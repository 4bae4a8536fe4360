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
    import tempfile

    import numpy as np

    from . import _paths, build, codegen, reference
    from .layer import BatchNorm

    t0 = _stage("3. generate: templates + kernel plans -> C, compared with the committed generated/")
    with tempfile.TemporaryDirectory(prefix="bnsym-gen-") as tmp:
        files = codegen.render(progress=lambda msg: print(f"   {msg} ...", flush=True))
        codegen.write(tmp, files)
        for name, text in sorted(files.items()):
            print(f"   {name:28s} {len(text.splitlines()):6d} lines")
        differ = codegen.check(_paths.generated_dir(), files)
    if differ:
        print(f"   generated/ differs from a fresh generation in: {', '.join(differ)}")
        print("   (run 'bnsym generate --update' after changing the templates or the derivation)")
        return 1
    print(f"   identical to {_paths.generated_dir()} (byte for byte)")
    _done(t0)

    t0 = _stage("4. compile: cffi API mode, cached by a hash of sources, compiler, flags and ABI")
    key, _ = build.cache_key()
    print(f"   cache: {build.cache_dir()} (entry {key[:16]})")
    build.load()
    print("   compiled module loaded")
    _done(t0)

    t0 = _stage("5. run: a BatchNorm layer, forward and backward, against the NumPy float64 reference")
    rng = np.random.default_rng(args.seed)
    x = (3.0 + 2.0 * rng.standard_normal((16, 8, 12, 12))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    layer = BatchNorm(8)
    layer.weight[:] = rng.uniform(0.5, 1.5, 8).astype(np.float32)
    layer.bias[:] = rng.standard_normal(8).astype(np.float32)
    y = layer.forward(x)
    dx = layer.backward(dy)
    ref_y, mean, var, invstd = reference.forward_train(x, layer.weight, layer.bias, layer.eps)
    ref_dx, ref_dw, ref_db = reference.backward_train(dy, x, layer.weight, mean, invstd)
    errs = {
        "y": np.max(np.abs(y - ref_y)) / np.max(np.abs(ref_y)),
        "grad_input": np.max(np.abs(dx - ref_dx)) / np.max(np.abs(ref_dx)),
        "grad_weight": np.max(np.abs(layer.grad_weight - ref_dw)) / np.max(np.abs(ref_dw)),
        "grad_bias": np.max(np.abs(layer.grad_bias - ref_db)) / np.max(np.abs(ref_db)),
        "running_var": np.max(np.abs(layer.running_var - (0.9 + 0.1 * var * x.size / 8 / (x.size / 8 - 1))))
        / np.max(var),
    }
    print(f"   input {x.shape} float32, training step: y, dx, dgamma, dbeta, running statistics")
    tol = 1e-5
    for name, e in errs.items():
        print(f"   {name:12s} max relative error {e:.2e}  (tolerance {tol:.0e})")
    layer.eval()
    y_eval = layer.forward(x)
    ref_eval = reference.forward_eval(x, layer.weight, layer.bias, layer.running_mean, layer.running_var,
                                      layer.eps)
    e = np.max(np.abs(y_eval - ref_eval)) / np.max(np.abs(ref_eval))
    errs["y (eval)"] = e
    print(f"   {'y (eval)':12s} max relative error {e:.2e}  (tolerance {tol:.0e})")
    _done(t0)
    bad = [k for k, e in errs.items() if not e <= tol]
    if bad:
        print(f"\nFAILED: {', '.join(bad)} off the reference")
        return 1
    print("\nall stages passed")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from .cli import main

    sys.exit(main(["pipeline", *sys.argv[1:]]))
