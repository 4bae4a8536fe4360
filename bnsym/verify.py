"""Proofs that the derived gradients are right.

* **exact**: for concrete batch sizes m = 2..6, BN is written out in explicit symbols
  ``x_1..x_m`` (straight from its definition, independently of the graph machinery), the scalar
  ``L = sum_i dy_i*y_i`` is differentiated by ``sympy.diff``, and the engine's closed forms,
  instantiated for the same m, must equal it: the difference simplifies to 0. ``eps`` is
  eliminated as ``r**2 - var`` (``r = sqrt(var + eps) > 0``) so that the difference is a rational
  function and cancels exactly.
* **fd-float64**: central differences of the expanded function in float64 along a random
  direction (as PyTensor's ``verify_grad``) and in gamma and beta, at several input scales
  (standard, m = 2, a large mean, a tiny variance, a large spread).
* **fd-mpmath**: the same at 60 significant digits with mpmath, where the error must be tiny
  (below 1e-25: a wrong formula is off by order one).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import sympy

from .derivation import GRADIENTS, MODES, Derivation, derive, dy, eps, m
from .graph import ChannelSum


@dataclass
class CheckResult:
    """One proof: what was checked, on what, the largest error and the verdict."""

    check: str
    mode: str
    inputs: str
    max_error: float
    tolerance: float
    passed: bool
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


# ---------------------------------------------------------------------------------------
# The expanded function, written from BN's definition (not from the graph)
# ---------------------------------------------------------------------------------------

@dataclass
class Expanded:
    """BN for a concrete m in explicit symbols, and ``L = sum_i dy_i*y_i``."""

    mode: str
    m: int
    x: list[sympy.Symbol]
    dy: list[sympy.Symbol]
    gamma: sympy.Symbol
    beta: sympy.Symbol
    eps: sympy.Symbol
    stats: list[sympy.Symbol]  # eval: running_mean, running_var
    mean: sympy.Expr
    var: sympy.Expr
    L: sympy.Expr

    @property
    def params(self) -> list[sympy.Symbol]:
        return [*self.x, *self.dy, self.gamma, self.beta, self.eps, *self.stats]


def expanded_bn(mode: str, size: int) -> Expanded:
    x = list(sympy.symbols(f"x_1:{size + 1}", real=True))
    dys = list(sympy.symbols(f"dy_1:{size + 1}", real=True))
    gamma, beta = sympy.symbols("gamma beta", real=True)
    eps = sympy.Symbol("eps", positive=True)
    if mode == "train":
        mean = sum(x) / size
        var = sum((xi - mean) ** 2 for xi in x) / size
        stats = []
    else:
        mean, var = sympy.Symbol("running_mean", real=True), sympy.Symbol("running_var", nonnegative=True)
        stats = [mean, var]
    y = [gamma * (xi - mean) / sympy.sqrt(var + eps) + beta for xi in x]
    L = sum(d * yi for d, yi in zip(dys, y))
    return Expanded(mode, size, x, dys, gamma, beta, eps, stats, mean, var, L)


def instantiate(d: Derivation, e: Expanded, grad: str, k: int | None) -> sympy.Expr:
    """The engine's closed form for ``grad`` written out for element ``k`` (0-based) of ``e``."""
    g = d.graph
    invstd_val = 1 / sympy.sqrt(e.var + e.eps)
    mean_sym = g.symbol("mean" if d.mode == "train" else "running_mean")

    def elem_subs(i: int) -> dict:
        return {dy: e.dy[i], g.symbol("xhat"): (e.x[i] - e.mean) * invstd_val,
                g.symbol("xmu"): e.x[i] - e.mean, g.symbol("x"): e.x[i]}

    expr = d.closed_forms[grad]
    expr = expr.replace(lambda a: isinstance(a, ChannelSum),
                        lambda a: sympy.Add(*[a.args[0].xreplace(elem_subs(i)) for i in range(e.m)]))
    if k is not None:
        expr = expr.xreplace(elem_subs(k))
    return expr.xreplace({g.symbol("invstd"): invstd_val, mean_sym: e.mean, m: e.m,
                          g.symbol("gamma"): e.gamma, g.symbol("beta"): e.beta, eps: e.eps})


