"""Batch Normalization (Ioffe & Szegedy 2015) derived from its computational graph.

Per channel, over the ``m`` elements that share it (``m = N`` for (N, C) input, ``N*H*W`` for
conv input)::

    training                                  inference (frozen statistics)
    mean   = (1/m) sum(x)                     running_mean, running_var: inputs
    xmu    = x - mean                         xmu    = x - running_mean
    sq     = xmu**2
    var    = (1/m) sum(sq)      (biased)
    std    = sqrt(var + eps)                  std    = sqrt(running_var + eps)
    invstd = 1/std                            invstd = 1/std
    xhat   = xmu*invstd                       xhat   = xmu*invstd
    y      = gamma*xhat + beta                y      = gamma*xhat + beta

Reverse mode (:mod:`bnsym.autodiff`) gives every node's adjoint; rewritten in the basis
``dy, xhat, gamma, invstd`` (:mod:`bnsym.canonical`) they are the paper's closed forms
``dx = gamma*invstd/m*(m*dy - sum(dy) - xhat*sum(dy*xhat))``, ``dgamma = sum(dy*xhat)``,
``dbeta = sum(dy)``; rewritten in the kernel basis ``dy, xmu`` they become the kernel plans
(:mod:`bnsym.plan`) the code generator consumes.

Running statistics (PyTorch's convention): ``new = (1 - momentum)*old + momentum*batch`` with
momentum 0.1, the running variance fed the unbiased ``var*m/(m-1)``; ``momentum=None`` means a
cumulative average, factor ``1/num_batches_tracked``. Keras differs: its momentum (0.99) weighs
the *old* value (``new = momentum*old + (1 - momentum)*batch``), eps defaults to 1e-3, and its
moving variance takes the biased batch variance.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import sympy

from .autodiff import Adjoint, adjoint_symbol, reverse
from .canonical import Basis
from .graph import CHANNEL, ELEMENT, ChannelSum, Graph
from .plan import (
    Array,
    Assign,
    CenteredMoments,
    ChannelLoad,
    ElementLoad,
    KernelPlan,
    Scalar,
    Store,
    Sum,
)

MODES = ("train", "eval")

#: Constants of the derivation.
m = sympy.Symbol("m", positive=True, integer=True)
eps = sympy.Symbol("eps", positive=True)
momentum = sympy.Symbol("momentum", nonnegative=True)
#: The upstream gradient dL/dy (per element).
dy = sympy.Symbol("dy", real=True)

#: Gradients reported, and the node each one differentiates with respect to.
GRADIENTS = {"dx": "x", "dgamma": "gamma", "dbeta": "beta"}


def batch_norm_graph(mode: str) -> Graph:
    """The BN computational graph for ``mode`` ("train" or "eval"), one node per stage."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    g = Graph(f"batch_norm_{mode}")
    x = g.input("x", ELEMENT, "input activation")
    gamma = g.input("gamma", CHANNEL, "scale (weight)")
    beta = g.input("beta", CHANNEL, "shift (bias)")
    if mode == "train":
        mean = g.reduce("mean", x, 1 / m, "batch mean")
        xmu = g.map("xmu", x - mean, "centered input")
        sq = g.map("sq", xmu**2, "squared deviation")
        var = g.reduce("var", sq, 1 / m, "biased batch variance", nonnegative=True)
    else:
        mean = g.input("running_mean", CHANNEL, "population mean (running average)")
        var = g.input("running_var", CHANNEL, "population variance (running average)", nonnegative=True)
        xmu = g.map("xmu", x - mean, "centered input")
    std = g.map("std", sympy.sqrt(var + eps), "standard deviation", positive=True)
    invstd = g.map("invstd", 1 / std, "inverse standard deviation", positive=True)
    xhat = g.map("xhat", xmu * invstd, "normalized input")
    g.map("y", gamma * xhat + beta, "output")
    g.outputs = ["y"]
    return g


