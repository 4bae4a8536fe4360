"""SymPy's C99 printer, tuned for the generated kernels.

* Powers never become ``pow(...)``: exponents that are small integers are written as products
  (``v*v*v``), half-integers as products with one ``sqrt`` (``1.0/(v*sqrt(v))``), and a
  negative exponent as a reciprocal (``1.0/sqrt(eps + var)``). gcc keeps ``pow(x, -1.0/2.0)`` as a
  library call at -O2/-O3; these forms compile to ``vsqrt``/``vdiv``/``vmul``.
* :func:`make_printer` gives a ``double`` printer (per-channel math, reductions) or a ``float``
  printer (``sqrtf``, ``1.0F`` literals) for the element arithmetic of float32 kernels.
* :func:`cse_statements` runs :func:`sympy.cse` with the canonical order and fixed temporary
  names, so that regenerating gives the same bytes, and prints ``(lhs, rhs)`` string pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy
from sympy.codegen.ast import float32, float64, real
from sympy.logic.boolalg import BooleanFunction
from sympy.printing.c import C99CodePrinter
from sympy.printing.precedence import PRECEDENCE

__all__ = ["BnCPrinter", "make_printer", "cse_program", "cse_statements", "round_to_float32", "is_finite", "MAX_EXPANDED_POWER"]

#: Largest integer exponent written as a product (larger ones fall back to ``pow``, which the
#: tests forbid in generated C; no BN kernel needs more than 3).
MAX_EXPANDED_POWER = 8


class BnCPrinter(C99CodePrinter):
    """C99 printer without ``pow`` calls for integer and half-integer exponents."""

    printmethod = "_bnsym_ccode"

    def _one(self) -> str:
        return self._print(sympy.Float(1.0))

    def _sqrt(self, base_str: str) -> str:
        suffix = self._get_func_suffix(real)
        return f"{self._ns}sqrt{suffix}({base_str})"

    def _print_Pow(self, expr):
        base, exp = expr.base, expr.exp
        if exp.is_Rational and exp.q in (1, 2) and exp != 0:
            mag = abs(exp)
            whole = int(mag.p // mag.q)  # integer part of |exp|
            half = mag.q == 2
            if whole <= MAX_EXPANDED_POWER:
                bstr = self.parenthesize(base, PRECEDENCE["Mul"])
                factors = [bstr] * whole
                if half:
                    factors.append(self._sqrt(self._print(base)))
                positive = "*".join(factors)
                if exp > 0:
                    return positive
                if len(factors) > 1:
                    positive = f"({positive})"
                return f"{self._one()}/{positive}"
        return super()._print_Pow(expr)

    def _print_And(self, expr):
        return " && ".join(f"({self._print(a)})" for a in expr.args)

    def _print_Or(self, expr):
        return " || ".join(f"({self._print(a)})" for a in expr.args)

    def _print_Piecewise(self, expr):
        # one line, ``(c1) ? (e1) : (e2)``, for the selects of vector loops (SymPy's spreads a
        # ternary over several lines); the last piece must hold everywhere
        if expr.args[-1].cond != sympy.true:
            raise ValueError("bnsym: a Piecewise needs a last piece with condition True")
        text = f"({self._print(expr.args[-1].expr)})"
        for e, c in reversed(expr.args[:-1]):
            text = f"(({self._print(c)}) ? ({self._print(e)}) : {text})"
        return text

    def parenthesize(self, item, level, strict=False):
        # A Pow printed as a product or a quotient is wrapped whenever it is an operand: SymPy's
        # Mul printer puts it after "/" at Add precedence (-1/b**2), where "b*b" would be wrong.
        if isinstance(item, sympy.Pow):
            text = self._print(item)
            if "*" in text or "/" in text:
                return f"({text})"
            return text
        return super().parenthesize(item, level, strict)


class round_to_float32(sympy.Function):
    """``(double)(float)(v)``: v rounded to float32 and back (for a hi/lo split of a double)."""

    nargs = 1


def _print_round_to_float32(self, expr):
    return f"(double)(float)({self._print(expr.args[0])})"


BnCPrinter._print_round_to_float32 = _print_round_to_float32


class is_finite(BooleanFunction):
    """C99 ``isfinite(v)`` (a boolean-valued function for range tests)."""

    nargs = 1


def _print_is_finite(self, expr):
    return f"isfinite({self._print(expr.args[0])})"


BnCPrinter._print_is_finite = _print_is_finite

_PRINTERS: dict[tuple, BnCPrinter] = {}


class BnOrderedPrinter(BnCPrinter):
    """Prints a product's numerator factors that depend on ``first`` symbols (the reductions)
    first, and integer powers as repeated factors in line, so that C multiplies left to right
    as ``sum*invstd*invstd*invstd``: a huge sum meets the small factors one at a time and no
    partial product (``invstd**3`` alone) leaves the floating-point range needlessly."""

    def __init__(self, settings=None, first=frozenset()):
        super().__init__(settings)
        self._first = frozenset(first)

    def _print_Mul(self, expr):
        coeff, factors = expr.as_coeff_mul()
        num, den = [], []
        for f in factors:
            if f.is_Pow and f.exp.is_Rational and f.exp.is_negative:
                den.append(sympy.Pow(f.base, -f.exp))
            else:
                num.append(f)
        if not den and not any(f.is_Pow for f in num) and len(num) < 2:
            return super()._print_Mul(expr)

        def key(f):
            names = {str(x) for x in f.free_symbols}
            return (0 if names & self._first else 1, str(f))

        parts: list[str] = []
        for f in sorted(num, key=key):
            if f.is_Pow and f.exp.is_Integer and 1 < int(f.exp) <= MAX_EXPANDED_POWER:
                parts += [self.parenthesize(f.base, PRECEDENCE["Mul"])] * int(f.exp)
            else:
                parts.append(self.parenthesize(f, PRECEDENCE["Mul"]))
        sign = ""
        if coeff == -1:
            sign = "-"
        elif coeff != 1:
            parts.insert(0, self.parenthesize(coeff, PRECEDENCE["Mul"]))
        text = "*".join(parts) if parts else self._print(sympy.S.One)
        if den:
            dens = [self.parenthesize(d, PRECEDENCE["Mul"]) for d in den]
            text += "/" + (dens[0] if len(dens) == 1 else "(" + "*".join(dens) + ")")
        return sign + text


def make_printer(ctype: str = "double", first=None) -> BnCPrinter:
    """A (cached) printer for ``double`` or ``float`` arithmetic; with ``first`` (symbol names),
    products print those symbols' factors first (see :class:`BnOrderedPrinter`)."""
    if ctype not in ("double", "float"):
        raise ValueError(f"unsupported C type {ctype!r}")
    key = (ctype, frozenset(first or ()))
    printer = _PRINTERS.get(key)
    if printer is None:
        alias = float32 if ctype == "float" else float64
        settings = {"type_aliases": {real: alias}}
        printer = BnOrderedPrinter(settings, first=key[1]) if first else BnCPrinter(settings)
        _PRINTERS[key] = printer
    return printer


