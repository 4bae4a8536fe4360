"""The symbolic engine: reverse mode over the BN graph reaches the paper's closed forms,
and the kernel plans compute the right thing."""

import numpy as np
import pytest
import sympy

from bnsym.derivation import GRADIENTS, batch_norm_graph, build_plans, derive, dy, eps, m
from bnsym.graph import ChannelSum
from bnsym.plan import CenteredMoments, KernelPlan, Sum

S = ChannelSum
gamma = sympy.Symbol("gamma", real=True)
invstd = sympy.Symbol("invstd", real=True, positive=True)
xhat = sympy.Symbol("xhat", real=True)

# The closed forms as the paper (and every BN explanation) writes them, typed in here only.
PAPER = {
    "train": {
        "dx": gamma * invstd / m * (m * dy - S(dy) - xhat * S(dy * xhat)),
        "dgamma": S(dy * xhat),
        "dbeta": S(dy),
    },
    "eval": {"dx": gamma * invstd * dy, "dgamma": S(dy * xhat), "dbeta": S(dy)},
}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("grad", list(GRADIENTS))
def test_closed_forms_match_the_paper(mode, grad):
    engine = derive(mode).closed_forms[grad]
    assert sympy.simplify(engine - PAPER[mode][grad]) == 0


def test_graph_has_one_named_node_per_stage():
    g = batch_norm_graph("train")
    assert list(g.nodes) == ["x", "gamma", "beta", "mean", "xmu", "sq", "var", "std", "invstd", "xhat", "y"]
    assert g["mean"].kind == "reduce" and g["var"].kind == "reduce"
    assert g["xmu"].level == "element" and g["std"].level == "channel"
    # reductions are symbols of their own, not unrolled sums
    assert g["xmu"].expr == g.symbol("x") - g.symbol("mean")
    ev = batch_norm_graph("eval")
    assert "mean" not in ev.nodes and ev["running_mean"].kind == "input"


def test_backward_stages_in_graph_order_with_local_and_expanded_forms():
    d = derive("train")
    stages = d.backward_stages()
    names = [s.name for s in stages]
    assert names == [n for n in d.graph.nodes if n in names]
    by = {s.name: s for s in stages}
    # local adjoints are read off the graph: reduce -> broadcast, element -> channel = sum
    assert by["x"].adjoint_local == sympy.Symbol("bar_mean", real=True) / m + sympy.Symbol("bar_xmu", real=True)
    assert by["gamma"].adjoint_local.has(ChannelSum)
    assert sympy.simplify(by["var"].adjoint + gamma * invstd**2 * S(dy * xhat) / 2) == 0


def test_sum_identity_derived_from_the_mean_node():
    d = derive("train")
    # sum(xhat) = 0 follows from mean = sum(x)/m; the engine derives it, nobody typed it
    assert d.paper_basis.sum_identities[S(xhat)] == 0


def test_wrong_engine_output_is_caught_by_the_exact_proof():
    from bnsym.verify import exact_check, fd_check

    d = derive("train")
    broken = type(d).__new__(type(d))
    broken.__dict__.update(d.__dict__)
    broken.closed_forms = dict(d.closed_forms, dx=gamma * invstd / m * (m * dy - xhat * S(dy * xhat)))
    assert exact_check(d, 3).passed
    assert not exact_check(broken, 3).passed
    rng = np.random.default_rng(1)
    assert not fd_check(broken, "standard", 6, 0.0, 1.0, 1e-5, rng, "float64").passed


# ---------------------------------------------------------------------------------------
# Kernel plans, interpreted with NumPy and compared with an independent float64 reference
# ---------------------------------------------------------------------------------------

def run_plan(plan: KernelPlan, arrays: dict, scalars: dict, count: int) -> dict:
    """Evaluate a plan for one channel: arrays of element values and per-channel values."""
    env = {plan.count: count}
    env.update({s.symbol: scalars[s.name] for s in plan.scalars})
    for ld in plan.channel_loads:
        value = arrays.get(ld.array)
        env[ld.symbol] = value if value is not None else (None if ld.default is None else float(ld.default))
    for ld in plan.element_loads:
        env[ld.symbol] = arrays[ld.array]

    def ev(expr):
        syms = sorted(expr.free_symbols, key=lambda s: s.name)
        return sympy.lambdify(syms, expr, "numpy")(*[env[s] for s in syms])

    def element_defs():
        for a in plan.element_defs:
            if all(sym in env for sym in a.expr.free_symbols):
                env[a.symbol] = ev(a.expr)

    element_defs()
    for r in plan.reductions:
        if isinstance(r, CenteredMoments):
            v = ev(r.of)
            env[r.mean] = v.mean()
            env[r.var] = ((v - v.mean()) ** 2).mean()
            element_defs()
        else:
            env[r.symbol] = np.sum(ev(r.summand))
    for a in plan.channel_defs:
        env[a.symbol] = ev(a.expr)
    element_defs()  # those that read a channel def (xhat = invstd*xmu)
    out = {s.array: ev(s.expr) for s in plan.channel_stores if arrays.get(s.array, 0) is not None}
    out.update({s.array: np.broadcast_to(ev(s.expr), (count,)) for s in plan.element_stores})
    return out