def _is_zero(expr: sympy.Expr, e: Expanded) -> bool:
    """Exact zero test: eliminate eps through r = sqrt(var + eps), then cancel."""
    r = sympy.Symbol("r", positive=True)
    reduced = expr.subs(e.eps, r**2 - e.var)
    num, _ = sympy.fraction(sympy.cancel(sympy.together(reduced)))
    if sympy.expand(num) == 0:
        return True
    return sympy.simplify(expr) == 0  # slower fallback; same verdict when it can decide


def exact_check(d: Derivation, size: int) -> CheckResult:
    t0 = time.perf_counter()
    e = expanded_bn(d.mode, size)
    wrt = {"dx": e.x, "dgamma": [e.gamma], "dbeta": [e.beta]}
    failures = 0
    for grad in GRADIENTS:
        for k, var in enumerate(wrt[grad]):
            derived = instantiate(d, e, grad, k if grad == "dx" else None)
            if not _is_zero(sympy.diff(e.L, var) - derived, e):
                failures += 1
    return CheckResult("exact (sympy.diff)", d.mode, f"m={size}: dx, dgamma, dbeta",
                       0.0 if failures == 0 else math.inf, 0.0, failures == 0, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------
# Finite differences
# ---------------------------------------------------------------------------------------

FD_CASES = [
    # name, m, mean, spread, eps
    ("standard", 8, 0.0, 1.0, 1e-5),
    ("smallest batch", 2, 0.5, 1.0, 1e-5),
    ("large mean 1e4", 16, 1e4, 1.0, 1e-5),
    ("tiny variance 1e-6", 8, 0.3, 1e-3, 1e-5),
    ("large spread 1e3", 8, -5.0, 1e3, 1e-3),
]


#: Working precision of the mpmath checks (the step is 1e-18 of the input's scale).
MPMATH_DIGITS = 60


def _closed_form_functions(d: Derivation, backend: str):
    """The closed forms as functions of (dy, xhat, gamma, invstd) arrays/scalars."""
    g = d.graph
    args = [dy, g.symbol("xhat"), g.symbol("gamma"), g.symbol("invstd"), m]
    modules = [{"ChannelSum": np.sum}, "mpmath" if backend == "mpmath" else "numpy"]
    return {k: sympy.lambdify(args, v, modules=modules) for k, v in d.closed_forms.items()}


def fd_check(d: Derivation, name: str, size: int, center: float, spread: float, eps_val: float,
             rng: np.random.Generator, precision: str) -> CheckResult:
    t0 = time.perf_counter()
    e = expanded_bn(d.mode, size)
    x0 = center + spread * rng.standard_normal(size)
    dy0 = rng.standard_normal(size)
    gamma0, beta0 = 1.0 + 0.5 * rng.standard_normal(), rng.standard_normal()
    stats0 = [center + 0.1 * spread, (0.8 * spread) ** 2] if d.mode == "eval" else []
    direction = rng.standard_normal(size)
    if precision == "mpmath":
        import mpmath

        num = mpmath.mpf
        conv = np.vectorize(num, otypes=[object])
        x0, dy0, direction = conv(x0), conv(dy0), conv(direction)
        gamma0, beta0, eps0 = num(gamma0), num(beta0), num(eps_val)
        stats0 = [num(s) for s in stats0]
        sqrt = mpmath.sqrt
        rel_h, tol = num(10) ** -18, 1e-25
        L = sympy.lambdify(e.params, e.L, modules="mpmath")
    else:
        eps0 = eps_val
        sqrt = math.sqrt
        rel_h, tol = 1e-5, 1e-6
        L = sympy.lambdify(e.params, e.L, modules="numpy")

    def loss(x, gamma, beta):
        return L(*x, *dy0, gamma, beta, eps0, *stats0)

    # the gradient from the closed forms, evaluated at x0
    if d.mode == "train":
        mean = np.sum(x0) / size
        var = np.sum((x0 - mean) ** 2) / size
    else:
        mean, var = stats0
    invstd = 1 / sqrt(var + eps0)
    xhat = (x0 - mean) * invstd
    funcs = _closed_form_functions(d, precision)
    derived = {k: f(dy0, xhat, gamma0, invstd, size) for k, f in funcs.items()}
    derived["dx"] = np.broadcast_to(np.asarray(derived["dx"], dtype=object if precision == "mpmath" else float), (size,))

    # central differences; the step follows the scale the function varies on
    hx = rel_h * max(spread, math.sqrt(eps_val))
    hp = rel_h
    fd_dx = (loss(x0 + hx * direction, gamma0, beta0) - loss(x0 - hx * direction, gamma0, beta0)) / (2 * hx)
    fd_dg = (loss(x0, gamma0 + hp, beta0) - loss(x0, gamma0 - hp, beta0)) / (2 * hp)
    fd_db = (loss(x0, gamma0, beta0 + hp) - loss(x0, gamma0, beta0 - hp)) / (2 * hp)
    pairs = [(fd_dx, np.sum(derived["dx"] * direction), np.sum(np.abs(derived["dx"] * direction))),
             (fd_dg, derived["dgamma"], abs(derived["dgamma"])),
             (fd_db, derived["dbeta"], abs(derived["dbeta"]))]
    err = max(float(abs(fd - an) / max(scale, 1e-300)) for fd, an, scale in pairs)
    label = f"fd-mpmath ({MPMATH_DIGITS} digits)" if precision == "mpmath" else "fd-float64 (central)"
    return CheckResult(label, d.mode, f"{name}, m={size}", err, tol, err <= tol, time.perf_counter() - t0)


def run_checks(d: Derivation, max_m: int = 6, seed: int = 0) -> list[CheckResult]:
    """Every proof for one mode: exact for m = 2..max_m, then the finite-difference cases."""
    if not 2 <= max_m <= 8:
        raise ValueError(f"max_m must be between 2 and 8, got {max_m}")
    rng = np.random.default_rng(seed)
    results = [exact_check(d, size) for size in range(2, max_m + 1)]
    for name, size, center, spread, eps_val in FD_CASES:
        results.append(fd_check(d, name, size, center, spread, eps_val, rng, "float64"))
    for name, size, center, spread, eps_val in (FD_CASES[0], FD_CASES[2], FD_CASES[3]):
        import mpmath

        with mpmath.workdps(MPMATH_DIGITS):
            results.append(fd_check(d, name, size, center, spread, eps_val, rng, "mpmath"))
    return results


def format_table(results: list[CheckResult]) -> str:
    header = ("check", "mode", "size or inputs", "max error", "tolerance", "verdict")
    rows = [(r.check, r.mode, r.inputs, "0 (exact)" if r.check.startswith("exact") and r.passed
             else f"{r.max_error:.2e}", "exact" if r.check.startswith("exact") else f"{r.tolerance:.0e}",
             r.verdict) for r in results]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def cli_verify(args) -> int:
    import sys

    modes = MODES if args.mode == "all" else (args.mode,)
    if not 2 <= args.max_m <= 8:
        print(f"bnsym: error: --max-m must be between 2 and 8, got {args.max_m}", file=sys.stderr)
        return 2
    results: list[CheckResult] = []
    for mode in modes:
        print(f"bnsym verify: {mode} mode: exact proofs m=2..{args.max_m}, finite differences ...",
              file=sys.stderr, flush=True)
        results += derive(mode).verify(max_m=args.max_m, seed=args.seed)
    print(format_table(results))
    failed = [r for r in results if not r.passed]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0