def running_stat_updates(mode_graph: Graph) -> dict[str, sympy.Expr]:
    """PyTorch's running-statistics update from a training graph's batch statistics."""
    old_mean = sympy.Symbol("running_mean", real=True)
    old_var = sympy.Symbol("running_var", real=True, nonnegative=True)
    batch_mean = mode_graph.symbol("mean")
    unbiased_var = mode_graph.symbol("var") * m / (m - 1)
    return {
        "running_mean": (1 - momentum) * old_mean + momentum * batch_mean,
        "running_var": (1 - momentum) * old_var + momentum * unbiased_var,
    }


@dataclass
class Stage:
    """One forward stage with its adjoint: ``name = definition``, ``bar_name = local = expanded``."""

    name: str
    level: str
    kind: str
    definition: sympy.Expr | None
    adjoint_local: sympy.Expr | None
    adjoint: sympy.Expr | None
    doc: str


class Derivation:
    """The derivation of batch normalization for one mode.

    Attributes: ``graph``; ``adjoints`` (reverse mode, per node); ``closed_forms`` (dx, dgamma,
    dbeta in ``dy, xhat, gamma, invstd``); ``plans`` (kernel plans for this mode's forward and
    backward kernels). Methods: :meth:`forward_stages`, :meth:`backward_stages`, :meth:`latex`,
    :meth:`dot`, :meth:`verify`.
    """

    def __init__(self, mode: str = "train"):
        self.mode = mode
        self.graph = batch_norm_graph(mode)
        self.adjoints: dict[str, Adjoint] = reverse(self.graph, "y", dy, m)
        mean = "mean" if mode == "train" else "running_mean"
        self.paper_basis = Basis(self.graph, ("xhat", "gamma", "beta", "invstd", mean), m, dy)
        self.kernel_basis = Basis(self.graph, ("xmu", "gamma", "beta", "invstd", mean), m, dy)
        self.closed_forms = {
            grad: sympy.factor(self.paper_basis.rewrite(self.adjoints[node].expanded))
            for grad, node in GRADIENTS.items()
        }
        self.plans = {p.name: p for p in _plans(self)}

    # -- reading the derivation ----------------------------------------------------------
    def forward_stages(self) -> list[Stage]:
        return [self._stage(n) for n in self.graph.nodes]

    def backward_stages(self) -> list[Stage]:
        """Adjoints of every node the output depends on, in graph order."""
        return [self._stage(n) for n in self.graph.nodes if n in self.adjoints]

    def _stage(self, name: str) -> Stage:
        node = self.graph[name]
        adj = self.adjoints.get(name)
        adjoint = None if adj is None else sympy.factor(self.paper_basis.rewrite(adj.expanded))
        return Stage(name, node.level, node.kind, node.definition(),
                     None if adj is None else adj.local, adjoint, node.doc)

    def formulas(self) -> list[str]:
        """The forward graph and the closed forms, one readable line each."""
        lines = [f"{s.name} = {s.definition}" for s in self.forward_stages() if s.definition is not None]
        lines += [f"{k} = {v}" for k, v in self.closed_forms.items()]
        return lines

    def text(self, stages: bool = False, plan: bool = False) -> str:
        out = [f"Batch normalization, {self.mode} mode: per channel over its m elements",
               "", "forward:"]
        width = max(len(n) for n in self.graph.nodes)
        for s in self.forward_stages():
            if s.definition is not None:
                kind = " reduction" if s.kind == "reduce" else ""
                out.append(f"  {s.name:{width}s} = {s.definition}    [{s.level}{kind}]")
        if stages:
            out += ["", "backward (reverse mode, from dL/dy = dy):"]
            for s in reversed(self.backward_stages()):
                out.append(f"  {'bar_' + s.name:{width + 4}s} = {s.adjoint_local}")
                if s.adjoint != s.adjoint_local:
                    out.append(f"  {'':{width + 4}s} = {s.adjoint}")
        out += ["", "closed forms:"]
        out += [f"  {k:{width}s} = {v}" for k, v in self.closed_forms.items()]
        if plan:
            out += ["", "kernel plans:"]
            for p in self.plans.values():
                out += ["  " + line for line in p.describe().splitlines()]
        return "\n".join(out)

    def latex(self) -> str:
        """The forward stages, the adjoints and the closed forms as a LaTeX ``align*``."""
        rows = [r"&\textbf{forward} \\"]
        for s in self.forward_stages():
            if s.definition is not None:
                rows.append(rf"{_tex_name(s.name)} &= {_tex(s.definition)} \\")
        rows.append(r"&\textbf{backward} \\")
        for s in reversed(self.backward_stages()):
            rows.append(rf"\bar{{{_tex_name(s.name)}}} &= {_tex(s.adjoint_local)}"
                        rf" = {_tex(s.adjoint)} \\")
        rows.append(r"&\textbf{closed forms} \\")
        for k, v in self.closed_forms.items():
            rows.append(rf"\mathrm{{{k}}} &= {_tex(v)} \\")
        return "\\begin{align*}\n" + "\n".join(rows) + "\n\\end{align*}"

    def _repr_latex_(self) -> str:
        return "$$" + self.latex() + "$$"

    def dot(self) -> str:
        """The computational graph in Graphviz DOT, each node with its expression and adjoint."""
        lines = [f'digraph "{self.graph.name}" {{', "  rankdir=LR;",
                 '  node [shape=box, fontname="Helvetica"];']
        for s in self.forward_stages():
            shape = {"input": "ellipse", "map": "box", "reduce": "box3d"}[s.kind]
            label = s.name if s.definition is None else f"{s.name} = {s.definition}"
            if s.adjoint is not None:
                label += f"\\nbar_{s.name} = {s.adjoint_local}"
            style = ', style=filled, fillcolor="#e8f0fe"' if s.level == CHANNEL else ""
            lines.append(f'  "{s.name}" [shape={shape}, label="{_dot_escape(label)}"{style}];')
        for name, node in self.graph.nodes.items():
            for p in node.parents:
                lines.append(f'  "{p}" -> "{name}";')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def verify(self, max_m: int = 6, seed: int = 0):
        """Run every proof of this mode's gradients; a list of :class:`bnsym.verify.CheckResult`."""
        from . import verify

        return verify.run_checks(self, max_m=max_m, seed=seed)

    def __repr__(self) -> str:
        return f"Derivation(mode={self.mode!r})"