def reference(x, dy_, g, b, e, rm=None, rv=None, momentum=0.1):
    mean, var = (x.mean(), x.var()) if rm is None else (rm, rv)
    inv = 1 / np.sqrt(var + e)
    xh = (x - mean) * inv
    n = x.size
    out = {"y": g * xh + b, "save_mean": mean, "save_invstd": inv,
           "grad_weight": np.sum(dy_ * xh), "grad_bias": np.sum(dy_)}
    if rm is None:
        out["grad_input"] = g * inv / n * (n * dy_ - dy_.sum() - xh * np.sum(dy_ * xh))
    else:
        out["grad_input"] = g * inv * dy_
    return out, mean, var


@pytest.mark.parametrize("count", [2, 7])
def test_plans_compute_batch_norm(count):
    rng = np.random.default_rng(count)
    x = 3.0 + 2.0 * rng.standard_normal(count)
    g_, b_, e_ = 1.3, -0.4, 1e-5
    dy_ = rng.standard_normal(count)
    rm0, rv0 = 0.5, 2.0
    plans = build_plans()
    ref, mean, var = reference(x, dy_, g_, b_, e_)
    fwd = run_plan(plans["forward_train"], {"x": x, "weight": g_, "bias": b_, "running_mean": rm0,
                                            "running_var": rv0}, {"eps": e_, "momentum": 0.1}, count)
    np.testing.assert_allclose(fwd["y"], ref["y"], rtol=1e-12)
    np.testing.assert_allclose(fwd["save_invstd"], ref["save_invstd"], rtol=1e-12)
    np.testing.assert_allclose(fwd["running_mean"], 0.9 * rm0 + 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(fwd["running_var"], 0.9 * rv0 + 0.1 * var * count / (count - 1), rtol=1e-12)
    bwd = run_plan(plans["backward_train"], {"grad_output": dy_, "x": x, "weight": g_, "save_mean": mean,
                                             "save_invstd": ref["save_invstd"]}, {}, count)
    for k in ("grad_input", "grad_weight", "grad_bias"):
        np.testing.assert_allclose(bwd[k], ref[k], rtol=1e-10, atol=1e-12)
    ref_e, _, _ = reference(x, dy_, g_, b_, e_, rm0, rv0)
    fe = run_plan(plans["forward_eval"], {"x": x, "weight": g_, "bias": b_, "running_mean": rm0,
                                          "running_var": rv0}, {"eps": e_}, count)
    np.testing.assert_allclose(fe["y"], ref_e["y"], rtol=1e-12)
    be = run_plan(plans["backward_eval"], {"grad_output": dy_, "x": x, "weight": g_, "running_mean": rm0,
                                           "running_var": rv0}, {"eps": e_}, count)
    for k in ("grad_input", "grad_weight", "grad_bias"):
        np.testing.assert_allclose(be[k], ref_e[k], rtol=1e-10, atol=1e-12)


def test_backward_plan_inner_loop_is_a_cheap_linear_form():
    plan = build_plans()["backward_train"]
    (store,) = plan.element_stores
    xhat_ = sympy.Symbol("xhat", real=True)
    poly = sympy.Poly(store.expr, dy, xhat_)
    assert poly.total_degree() == 1
    # every coefficient is a per-channel symbol computed once, not an expression per element
    assert all(c.is_Symbol for c in poly.coeffs())
    assert {r.symbol.name for r in plan.reductions if isinstance(r, Sum)} == {"sum_dy", "sum_dy_xhat"}
    assert [type(r) for r in build_plans()["forward_train"].reductions] == [CenteredMoments]


def test_latex_dot_and_repr():
    d = derive("train")
    tex = d._repr_latex_()
    assert tex.startswith("$$\\begin{align*}") and r"\bar{\hat{x}}" in tex
    dot = d.dot()
    assert dot.startswith('digraph "batch_norm_train"') and '"mean" -> "xmu"' in dot
    assert "bar_xhat" in dot and "box3d" in dot
    assert "xhat" in d.text(stages=True, plan=True) and "grad_input" in d.text(plan=True)


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        derive("training")