def cse_program(
    defs: Sequence[tuple[str, sympy.Expr]],
    targets: Sequence[sympy.Expr],
    printer: BnCPrinter,
    temp_prefix: str,
    rename: dict[sympy.Symbol, sympy.Symbol] | None = None,
) -> tuple[list[tuple[str, str]], list[str]]:
    """CSE of named definitions and target expressions, as a straight-line program.

    ``defs`` are ``(name, expr)`` pairs whose names later expressions may use; ``targets`` are
    the values wanted. Returns ``(statements, results)``: statements ``(name, c_expression)``
    (cse temporaries and definitions) in an order where each statement follows everything it
    reads (Kahn's algorithm, always taking the earliest ready statement: temporaries in cse
    order first, then definitions in their order), and the printed targets.
    """
    rename = rename or {}
    exprs = [sympy.sympify(e).xreplace(rename) for _, e in defs]
    exprs += [sympy.sympify(e).xreplace(rename) for e in targets]
    temps, reduced = sympy.cse(exprs, symbols=sympy.numbered_symbols(temp_prefix), order="canonical")
    nodes = [(sym.name, val) for sym, val in temps]
    nodes += [(name, val) for (name, _), val in zip(defs, reduced[: len(defs)])]
    produced = {name for name, _ in nodes}
    deps = [{x.name for x in val.free_symbols} & produced - {name} for name, val in nodes]
    done: set[str] = set()
    order: list[int] = []
    pending = list(range(len(nodes)))
    while pending:
        for k in pending:
            if deps[k] <= done:
                order.append(k)
                done.add(nodes[k][0])
                pending.remove(k)
                break
        else:
            raise ValueError("cse_program: cyclic definitions")
    stmts = [(nodes[k][0], printer.doprint(nodes[k][1])) for k in order]
    results = [printer.doprint(val) for val in reduced[len(defs):]]
    return stmts, results


def cse_statements(
    assignments: Sequence[tuple[str, sympy.Expr]],
    printer: BnCPrinter,
    temp_prefix: str,
    rename: dict[sympy.Symbol, sympy.Symbol] | None = None,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Common-subexpression-eliminate ``assignments`` and print them.

    ``assignments`` is a list of ``(lhs_name, expr)``; ``rename`` maps plan symbols to the
    symbols named as the C variables. Returns ``(temporaries, results)``, each a list of
    ``(name, c_expression)``: the temporaries first (``<temp_prefix>0``, ...), then the
    assignments in their given order.
    """
    rename = rename or {}
    exprs = [sympy.sympify(e).xreplace(rename) for _, e in assignments]
    temps, reduced = sympy.cse(
        exprs, symbols=sympy.numbered_symbols(temp_prefix), order="canonical"
    )
    tmp = [(str(sym), printer.doprint(val)) for sym, val in temps]
    res = [(name, printer.doprint(val)) for (name, _), val in zip(assignments, reduced)]
    return tmp, res


def _self_test() -> None:  # pragma: no cover - a quick manual check
    a, b = sympy.symbols("a b")
    for ct in ("double", "float"):
        p = make_printer(ct)
        for e in (1 / sympy.sqrt(a + b), (a + b) ** sympy.Rational(-3, 2), a * b**3, a / b**2, a - b):
            print(ct, e, "->", p.doprint(e))


if __name__ == "__main__":  # pragma: no cover
    _self_test()
