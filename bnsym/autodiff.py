"""Reverse-mode differentiation over a :class:`~bnsym.graph.Graph`, stage by stage.

Given the upstream gradient ``dy`` of the output node (a per-element symbol), the scalar being
differentiated is ``L = sum_i dy_i * y_i``. Walking the graph backwards, each node's adjoint
``bar(v) = dL/dv`` is the sum over its children ``u`` of ``bar(u) * du/dv``, where SymPy does
the local derivative ``du/dv``; then

* an adjoint flowing from a per-element node into a per-channel node becomes a channel sum
  (``bar(gamma) = sum_i bar(y)_i * xhat_i``);
* an adjoint flowing out of a reduce node into its per-element argument is broadcast
  (``bar(x)_i += bar(mean) * (1/m)``).

Each adjoint is kept twice: *local* (in the children's adjoint symbols, as one reads it off the
graph) and *expanded* (in forward symbols and ``dy`` only, channel sums linearized).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from .graph import CHANNEL, ELEMENT, ChannelSum, Graph, linearize_sums


def adjoint_symbol(name: str) -> sympy.Symbol:
    """The symbol that stands for ``dL/d<name>`` in local adjoint forms."""
    return sympy.Symbol(f"bar_{name}", real=True)


@dataclass
class Adjoint:
    """The adjoint of one node: ``local`` in children's adjoints, ``expanded`` in forward symbols."""

    name: str
    level: str
    local: sympy.Expr
    expanded: sympy.Expr


def contribution(graph: Graph, child: str, parent: str, bar_child: sympy.Expr) -> sympy.Expr:
    """``bar(child) * d child / d parent``, summed over the channel where levels require it."""
    node = graph[child]
    psym = graph.symbol(parent)
    if node.kind == "map":
        term = bar_child * sympy.diff(node.expr, psym)
        if node.level == ELEMENT and graph[parent].level == CHANNEL:
            term = ChannelSum(term)
        return term
    if node.kind == "reduce":
        # child = scale * sum_i summand_i: bar(child) is per channel and broadcast to elements.
        term = bar_child * node.scale * sympy.diff(node.expr, psym)
        if graph[parent].level == CHANNEL:
            term = ChannelSum(term)
        return term
    raise ValueError(f"node {child!r} has no parents")


def reverse(graph: Graph, output: str, seed: sympy.Symbol, m: sympy.Symbol) -> dict[str, Adjoint]:
    """Adjoints of every node that the output depends on, in graph (forward) order."""
    element = graph.element_symbols() | {seed}
    names = list(graph.nodes)
    needed = _ancestors(graph, output)
    adjoints: dict[str, Adjoint] = {}
    for name in reversed(names):
        if name not in needed:
            continue
        node = graph[name]
        if name == output:
            adjoints[name] = Adjoint(name, node.level, seed, seed)
            continue
        local = sympy.Integer(0)
        expanded = sympy.Integer(0)
        for child in graph.children(name):
            if child not in adjoints:
                continue
            local += contribution(graph, child, name, adjoint_symbol(child))
            expanded += contribution(graph, child, name, adjoints[child].expanded)
        expanded = linearize_sums(expanded, element, m)
        adjoints[name] = Adjoint(name, node.level, local, expanded)
    return {n: adjoints[n] for n in names if n in adjoints}


def _ancestors(graph: Graph, output: str) -> set[str]:
    seen = {output}
    stack = [output]
    while stack:
        for p in graph[stack.pop()].parents:
            if p not in seen:
                seen.add(p)
                stack.append(p)
    return seen
