"""Canonical forms: a graph's expressions rewritten in a chosen basis of node symbols.

Reverse mode leaves adjoints in whatever forward symbols the local derivatives mention
(``xmu``, ``std``, ``var``, ``xhat`` ...). To read off a closed form, or to plan a kernel, we pick
a *basis* (for the paper's closed form: ``dy``, ``xhat`` per element and ``gamma``, ``invstd``
per channel; for a kernel: ``dy``, ``xmu`` per element so that the inner loop stays centered)
and

1. solve the graph's map relations ``v = f(parents)`` one unknown at a time for every non-basis
   symbol (``xmu = xhat/invstd``, ``var = 1/invstd**2 - eps``);
2. turn every reduce node's definition ``r = scale * sum(summand)`` into an identity between
   channel sums in that basis (``sum(x) = m*mean`` gives ``sum(xhat) = 0``).

Both come from the graph alone: nothing here knows about batch normalization.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from .graph import ChannelSum, Graph, linearize_sums


@dataclass
class Basis:
    """Rewrites expressions of a graph in the symbols of ``names`` (plus constants)."""

    graph: Graph
    names: tuple[str, ...]
    m: sympy.Symbol
    seed: sympy.Symbol
    subs: dict[sympy.Symbol, sympy.Expr] = field(default_factory=dict)
    sum_identities: dict[sympy.Expr, sympy.Expr] = field(default_factory=dict)

    def __post_init__(self):
        self._solve_relations()
        self._sum_identities()

    @property
    def element(self) -> set[sympy.Symbol]:
        return self.graph.element_symbols() | {self.seed}

    def _unknowns(self, expr: sympy.Expr) -> set[sympy.Symbol]:
        nodes = {n.symbol for n in self.graph.nodes.values()}
        basis = {self.graph.symbol(b) for b in self.names}
        return {s for s in expr.free_symbols if s in nodes and s not in basis and s not in self.subs}

    def _solve_relations(self) -> None:
        relations = [(n.symbol, n.expr) for n in self.graph.nodes.values() if n.kind == "map"]
        pending = list(relations)
        while pending:
            progress = False
            for rel in list(pending):
                lhs, rhs = rel
                eq = (lhs - rhs).xreplace(self.subs)
                unknown = self._unknowns(eq)
                if len(unknown) > 1:
                    continue
                pending.remove(rel)
                progress = True
                if not unknown:
                    continue  # the relation holds between basis symbols already
                (u,) = unknown
                solutions = sympy.solve(eq, u)
                if len(solutions) != 1:
                    raise ValueError(f"cannot express {u} uniquely in the basis {self.names}: {solutions}")
                value = solutions[0]
                self.subs = {k: v.xreplace({u: value}) for k, v in self.subs.items()}
                self.subs[u] = value
            if not progress:
                left = sorted({str(s) for rel in pending for s in self._unknowns(rel[0] - rel[1])})
                raise ValueError(f"basis {self.names} does not determine {left}")

    def _sum_identities(self) -> None:
        for node in self.graph.nodes.values():
            if node.kind != "reduce":
                continue
            lhs = self.rewrite_plain(node.symbol) / node.scale
            rhs = self.linearize(ChannelSum(self.rewrite_plain(node.expr)))
            eq = sympy.expand(lhs - rhs).xreplace(self.sum_identities)
            unknown = sorted(eq.atoms(ChannelSum), key=sympy.default_sort_key)
            if len(unknown) != 1:
                continue  # nothing new (or not solvable for a single sum): no identity
            (s,) = unknown
            solutions = sympy.solve(eq, s)
            if len(solutions) == 1:
                self.sum_identities[s] = sympy.simplify(solutions[0])

    def linearize(self, expr: sympy.Expr) -> sympy.Expr:
        return linearize_sums(expr, self.element, self.m)

    def rewrite_plain(self, expr: sympy.Expr) -> sympy.Expr:
        """Substitute the solved relations (inside channel sums too)."""
        return sympy.sympify(expr).xreplace(self.subs)

    def rewrite(self, expr: sympy.Expr) -> sympy.Expr:
        """``expr`` in the basis: relations solved, sums linearized, sum identities applied."""
        out = self.linearize(self.rewrite_plain(expr))
        out = out.xreplace(self.sum_identities)
        return sympy.expand(out)
