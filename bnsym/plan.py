"""Kernel plans: the interface between the symbolic derivation and the code generator.

A :class:`KernelPlan` says, for one kernel (say ``backward_train``), everything the C needs
*except* loops and memory access, which live in ``templates/``:

1. ``channel_loads``: per-channel symbols read from per-channel arrays (``gamma <- weight[c]``);
2. ``reductions``: what is summed over the ``m`` elements of a channel (``sum_dy = sum(dy)``),
   or a :class:`CenteredMoments` pair (mean and biased variance, computed stably by the template);
3. ``channel_defs``: per-channel scalars computed once from the reductions, in dependency order;
4. ``channel_stores``: per-channel outputs (``grad_weight[c] = invstd*sum_dy_xmu``);
5. ``element_defs`` / ``element_stores``: the per-element work, collected so that each output is
   ``sum_k coef_k * basis_k + coef_0`` with per-channel coefficients (``dx = a*dy + b*xmu + c``).

Every expression is a SymPy expression over the plan's symbols; the generator prints them with
SymPy's C printer. The plan is dtype- and layout-agnostic: the same plan yields the float32 and
float64 kernels for the ``(N, C, *spatial)`` and channels-last layouts.

Room for what comes later: a fused activation is one more element def (``Max(0, y)``) with a
mask store; second-order kernels are plans with more reductions; LayerNorm is the same plan
reduced over other axes (the template, not the plan, chooses the axes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

__all__ = [
    "Array",
    "Scalar",
    "ChannelLoad",
    "ElementLoad",
    "Sum",
    "CenteredMoments",
    "Assign",
    "Store",
    "KernelPlan",
]


@dataclass(frozen=True)
class Array:
    """A pointer parameter of the kernel.

    ``extent`` is ``"element"`` (one value per element: N*C*S values) or ``"channel"`` (C values).
    ``intent`` is ``"in"``, ``"out"`` or ``"inout"``. ``optional`` arrays may be NULL: an optional
    input then takes its load's default, an optional output is simply not computed.
    """

    name: str
    extent: str
    intent: str
    optional: bool
    doc: str


@dataclass(frozen=True)
class Scalar:
    """A ``double`` parameter of the kernel (``eps``, ``momentum``)."""

    symbol: sympy.Symbol
    doc: str

    @property
    def name(self) -> str:
        return self.symbol.name


@dataclass(frozen=True)
class ChannelLoad:
    """``symbol = array[c]``, or ``default`` when the (optional) array is NULL."""

    symbol: sympy.Symbol
    array: str
    default: sympy.Expr | None = None


@dataclass(frozen=True)
class ElementLoad:
    """``symbol = array[i]`` for the element being visited."""

    symbol: sympy.Symbol
    array: str


@dataclass(frozen=True)
class Sum:
    """``symbol = sum over the channel's m elements of summand`` (accumulated in double).

    ``summand`` is an expression of element symbols (loads and element defs) and channel symbols
    known before the reduction pass (channel loads).
    """

    symbol: sympy.Symbol
    summand: sympy.Expr


@dataclass(frozen=True)
class CenteredMoments:
    """``mean = (1/m) sum(of)`` and ``var = (1/m) sum((of - mean)**2)`` (biased).

    The template computes these with a numerically stable method (two passes over cached
    blocks, merged with Chan's formula), never as E[v^2] - E[v]^2.
    """

    mean: sympy.Symbol
    var: sympy.Symbol
    of: sympy.Expr


@dataclass(frozen=True)
class Assign:
    """``symbol = expr`` (per channel or per element, by the list that holds it)."""

    symbol: sympy.Symbol
    expr: sympy.Expr


@dataclass(frozen=True)
class Store:
    """``array[index] = expr``; skipped when the (optional) output array is NULL.

    ``finite_guard``: with the kernel's ``skip_nonfinite`` flag set, the store is skipped for the
    whole batch when any channel's reductions are not finite (running statistics stay intact).
    """

    array: str
    expr: sympy.Expr
    finite_guard: bool = False


@dataclass
class KernelPlan:
    """Everything the code generator needs to write one kernel (see the module docstring)."""

    name: str
    summary: str
    formulas: list[str]
    arrays: list[Array]
    scalars: list[Scalar]
    count: sympy.Symbol
    channel_loads: list[ChannelLoad] = field(default_factory=list)
    element_loads: list[ElementLoad] = field(default_factory=list)
    reductions: list[Sum | CenteredMoments] = field(default_factory=list)
    channel_defs: list[Assign] = field(default_factory=list)
    channel_stores: list[Store] = field(default_factory=list)
    element_defs: list[Assign] = field(default_factory=list)
    element_stores: list[Store] = field(default_factory=list)
    returns_skip_flag: bool = False

    def array(self, name: str) -> Array:
        for a in self.arrays:
            if a.name == name:
                return a
        raise KeyError(name)

    def describe(self) -> str:
        """A readable, multi-line account of the plan (used by ``bnsym derive --plan``)."""
        lines = [f"kernel {self.name}: {self.summary}"]
        for ld in self.channel_loads:
            dflt = "" if ld.default is None else f"  (default {ld.default})"
            lines.append(f"  load per channel  {ld.symbol} = {ld.array}[c]{dflt}")
        for ld in self.element_loads:
            lines.append(f"  load per element  {ld.symbol} = {ld.array}[i]")
        for r in self.reductions:
            if isinstance(r, CenteredMoments):
                lines.append(f"  reduce            {r.mean}, {r.var} = mean, biased variance of {r.of}")
            else:
                lines.append(f"  reduce            {r.symbol} = sum({r.summand})")
        for a in self.channel_defs:
            lines.append(f"  per channel       {a.symbol} = {a.expr}")
        for s in self.channel_stores:
            guard = "  [skipped if not finite]" if s.finite_guard else ""
            lines.append(f"  store per channel {s.array}[c] = {s.expr}{guard}")
        for a in self.element_defs:
            lines.append(f"  per element       {a.symbol} = {a.expr}")
        for s in self.element_stores:
            lines.append(f"  store per element {s.array}[i] = {s.expr}")
        return "\n".join(lines)
