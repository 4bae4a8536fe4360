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
from sympy.printing.c import C99CodePrinter
from sympy.printing.precedence import PRECEDENCE

__all__ = ["BnCPrinter", "make_printer", "cse_statements", "round_to_float32", "MAX_EXPANDED_POWER"]

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

_PRINTERS: dict[str, BnCPrinter] = {}


def make_printer(ctype: str = "double") -> BnCPrinter:
    """A (cached) printer for ``double`` or ``float`` arithmetic."""
    if ctype not in ("double", "float"):
        raise ValueError(f"unsupported C type {ctype!r}")
    printer = _PRINTERS.get(ctype)
    if printer is None:
        alias = float32 if ctype == "float" else float64
        printer = BnCPrinter({"type_aliases": {real: alias}})
        _PRINTERS[ctype] = printer
    return printer


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