@functools.lru_cache(maxsize=None)
def derive(mode: str = "train") -> Derivation:
    """The (cached) :class:`Derivation` of BN in ``mode``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return Derivation(mode)


def build_plans() -> dict[str, KernelPlan]:
    """The four kernel plans: forward_train, forward_eval, backward_train, backward_eval."""
    plans: dict[str, KernelPlan] = {}
    for mode in MODES:
        plans.update(derive(mode).plans)
    return {k: plans[k] for k in ("forward_train", "forward_eval", "backward_train", "backward_eval")}


# ---------------------------------------------------------------------------------------
# Kernel plans
# ---------------------------------------------------------------------------------------

def _sym(name: str, **assumptions) -> sympy.Symbol:
    return sympy.Symbol(name, real=True, **assumptions)


def _sum_name(summand: sympy.Expr) -> str:
    parts = []
    for factor in sorted(sympy.Mul.make_args(summand), key=sympy.default_sort_key):
        base, exp = factor.as_base_exp()
        parts.append(str(base) if exp == 1 else f"{base}{exp}")
    return "sum_" + "_".join(parts)


class _PlanBuilder:
    """Turns basis-form expressions into plan parts: sums become reductions, per-element
    outputs become ``sum_k coef_k*basis_k + coef_0`` with per-channel coefficients."""

    def __init__(self, element_basis: list[sympy.Symbol]):
        self.element_basis = element_basis
        self.reductions: list[Sum] = []
        self.channel_defs: list[Assign] = []
        self._sums: dict[sympy.Expr, sympy.Symbol] = {}

    def sums_to_symbols(self, expr: sympy.Expr) -> sympy.Expr:
        def name_sum(s: ChannelSum) -> sympy.Symbol:
            if s not in self._sums:
                sym = _sym(_sum_name(s.args[0]))
                self._sums[s] = sym
                self.reductions.append(Sum(sym, s.args[0]))
            return self._sums[s]

        return expr.replace(lambda e: isinstance(e, ChannelSum), name_sum)

    def channel(self, expr: sympy.Expr) -> sympy.Expr:
        return sympy.factor(self.sums_to_symbols(expr))

    def element(self, out: str, expr: sympy.Expr) -> sympy.Expr:
        """Collect ``expr`` as a linear form in the element basis with per-channel coefficients."""
        expr = self.sums_to_symbols(sympy.expand(expr))
        poly = sympy.Poly(expr, *self.element_basis)
        if poly.total_degree() > 1:
            raise ValueError(f"{out} is not linear in {self.element_basis}: {expr}")
        result = sympy.Integer(0)
        for basis in self.element_basis + [None]:
            if basis is None:
                coeff = poly.coeff_monomial(1)
                name = f"{out}_k0"
            else:
                coeff = poly.coeff_monomial(basis)
                name = f"{out}_k_{basis}"
            coeff = sympy.factor(coeff)
            if coeff == 0:
                continue
            if not (coeff.is_Symbol or coeff.is_Number):
                sym = _sym(name)
                self.channel_defs.append(Assign(sym, coeff))
                coeff = sym
            result += coeff * (1 if basis is None else basis)
        return result


def _channel_defs_for(graph: Graph, names: list[str]) -> list[Assign]:
    """Per-channel basis symbols computed from inputs and reductions (``invstd`` from ``var``)."""
    return [Assign(graph.symbol(n), graph.inline(graph.symbol(n))) for n in names]


_X = Array("x", "element", "in", False, "input, (N, C, *spatial) or channels-last")
_WEIGHT = Array("weight", "channel", "in", True, "gamma; NULL: no affine scale (gamma = 1)")
_BIAS = Array("bias", "channel", "in", True, "beta; NULL: no affine shift (beta = 0)")
_GRAD_OUT = Array("grad_output", "element", "in", False, "dL/dy")
_GRADS = [
    Array("grad_input", "element", "out", True, "dL/dx; NULL: not computed"),
    Array("grad_weight", "channel", "out", True, "dL/dgamma; NULL: not computed"),
    Array("grad_bias", "channel", "out", True, "dL/dbeta; NULL: not computed"),
]


def _plans(d: Derivation) -> list[KernelPlan]:
    return _train_plans(d) if d.mode == "train" else _eval_plans(d)


def _train_plans(d: Derivation) -> list[KernelPlan]:
    g = d.graph
    x, mean, var, invstd = (g.symbol(n) for n in ("x", "mean", "var", "invstd"))
    gamma, beta, xmu = g.symbol("gamma"), g.symbol("beta"), g.symbol("xmu")
    running = running_stat_updates(g)
    rm, rv = _sym("running_mean"), _sym("running_var", nonnegative=True)

    # forward: the graph's reductions; the variance's summand (x - mean)**2 with mean the
    # reduction of x makes them a centered-moments pair, computed stably by the template.
    mean_node, var_node = g["mean"], g["var"]
    centered = g.inline(var_node.expr)
    if sympy.expand(centered - (mean_node.expr - mean) ** 2) != 0:
        raise ValueError("the variance node is not the centered second moment of the mean node")
    # the output in the basis xhat (the paper's), as the backward's: y = gamma*xhat + beta, whose
    # coefficients are of the output's own scale (gamma*invstd is 0 in double for gamma ~ 1e-230
    # and x ~ 1e100, while y ~ 1e-230); the code generator folds gamma*invstd where it is in range
    xhat = g.symbol("xhat")
    fb = _PlanBuilder([xhat])
    y_expr = fb.element("y", d.paper_basis.rewrite(g.symbol("y")))
    forward = KernelPlan(
        name="forward_train",
        summary="batch statistics, normalize, affine, running-statistics update",
        formulas=d.formulas()[:8] + [f"running_mean = {running['running_mean']}",
                                     f"running_var = {running['running_var']}"],
        arrays=[_X, Array("y", "element", "out", False, "output"), _WEIGHT, _BIAS,
                Array("running_mean", "channel", "inout", True, "updated in place; NULL: not tracked"),
                Array("running_var", "channel", "inout", True, "updated in place (unbiased variance)"),
                Array("save_mean", "channel", "out", True, "batch mean, for the backward pass"),
                Array("save_invstd", "channel", "out", True, "1/sqrt(batch var + eps), for the backward")],
        scalars=[Scalar(eps, "added to the variance"),
                 Scalar(momentum, "running-average factor (PyTorch convention)")],
        count=m,
        channel_loads=[ChannelLoad(gamma, "weight", sympy.Integer(1)),
                       ChannelLoad(beta, "bias", sympy.Integer(0)),
                       ChannelLoad(rm, "running_mean"), ChannelLoad(rv, "running_var")],
        element_loads=[ElementLoad(x, "x")],
        reductions=[CenteredMoments(mean, var, mean_node.expr)],
        channel_defs=_channel_defs_for(g, ["invstd"]) + fb.channel_defs,
        channel_stores=[Store("save_mean", mean), Store("save_invstd", invstd),
                        Store("running_mean", running["running_mean"].subs({}), finite_guard=True),
                        Store("running_var", running["running_var"], finite_guard=True)],
        element_defs=[Assign(xmu, g["xmu"].expr), Assign(xhat, g["xhat"].expr)],
        element_stores=[Store("y", y_expr)],
        returns_skip_flag=True,
    )

    # backward: in the basis dy, xhat (the paper's), so that every per-channel coefficient is
    # of the output's own scale: with xmu the coefficient gamma*invstd**3*sum(dy*xmu)/m
    # underflows for inputs of magnitude 1e13 in float32 (1e100 in float64).
    bb = _PlanBuilder([dy, xhat])
    grads = {k: d.paper_basis.rewrite(d.adjoints[n].expanded) for k, n in GRADIENTS.items()}
    dx_expr = bb.element("dx", grads["dx"])
    backward = KernelPlan(
        name="backward_train",
        summary="gradients through batch statistics (dx, dgamma, dbeta)",
        formulas=[f"{k} = {v}" for k, v in d.closed_forms.items()] + ["xhat = (x - mean)*invstd"],
        arrays=[_GRAD_OUT, _X, _WEIGHT,
                Array("save_mean", "channel", "in", False, "batch mean from the forward pass"),
                Array("save_invstd", "channel", "in", False, "1/sqrt(batch var + eps) from the forward"),
                *_GRADS],
        scalars=[],
        count=m,
        channel_loads=[ChannelLoad(gamma, "weight", sympy.Integer(1)),
                       ChannelLoad(mean, "save_mean"), ChannelLoad(invstd, "save_invstd")],
        element_loads=[ElementLoad(dy, "grad_output"), ElementLoad(x, "x")],
        element_defs=[Assign(xmu, g["xmu"].expr), Assign(xhat, g["xhat"].expr)],
        element_stores=[Store("grad_input", dx_expr)],
    )
    backward.channel_stores = [Store("grad_weight", bb.channel(grads["dgamma"])),
                               Store("grad_bias", bb.channel(grads["dbeta"]))]
    backward.reductions = list(bb.reductions)
    backward.channel_defs = list(bb.channel_defs)
    return [forward, backward]


def _eval_plans(d: Derivation) -> list[KernelPlan]:
    g, kb = d.graph, d.kernel_basis
    x, rm, rv = g.symbol("x"), g.symbol("running_mean"), g.symbol("running_var")
    gamma, beta, xmu = g.symbol("gamma"), g.symbol("beta"), g.symbol("xmu")
    stats_in = [Array("running_mean", "channel", "in", False, "population mean"),
                Array("running_var", "channel", "in", False, "population variance")]
    loads = [ChannelLoad(gamma, "weight", sympy.Integer(1)), ChannelLoad(rm, "running_mean"),
             ChannelLoad(rv, "running_var")]

    xhat = g.symbol("xhat")
    fb = _PlanBuilder([xhat])  # as in training: y = gamma*xhat + beta
    y_expr = fb.element("y", d.paper_basis.rewrite(g.symbol("y")))
    forward = KernelPlan(
        name="forward_eval",
        summary="inference: a per-channel affine map with the running statistics",
        formulas=d.formulas()[:5],
        arrays=[_X, Array("y", "element", "out", False, "output"), _WEIGHT, _BIAS, *stats_in],
        scalars=[Scalar(eps, "added to the variance")],
        count=m,
        channel_loads=loads[:1] + [ChannelLoad(beta, "bias", sympy.Integer(0))] + loads[1:],
        element_loads=[ElementLoad(x, "x")],
        channel_defs=_channel_defs_for(g, ["invstd"]) + fb.channel_defs,
        element_defs=[Assign(xmu, g["xmu"].expr), Assign(xhat, g["xhat"].expr)],
        element_stores=[Store("y", y_expr)],
    )

    # invstd comes from running_var here, a per-channel def computed after the reduction pass:
    # the reduction stays in the xmu basis (dx = gamma*invstd*dy has no xmu term).
    bb = _PlanBuilder([dy, xmu])
    grads = {k: kb.rewrite(d.adjoints[n].expanded) for k, n in GRADIENTS.items()}
    dx_expr = bb.element("dx", grads["dx"])
    backward = KernelPlan(
        name="backward_eval",
        summary="gradients with frozen running statistics (fine-tuning)",
        formulas=[f"{k} = {v}" for k, v in d.closed_forms.items()]
        + ["xhat = (x - running_mean)*invstd", "invstd = 1/sqrt(running_var + eps)"],
        arrays=[_GRAD_OUT, _X, _WEIGHT, *stats_in, *_GRADS],
        scalars=[Scalar(eps, "added to the variance")],
        count=m,
        channel_loads=loads,
        element_loads=[ElementLoad(dy, "grad_output"), ElementLoad(x, "x")],
        element_defs=[Assign(xmu, g["xmu"].expr)],
        element_stores=[Store("grad_input", dx_expr)],
    )
    backward.channel_stores = [Store("grad_weight", bb.channel(grads["dgamma"])),
                               Store("grad_bias", bb.channel(grads["dbeta"]))]
    backward.reductions = list(bb.reductions)
    backward.channel_defs = _channel_defs_for(g, ["invstd"]) + list(bb.channel_defs)
    return [forward, backward]


# ---------------------------------------------------------------------------------------
# Presentation helpers and the CLI
# ---------------------------------------------------------------------------------------

_TEX_NAMES = {"xhat": r"\hat{x}", "xmu": r"x_{\mu}", "invstd": r"\sigma^{-1}", "std": r"\sigma",
            "var": r"\sigma^{2}", "mean": r"\mu", "gamma": r"\gamma", "beta": r"\beta",
            "sq": r"s", "running_mean": r"\mu_{run}", "running_var": r"\sigma^{2}_{run}",
              "eps": r"\epsilon", "dy": r"\mathrm{d}y"}


def _tex_name(name: str) -> str:
    return _TEX_NAMES.get(name, name)


def _tex(expr: sympy.Expr) -> str:
    names = {s: _tex_name(s.name) for s in expr.free_symbols if s.name in _TEX_NAMES}
    names.update({s: r"\bar{" + _tex_name(s.name[4:]) + "}" for s in expr.free_symbols
                  if s.name.startswith("bar_")})
    return sympy.latex(expr, symbol_names=names)


def _dot_escape(text: str) -> str:
    return text.replace("\\n", "\0").replace("\\", "\\\\").replace('"', '\\"').replace("\0", "\\n")


def cli_derive(args) -> int:
    d = derive(args.mode)
    if args.dot:
        try:
            with open(args.dot, "w", encoding="utf-8") as fh:
                fh.write(d.dot())
        except OSError as exc:
            print(f"bnsym: error: cannot write {args.dot}: {exc.strerror}", file=sys.stderr)
            return 2
    if args.latex:
        print(d.latex())
    else:
        print(d.text(stages=args.stages, plan=args.plan))
    if args.dot:
        print(f"\nwrote the computational graph to {args.dot} (render: dot -Tpng {args.dot} -o graph.png)")
    return 0


__all__ = ["Derivation", "derive", "build_plans", "batch_norm_graph", "running_stat_updates",
           "adjoint_symbol", "m", "eps", "momentum", "dy", "MODES", "GRADIENTS"]
