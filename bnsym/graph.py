"""Computational graphs of per-element and per-channel nodes, and the channel sum.

A normalization layer is a small graph over the ``m`` elements that share a channel:

* an **input** node is per element (``x``) or per channel (``gamma``);
* a **map** node is a SymPy expression of earlier nodes' symbols; it is per element when any
  of its arguments is, per channel otherwise (``xmu = x - mean``, ``std = sqrt(var + eps)``);
* a **reduce** node is ``scale * sum_i summand_i`` over the channel's elements, a per-channel
  symbol in its own right (``mean = (1/m) * sum(x)``); the sum is never unrolled.

Constants such as ``eps`` and ``m`` are plain SymPy symbols, not nodes. :class:`ChannelSum`
is the unevaluated ``sum_i`` that reverse mode produces where an adjoint flows into a
per-channel node; :func:`linearize_sums` pulls per-channel factors out of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

ELEMENT = "element"
CHANNEL = "channel"


class ChannelSum(sympy.Function):
    """``sum_i f_i``: the sum of a per-element expression over the m elements of a channel."""

    nargs = 1
    is_commutative = True
    is_real = True

    def _sympystr(self, printer):
        return f"sum({printer._print(self.args[0])})"

    def _latex(self, printer):
        return r"\sum_{i} \left(" + printer._print(self.args[0]) + r"\right)"


@dataclass
class Node:
    """One stage of the graph (see the module docstring)."""

    name: str
    kind: str  # "input", "map" or "reduce"
    level: str  # ELEMENT or CHANNEL
    symbol: sympy.Symbol
    expr: sympy.Expr | None = None  # map: the expression; reduce: the summand
    scale: sympy.Expr = sympy.Integer(1)  # reduce: value = scale * sum(summand)
    doc: str = ""
    parents: tuple[str, ...] = ()

    def definition(self) -> sympy.Expr | None:
        """The right-hand side, with reductions as :class:`ChannelSum`."""
        if self.kind == "map":
            return self.expr
        if self.kind == "reduce":
            return self.scale * ChannelSum(self.expr)
        return None


@dataclass
class Graph:
    """An ordered (topologically sorted by construction) graph of :class:`Node`."""

    name: str
    nodes: dict[str, Node] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)

    # -- construction -----------------------------------------------------------------
    def _add(self, node: Node) -> sympy.Symbol:
        if node.name in self.nodes:
            raise ValueError(f"node {node.name!r} defined twice")
        self.nodes[node.name] = node
        return node.symbol

    def _parents(self, expr: sympy.Expr) -> tuple[str, ...]:
        names = {s.name for s in expr.free_symbols}
        return tuple(n for n in self.nodes if n in names)

    def input(self, name: str, level: str, doc: str = "", **assumptions) -> sympy.Symbol:
        return self._add(Node(name, "input", level, sympy.Symbol(name, real=True, **assumptions), doc=doc))

    def map(self, name: str, expr: sympy.Expr, doc: str = "", **assumptions) -> sympy.Symbol:
        parents = self._parents(expr)
        level = ELEMENT if any(self.nodes[p].level == ELEMENT for p in parents) else CHANNEL
        sym = sympy.Symbol(name, real=True, **assumptions)
        return self._add(Node(name, "map", level, sym, expr=expr, doc=doc, parents=parents))

    def reduce(self, name: str, summand: sympy.Expr, scale: sympy.Expr, doc: str = "",
               **assumptions) -> sympy.Symbol:
        parents = self._parents(summand)
        if not any(self.nodes[p].level == ELEMENT for p in parents):
            raise ValueError(f"reduce node {name!r}: the summand {summand} is not per element")
        sym = sympy.Symbol(name, real=True, **assumptions)
        return self._add(Node(name, "reduce", CHANNEL, sym, expr=summand, scale=scale, doc=doc,
                              parents=parents))

    # -- queries ----------------------------------------------------------------------
    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def symbol(self, name: str) -> sympy.Symbol:
        return self.nodes[name].symbol

    def children(self, name: str) -> list[str]:
        return [n for n, node in self.nodes.items() if name in node.parents]

    def element_symbols(self) -> set[sympy.Symbol]:
        return {n.symbol for n in self.nodes.values() if n.level == ELEMENT}

    def is_element_level(self, expr: sympy.Expr, extra: set[sympy.Symbol] = frozenset()) -> bool:
        """True when ``expr`` varies over the elements (ChannelSum results do not)."""
        elem = self.element_symbols() | set(extra)
        return _has_free_element(expr, elem)

    def inline(self, expr: sympy.Expr, keep: set[str] = frozenset()) -> sympy.Expr:
        """Substitute map nodes' definitions (not those in ``keep``) until only inputs, reduce
        nodes and kept nodes remain."""
        for name in reversed(list(self.nodes)):
            node = self.nodes[name]
            if node.kind == "map" and name not in keep and node.symbol in expr.free_symbols:
                expr = expr.subs(node.symbol, node.expr)
        return expr


def _has_free_element(expr: sympy.Expr, elem: set[sympy.Symbol]) -> bool:
    if isinstance(expr, ChannelSum):
        return False
    if isinstance(expr, sympy.Symbol):
        return expr in elem
    return any(_has_free_element(a, elem) for a in expr.args)


def linearize_sums(expr: sympy.Expr, element: set[sympy.Symbol], m: sympy.Symbol) -> sympy.Expr:
    """Apply the linearity of the channel sum everywhere in ``expr``.

    ``sum(a*f + b*g) = a*sum(f) + b*sum(g)`` for per-channel ``a``, ``b``, and ``sum(a) = m*a``;
    the sums left are of per-element monomials only (``sum(dy*xhat)``).
    """

    def split(arg: sympy.Expr) -> sympy.Expr:
        arg = sympy.expand(linearize_sums(arg, element, m))
        total = sympy.Integer(0)
        for term in sympy.Add.make_args(arg):
            chan, elem = [], []
            for factor in sympy.Mul.make_args(term):
                (elem if _has_free_element(factor, element) else chan).append(factor)
            coeff = sympy.Mul(*chan)
            total += coeff * (ChannelSum(sympy.Mul(*elem)) if elem else m)
        return total

    return expr.replace(lambda e: isinstance(e, ChannelSum), lambda e: split(e.args[0]))
