"""Generate the C kernels from the kernel plans and the Jinja2 templates.

The generator is generic over :class:`bnsym.plan.KernelPlan`: it turns a plan's loads,
reductions, per-channel definitions and stores into plain data (C identifiers and C expressions
printed by :mod:`bnsym.printer` after :func:`sympy.cse`) and hands that to the templates, which
hold only loop structure and memory access. The same plan yields float32 and float64 kernels for
the ``ncs`` (contiguous ``(N, C, *spatial)``) and ``nsc`` (channels-last) layouts.

Public entry points: :func:`render`, :func:`write`, :func:`check` and :func:`cli_generate`
(``bnsym generate``).
"""

from __future__ import annotations

import difflib
import functools
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import sympy

from . import _paths
from .plan import Array, Assign, CenteredMoments, KernelPlan, Store, Sum
from .printer import cse_program, is_finite, make_printer, round_to_float32

__all__ = ["render", "write", "check", "cli_generate", "KERNELS", "DTYPES", "LAYOUTS"]

KERNELS = ("forward_train", "forward_eval", "backward_train", "backward_eval")
DTYPES = {"float32": ("float", "f32"), "float64": ("double", "f64")}
LAYOUTS = ("ncs", "nsc")

#: Identifiers used by the templates (and C/libm names) that plan symbols must not take.
_RESERVED = {
    # ABI and template locals
    "N", "C", "S", "R", "L", "LC", "U", "a", "p", "q", "c", "g", "i", "j", "j0", "n", "r", "w",
    "b", "k", "u", "t", "nt", "nthr", "tid", "off", "len", "base", "stride", "seg_len", "nseg",
    "bn", "acc", "lane", "lanes", "part", "parts", "ws", "status", "nonfinite", "skip_nonfinite",
    "num_threads", "m_count", "red", "rin", "coef", "guard",
    # C keywords and libm names a symbol could shadow
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
    "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch", "typedef",
    "union", "unsigned", "void", "volatile", "while", "gamma", "lgamma", "tgamma", "j1", "jn",
    "y0", "y1", "yn", "exp", "log", "sqrt", "pow", "fabs", "abs", "max", "min", "erf", "index",
}
_TEMP_RE = re.compile(r"^(ct|et|ra|rb|rs|st)\d+$")


# --------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------


def load_plans() -> dict[str, KernelPlan]:
    """The four kernel plans from the derivation (``bnsym.derivation.build_plans``)."""
    from .derivation import build_plans

    plans = build_plans()
    missing = [k for k in KERNELS if k not in plans]
    if missing:
        raise RuntimeError(f"bnsym: derivation gave no plan for {', '.join(missing)}")
    return plans


# --------------------------------------------------------------------------------------------
# Plan -> template data
# --------------------------------------------------------------------------------------------


@dataclass
class _Names:
    """C identifiers for the plan's symbols (renamed when they collide with a reserved name)."""

    taken: set[str]

    def __post_init__(self):
        self.map: dict[sympy.Symbol, str] = {}

    def __call__(self, sym: sympy.Symbol) -> str:
        name = self.map.get(sym)
        if name is None:
            base = sym.name
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", base):
                base = re.sub(r"\W", "_", base) or "v"
            name = base
            if name in self.taken or _TEMP_RE.match(name) or name.startswith("bn_") or name.endswith("_t"):
                name = base + "_v"
            while name in self.map.values() or name in self.taken:
                name += "_"
            self.map[sym] = name
        return name


def _free(expr) -> set[sympy.Symbol]:
    return set(sympy.sympify(expr).free_symbols)


def _sym(name: str) -> sympy.Symbol:
    return sympy.Symbol(name)


def _order(syms: Iterable[sympy.Symbol], names: _Names) -> list[sympy.Symbol]:
    return sorted(syms, key=lambda s: names(s))


def _needed_defs(defs: Sequence[Assign], targets: Iterable[sympy.Expr]) -> list[Assign]:
    """The definitions ``targets`` depend on (transitively), in their original order."""
    need: set[sympy.Symbol] = set()
    for t in targets:
        need |= _free(t)
    keep: list[Assign] = []
    for d in reversed(defs):
        if d.symbol in need:
            keep.append(d)
            need |= _free(d.expr)
    return list(reversed(keep))


def _float_sum_posts(summands, elem_syms: set, rin_set: set):
    """How the float reduction pass sums each channel sum ``sum(e_k)``, rebuilt per channel.

    ``e_k = F*G`` with ``F`` free of element values (``invstd`` of ``dy*invstd*(x - mean)``).
    Where ``G`` is linear in each per-channel input ``c`` it holds, with ``dG/dc = kappa*G_j``
    for another sum ``j`` whose ``G_j`` holds no per-channel input (``-dy``, the summand of
    ``sum(dy)``): ``sum(G(c)) = sum(G(c_hi)) + (c - c_hi)*kappa*sum(G_j)`` exactly, ``c_hi`` the
    float value of ``c``. The float pass then sums ``G`` at ``c_hi`` only (one subtraction, exact
    near the mean, no lo part, no ``F`` per value) and the channel's sum is
    ``F*(sum(G(c_hi)) + sum over c of (c - c_hi)*kappa*sum(G_j))``, in double.

    Returns, per summand, ``(F, G, [(c, kappa, j), ...])``, or ``None`` where that does not hold
    (the pass sums the summand as it is); ``None`` for the whole when no summand gains."""
    parts = [sympy.factor_terms(sympy.sympify(e)).as_independent(*elem_syms, as_Add=False)
             for e in summands]
    plain = {j for j, (_, g) in enumerate(parts) if not (_free(g) & rin_set)}
    out: list = []
    for f, g in parts:
        corr = []
        for c in sorted(_free(g) & rin_set, key=lambda s: s.name):
            slope = sympy.diff(g, c)
            if sympy.diff(slope, c) != 0 or _free(slope) & rin_set:
                corr = None
                break
            match = None
            for j in sorted(plain):
                kappa = sympy.simplify(slope / parts[j][1])
                if not (_free(kappa) & elem_syms):
                    match = (c, kappa, j)
                    break
            if match is None:
                corr = None
                break
            corr.append(match)
        out.append(None if corr is None else (f, g, corr))
    if not any(_rebuilt(p) for p in out):
        return None
    return out


def _is_difference(expr, elem_loads: set) -> bool:
    """Whether ``expr`` is an element value minus a per-channel symbol (``x - mean``)."""
    if not isinstance(expr, sympy.Add) or len(expr.args) != 2:
        return False
    a, b = expr.args
    for u, v in ((a, b), (b, a)):
        if u in elem_loads and (-v).is_Symbol and -v not in elem_loads:
            return True
    return False


def _rebuilt(post) -> bool:
    """Whether a summand's float sum needs rebuilding (a factor or a correction, see
    :func:`_float_sum_posts`)."""
    return post is not None and (post[0] != 1 or bool(post[2]))


def _c_comment(text: str) -> str:
    return text.replace("*/", "* /").replace("/*", "/ *")


def _block(
    defs: Sequence[Assign],
    targets: Sequence[tuple[str, sympy.Expr]],
    ctype: str,
    temp_prefix: str,
    rename: dict[sympy.Symbol, sympy.Symbol],
    first: set[str] | None = None,
):
    """CSE and print ``defs`` (only those needed) and the ``targets``.

    Returns ``(stmts, results, inputs)``: statements ``(name, rhs)`` to emit as
    ``const <type> name = rhs;`` (cse temporaries and definitions interleaved), the printed
    target expressions, and the set of plan symbols the block reads (not defined in it).
    """
    needed = _needed_defs(defs, [e for _, e in targets])
    assigns = [(d.symbol, d.expr) for d in needed]
    printer = make_printer(ctype, first=first)
    stmts, results = cse_program([(rename[s].name, e) for s, e in assigns], [e for _, e in targets],
                                 printer, temp_prefix, rename)
    defined = {s for s, _ in assigns}
    inputs: set[sympy.Symbol] = set()
    for e in [e for _, e in assigns] + [e for _, e in targets]:
        inputs |= _free(e)
    inputs -= defined
    # sympy.cse may pull a whole target into a temporary: results are then temp names, fine.
    return stmts, results, inputs


_CALL_OR_CAST = re.compile(r"[A-Za-z_]\w*\s*\(|\(\s*(?:float|double)\s*\)")
_FLOAT_LITERAL = re.compile(r"(?<![A-Za-z_\w])(?:\d+\.\d*|\.\d+|\d+[eE])")
_IDENT = re.compile(r"[A-Za-z_]\w*")


def _vector_ok(loads: Sequence[str], stmts: Sequence[tuple[str, str]], stores: Sequence[str]) -> bool:
    """Whether the printed element statements also run on GCC vector-extension types.

    They must be ``+ - * /`` over names and integer literals (no call, cast or floating literal,
    which would not convert to a vector), and each must read a per-value name (a load or an
    earlier such statement): a vector operand makes the scalars in it broadcast.
    """
    per_value = set(loads)
    for name, rhs in list(stmts) + [(None, r) for r in stores]:
        if _CALL_OR_CAST.search(rhs) or _FLOAT_LITERAL.search(rhs):
            return False
        if not per_value & set(_IDENT.findall(rhs)):
            return False
        if name is not None:
            per_value.add(name)
    return True


def _kernel_data(plan: KernelPlan, dtype: str, prefix: str) -> dict:
    """Everything the templates need for one kernel and one dtype (both layouts)."""
    T, sfx = DTYPES[dtype]
    arrays = {a.name: a for a in plan.arrays}
    scalar_syms = [s.symbol for s in plan.scalars]
    taken = set(_RESERVED) | set(arrays) | {s.name for s in plan.scalars} | {plan.count.name}
    names = _Names(taken - {s.name for s in plan.scalars} - {plan.count.name})
    # scalars and the count keep their own names (they are parameters/locals of that name)
    for s in scalar_syms + [plan.count]:
        names.map[s] = s.name
    if plan.count.name in arrays or plan.count.name in _RESERVED:
        names.map[plan.count] = plan.count.name + "_v"

    chan_load_syms = {ld.symbol: ld for ld in plan.channel_loads}
    elem_load_syms = {ld.symbol: ld for ld in plan.element_loads}
    elem_def_syms = {d.symbol: d for d in plan.element_defs}
    moments = [r for r in plan.reductions if isinstance(r, CenteredMoments)]
    sums = [r for r in plan.reductions if isinstance(r, Sum)]
    red_syms: list[sympy.Symbol] = []
    for r in plan.reductions:
        red_syms += [r.mean, r.var] if isinstance(r, CenteredMoments) else [r.symbol]

    # channel defs that depend on a reduction (directly or not) come after the reduction pass
    post: set[sympy.Symbol] = set(red_syms)
    for d in plan.channel_defs:
        if _free(d.expr) & post:
            post.add(d.symbol)
    pre_defs = [d for d in plan.channel_defs if d.symbol not in post]

    def rn(sym, suffix=""):
        return _sym(names(sym) + suffix)

    # ---- reductions: summands with the element defs substituted ---------------------------
    def subst_elem(expr):
        expr = sympy.sympify(expr)
        for d in reversed(plan.element_defs):
            expr = expr.xreplace({d.symbol: d.expr})
        return expr

    acc_exprs = [subst_elem(r.summand) for r in sums] + [subst_elem(r.of) for r in moments]
    red_elem: set[sympy.Symbol] = set()
    red_chan: set[sympy.Symbol] = set()
    for e in acc_exprs:
        for s in _free(e):
            if s in elem_load_syms:
                red_elem.add(s)
            elif s in elem_def_syms:
                raise ValueError(f"{plan.name}: element def {s} left in a reduction")
            else:
                red_chan.add(s)
    bad = red_chan & post
    if bad:
        raise ValueError(f"{plan.name}: reduction summands use {bad}, known only after the reductions")

    # reduction inputs per channel (loads / pre-defs / scalars used by the summands)
    rin_syms = _order([s for s in red_chan if s not in scalar_syms and s != plan.count], names)
    # The reduction pass (in double: each value converted, then summed; per lane in short partial
    # sums): Sum summands, and per CenteredMoments the deviation d = of - shift from a
    # per-channel shift, whose sums of d and d**2 give the block mean and M2.
    ren_a = {s: rn(s) for s in set(red_elem) | set(red_chan)}
    for s in scalar_syms + [plan.count]:
        ren_a[s] = rn(s)
    shift_syms = [_sym(f"bn_shift{k}") for k in range(len(moments))]
    dev_syms = [_sym(f"bn_d{k}") for k in range(len(moments))]
    for sym in shift_syms:
        ren_a[sym] = sym
    red_targets = [(f"acc{k}", subst_elem(r.summand)) for k, r in enumerate(sums)]
    red_targets += [(d.name, subst_elem(r.of) - sh) for r, sh, d in zip(moments, shift_syms, dev_syms)]
    # The double pass evaluates each summand through the plan's element defs, as the plan
    # writes it: dy*xhat as dy*(invstd*(x - mean)), whose factors are of the sum's own scale.
    # Inlined, C would evaluate (dy*invstd)*(x - mean), which underflows to 0 for dy ~ 1e-310
    # and x ~ 1e100 although the sum is ~1e-310.
    for d in plan.element_defs:
        ren_a[d.symbol] = rn(d.symbol)
    red_targets_d = [(f"acc{k}", sympy.sympify(r.summand)) for k, r in enumerate(sums)]
    red_targets_d += red_targets[len(sums):]

    def red_program(ctype):
        st, res, _ = _block(plan.element_defs, red_targets_d, ctype, "ra", ren_a)
        pr = make_printer(ctype)
        terms = list(res[: len(sums)])
        for d, rhs in zip(dev_syms, res[len(sums):]):
            st.append((d.name, rhs))
            terms += [pr.doprint(d), pr.doprint(d**2)]
        return st, terms

    stmts_a, red_terms = red_program("double")
    lanes_d = [names(x) for x in rin_syms] + [sh.name for sh in shift_syms]
    red_variants = [dict(suffix="", ct="double", lane="lane", psum="psum", stmts=stmts_a, terms=red_terms,
                         lanes=lanes_d)]
    # Float kernels also get a float pass: each lane sums a few terms in float, then adds them in
    # double; a channel whose sums show a value out of float's comfortable range is summed again
    # by the double pass. A per-channel input subtracted from an element value (x - mean) is
    # split into float hi + lo parts, subtracted one after the other, as in the element pass.
    red_t = T == "float" and bool(red_targets)
    lanes_t_rin: list[dict] = []
    t_post = None
    if red_t:
        bn_v = _sym("bn_v")
        dprinter = make_printer("double")
        rin_set = set(rin_syms)
        lane_t_of: dict[sympy.Symbol, sympy.Symbol] = {}
        r_defs: list[Assign] = []

        def t_lane(x, kind):
            key = (x, kind)
            if key not in lane_t_of:
                nm = _sym(f"bn_{names(x)}_{kind}" if kind != "plain" else f"bn_{names(x)}_f")
                names.map[nm] = nm.name
                lane_t_of[key] = nm
                val = bn_v - round_to_float32(bn_v) if kind == "lo" else bn_v
                lanes_t_rin.append(dict(slot=rin_syms.index(x), expr=dprinter.doprint(val), name=nm.name))
            return lane_t_of[key]

        def split_expr(e, lo=True):
            """``e`` as the float pass computes it: ``x - c`` as ``(x - c_hi) - c_lo`` (without
            ``lo``: ``x - c_hi`` alone), other per-channel inputs rounded to float."""
            if isinstance(e, sympy.Add):
                chan = [t for t in e.args if _free(t) <= rin_set and _free(t)]
                rest = [t for t in e.args if _free(t) & set(elem_load_syms)]
                if len(chan) == 1 and len(rest) == len(e.args) - 1 and (chan[0].is_Symbol or (-chan[0]).is_Symbol):
                    sgn, c = (1, chan[0]) if chan[0].is_Symbol else (-1, -chan[0])
                    h = _sym(f"bn_rh{len(r_defs)}")
                    names.map[h] = h.name
                    r_defs.append(Assign(h, sympy.Add(*[split_expr(t, lo) for t in rest]) + sgn * t_lane(c, "hi")))
                    return h + sgn * t_lane(c, "lo") if lo else h
            if e.args:
                return e.func(*[split_expr(a, lo) for a in e.args])
            if e in rin_set:
                return t_lane(e, "plain")
            return e

        # Sums rebuilt per channel (_float_sum_posts; the rebuild reads the per-channel inputs):
        # the float pass sums G at the inputs' float values, the rest is done once per channel
        # in double.
        posts = (_float_sum_posts([e for _, e in red_targets[: len(sums)]], set(elem_load_syms), rin_set)
                 if rin_syms else None)
        t_targets = []
        for k, (nm, e) in enumerate(red_targets):
            p = posts[k] if posts is not None and k < len(sums) else None
            t_targets.append((nm, split_expr(e) if p is None else split_expr(p[1], lo=False)))
        ren_t = dict(ren_a)
        for sym in list(lane_t_of.values()) + [d.symbol for d in r_defs]:
            ren_t[sym] = sym
        st_t, res_t, _ = _block(r_defs, t_targets, "float", "rt", ren_t)
        fprinter = make_printer("float")
        terms_t = list(res_t[: len(sums)])
        for d, rhs in zip(dev_syms, res_t[len(sums):]):
            st_t.append((d.name, rhs))
            terms_t += [fprinter.doprint(d), fprinter.doprint(d**2)]
        red_variants.append(dict(suffix="_t", ct="float", lane="lanet", psum="psumt", stmts=st_t, terms=terms_t,
                                 lanes=[lt["name"] for lt in lanes_t_rin] + [sh.name for sh in shift_syms]))
        if posts is not None:
            raw = [_sym(f"bn_raw{k}") for k in range(len(sums))]
            post_targets = []
            for k, p in enumerate(posts):
                if not _rebuilt(p):
                    continue  # the float pass sums the summand itself
                f, _, corr = p
                post_targets.append((k, f * (raw[k] + sympy.Add(*[(c - round_to_float32(c)) * kappa * raw[j]
                                                                  for c, kappa, j in corr]))))
            ren_p = {s: rn(s) for s in rin_syms}
            ren_p.update({r: r for r in raw})
            p_stmts, p_res, p_in = _block([], [(f"acc{k}", e) for k, e in post_targets], "double", "rp", ren_p)
            t_post = dict(
                rin=[dict(name=names(s), slot=rin_syms.index(s)) for s in rin_syms if s in p_in],
                raw=[dict(name=r.name, acc=k) for k, r in enumerate(raw) if r in p_in],
                stmts=p_stmts,
                stores=[dict(acc=k, expr=rhs) for (k, _), rhs in zip(post_targets, p_res)],
                formulas=[_c_comment(f"sum({sympy.sstr(red_targets[k][1])}) = {sympy.sstr(e)}")
                          for k, e in post_targets]
                + [_c_comment(f"{r.name} = sum({sympy.sstr(p[1].xreplace({c: round_to_float32(c) for c in _free(p[1]) & rin_set}))})")
                   for r, p in zip(raw, posts) if r in p_in],
            )
    scal_in_red = [s for s in scalar_syms if s in red_chan]

    # reduction-input stage (per channel, before the reductions): loads and pre-defs
    ren_c = {}
    for s in set(chan_load_syms) | {d.symbol for d in plan.channel_defs} | set(red_syms) | set(scalar_syms) | {plan.count}:
        ren_c[s] = rn(s)
    rin_stmts, rin_res, rin_inputs = _block(pre_defs, [(names(s), s) for s in rin_syms], "double", "rs", ren_c)

    # ---- element pass -----------------------------------------------------------------------
    # In float kernels, a per-channel value subtracted from an element value (x - mean) is split
    # into float hi + lo parts, subtracted one after the other: x - hi is exact near the mean, so
    # the result keeps the accuracy of the double mean (a single float mean would cost
    # ulp(mean)/2, large when the mean is large compared with the spread).
    elem_syms = set(elem_load_syms) | set(elem_def_syms)
    edefs = list(plan.element_defs)
    coef_expr: dict[sympy.Symbol, sympy.Expr] = {}
    split: dict[sympy.Symbol, tuple[sympy.Symbol, sympy.Symbol]] = {}
    if T == "float":
        new_defs: list[Assign] = []
        for d in edefs:
            e = d.expr
            if isinstance(e, sympy.Add):
                chan = [t for t in e.args if not (_free(t) & elem_syms)]
                rest = [t for t in e.args if _free(t) & elem_syms]
                if len(chan) == 1 and rest and (chan[0].is_Symbol or (-chan[0]).is_Symbol):
                    sgn, c = (1, chan[0]) if chan[0].is_Symbol else (-1, -chan[0])
                    if c not in split:
                        hi, lo = _sym(f"bn_{names(c)}_hi"), _sym(f"bn_{names(c)}_lo")
                        names.map[hi], names.map[lo] = hi.name, lo.name
                        split[c] = (hi, lo)
                        coef_expr[hi] = c
                        coef_expr[lo] = c - round_to_float32(c)
                    hi, lo = split[c]
                    h = _sym(f"bn_h{len(new_defs)}")
                    names.map[h] = h.name
                    new_defs.append(Assign(h, sympy.Add(*rest) + sgn * hi))
                    new_defs.append(Assign(d.symbol, h + sgn * lo))
                    elem_syms.add(h)
                    continue
            new_defs.append(d)
        edefs = new_defs
    elem_targets = [(st.array, st.expr) for st in plan.element_stores]
    if T == "float" and split:
        # Fold the lo parts into each store's constant term when the stores are linear in them
        # with per-channel slopes (y = k*xmu + b: k*(h - lo) + b = k*h + (b - k*lo)): no extra
        # coefficient or operation per element.
        los = [lo for _, lo in split.values()]
        lo_of = {lo: c for c, (_, lo) in split.items()}

        def inline(expr):
            for d in reversed(edefs):
                expr = expr.xreplace({d.symbol: d.expr})
            return expr

        foldable = True
        corr_of = []
        for _, e in elem_targets:
            full = sympy.expand(inline(e))
            corr = sympy.Integer(0)
            for lo in los:
                slope = sympy.diff(full, lo)
                if sympy.diff(slope, lo) != 0 or _free(slope) & elem_syms:
                    foldable = False
                corr += lo * slope
            corr_of.append(corr)
        if foldable:
            edefs = [Assign(d.symbol, d.expr.xreplace({lo: 0 for lo in los})) for d in edefs]
            new_targets = []
            for k, ((name, e), corr) in enumerate(zip(elem_targets, corr_of)):
                e = sympy.sympify(e)
                terms = e.args if isinstance(e, sympy.Add) else (e,)
                const = sympy.Add(*[t for t in terms if not (_free(t) & elem_syms)])
                k0 = _sym(f"bn_{name}_k0")
                names.map[k0] = k0.name
                coef_expr[k0] = (const + corr).xreplace({lo: lo_of[lo] - round_to_float32(lo_of[lo]) for lo in los})
                new_targets.append((name, e - const + k0))
            elem_targets = new_targets
            for lo in los:
                coef_expr.pop(lo, None)
    # Collect each (linear) store into per-channel coefficients of its element basis: the
    # loads and the differences x - c of an element value and a per-channel value (float: the
    # exact x - hi; double: xmu), dx = k0 + kdy*dy + (kxhat*invstd)*xmu, y = (gamma*invstd)*xmu +
    # beta: fewer coefficients to load and fewer products per element. A coefficient that
    # would leave the type's range sends its channel to the element pass in the plan's own form
    # (see below).
    if T == "float":
        keep = {d.symbol for d in edefs if d.symbol.name.startswith("bn_h")} if split else set()
    else:
        keep = {d.symbol for d in edefs if _is_difference(d.expr, set(elem_load_syms))}
    collected = None
    folded_syms: set[sympy.Symbol] = set()  # coefficients the plan did not name (gamma*invstd)
    if keep:
        basis = set(elem_load_syms) | keep

        def inline_keep(expr):
            for d in reversed(edefs):
                if d.symbol not in keep:
                    expr = expr.xreplace({d.symbol: d.expr})
            return expr

        collected = []
        for name, e in elem_targets:
            full = sympy.expand(inline_keep(sympy.sympify(e)))
            parts = sympy.collect(full, sorted(basis, key=lambda x: x.name), evaluate=False)
            if not all((k == 1 or k in basis) and not (_free(v) & elem_syms) for k, v in parts.items()):
                collected = None
                break
            terms = []
            for k in sorted(parts, key=lambda x: "" if x == 1 else x.name):
                v = parts[k]
                if not v.is_Symbol:
                    kk = _sym(f"bn_{name}_k{len(collected)}_{len(terms)}")
                    names.map[kk] = kk.name
                    coef_expr[kk] = v.xreplace(coef_expr)
                    v = kk
                    folded_syms.add(kk)
                terms.append(v if k == 1 else v * k)
            collected.append((name, sympy.Add(*terms)))
        if collected and (T == "float" or folded_syms):
            elem_targets = collected
        else:
            collected = None  # (double: nothing folded, the plan's form is the only one)
    elem_def_syms_all = {d.symbol for d in edefs}
    needed_edefs = _needed_defs(edefs, [e for _, e in elem_targets])
    e_in: set[sympy.Symbol] = set()
    for e in [d.expr for d in needed_edefs] + [e for _, e in elem_targets]:
        e_in |= _free(e)
    e_in -= {d.symbol for d in needed_edefs}
    e_loads = [ld for ld in plan.element_loads if ld.symbol in e_in]
    coef_syms = _order([s for s in e_in if s not in elem_load_syms], names)
    ren_e = {s: rn(s) for s in set(elem_load_syms) | elem_def_syms_all}
    for s in coef_syms:
        ren_e[s] = rn(s, "_t")
    stmts_e, res_e, _ = _block(edefs, elem_targets, T, "et", ren_e)

    # Float kernels also get the element pass in double (the plan's own element defs, double
    # coefficients), used for a call in which some float coefficient would be out of the
    # float range (|x| ~ 1e30 makes gamma*invstd**3*sum ~ 1e-60): the values are read as float,
    # computed in double and rounded once when stored. Double kernels whose stores were
    # collected get the plan's own form too, for channels whose collected coefficient leaves
    # the double range (gamma*invstd ~ 1e-330 for gamma ~ 1e-230 and x ~ 1e100).
    wide = None
    if T == "float" or collected:
        w_targets = [(st.array, st.expr) for st in plan.element_stores]
        w_in: set[sympy.Symbol] = set()
        w_defs = _needed_defs(plan.element_defs, [e for _, e in w_targets])
        for e in [d.expr for d in w_defs] + [e for _, e in w_targets]:
            w_in |= _free(e)
        w_in -= {d.symbol for d in w_defs}
        w_coefs = _order([s for s in w_in if s not in elem_load_syms], names)
        ren_w = {s: rn(s) for s in set(elem_load_syms) | set(elem_def_syms)}
        for s in w_coefs:
            ren_w[s] = rn(s, "_d")
        w_stmts, w_res, _ = _block(plan.element_defs, w_targets, "double", "ew", ren_w)
        wide = dict(coef_syms=w_coefs, stmts=w_stmts, res=w_res,
                    loads=[ld for ld in plan.element_loads if ld.symbol in w_in])

    # ---- channel phase ---------------------------------------------------------------------
    chan_targets = []
    for st in plan.channel_stores:
        chan_targets.append((st.array, st.expr))
    for s in coef_syms:
        chan_targets.append((names(s), coef_expr.get(s, s)))
    n_wide = 0
    if wide is not None:
        for s in wide["coef_syms"]:
            chan_targets.append((names(s) + "_d", s))
        # a coefficient out of range: finite, nonzero and below 2**-100 or above 2**100 (float:
        # any coefficient, each rounded to float; double: the folded ones, below 2**-1000 or
        # above 2**1000, where the product has lost bits or the plan's form would not overflow)
        e = 100 if T == "float" else 1000
        big, small = sympy.Float(2.0**e), sympy.Float(2.0**-e)
        conds = []
        for s in coef_syms:
            if T != "float" and s not in folded_syms:
                continue
            v = coef_expr.get(s, s)
            out_of_range = sympy.Or(sympy.StrictLessThan(sympy.Abs(v), small),
                                    sympy.StrictGreaterThan(sympy.Abs(v), big))
            if T == "float":  # v in double, then rounded to float
                conds.append(sympy.And(is_finite(v), sympy.Ne(v, 0), out_of_range))
            else:
                # the product itself may have underflowed to 0 or overflowed: judged where its
                # factors are finite and nonzero (else both forms give the same 0, inf or NaN)
                facs = sorted(_free(v), key=lambda x: x.name)
                conds.append(sympy.And(*[sympy.And(is_finite(f), sympy.Ne(f, 0)) for f in facs],
                                       sympy.Or(sympy.Eq(v, 0), sympy.Not(is_finite(v)), out_of_range)))
        chan_targets.append(("bn_wide", sympy.Or(*conds) if conds else sympy.false))
        n_wide = len(wide["coef_syms"])
    red_first = {names(x) for x in red_syms}
    stmts_c, res_c, chan_inputs = _block(plan.channel_defs, chan_targets, "double", "ct", ren_c,
                                         first=red_first)
    n_st = len(plan.channel_stores)
    chan_stores = []
    guards = []
    for st, rhs in zip(plan.channel_stores, res_c[:n_st]):
        arr = arrays[st.array]
        item = dict(array=st.array, expr=rhs, optional=arr.optional)
        if st.finite_guard and plan.returns_skip_flag:
            item["slot"] = len(guards)
            guards.append(item)
        else:
            chan_stores.append(item)
    coefs = [dict(name=names(s), tname=names(s) + "_t", expr=rhs, slot=k)
             for k, (s, rhs) in enumerate(zip(coef_syms, res_c[n_st:n_st + len(coef_syms)]))]
    wide_data = None
    if wide is not None:
        off = n_st + len(coef_syms)
        wide_data = dict(
            coefs=[dict(name=names(s), dname=names(s) + "_d", expr=rhs, slot=k)
                   for k, (s, rhs) in enumerate(zip(wide["coef_syms"], res_c[off:off + n_wide]))],
            flag=res_c[off + n_wide],
            loads=[dict(name=names(ld.symbol), array=ld.array) for ld in wide["loads"]],
            stmts=wide["stmts"],
            stores=[dict(array=st.array, expr=rhs, optional=arrays[st.array].optional)
                    for st, rhs in zip(plan.element_stores, wide["res"])],
        )

    # inputs of the channel phase
    def loads_for(inputs):
        out = []
        for ld in plan.channel_loads:
            if ld.symbol in inputs:
                arr = arrays[ld.array]
                if arr.optional:
                    default = make_printer("double").doprint(sympy.Float(float(ld.default))) if ld.default is not None \
                        else make_printer("double").doprint(sympy.Float(0.0))
                else:
                    default = None
                out.append(dict(name=names(ld.symbol), array=ld.array, default=default))
        return out

    red_results = [dict(name=names(s), slot=k) for k, s in enumerate(red_syms)]
    chan_reds = [r for r, s in zip(red_results, red_syms) if s in chan_inputs]

    # which outputs need the reductions / the element pass (runtime NULL checks)
    def depends_on_red(expr) -> bool:
        syms = _free(expr)
        for d in plan.channel_defs:
            pass
        closure = set(syms)
        for d in reversed(plan.channel_defs):
            if d.symbol in closure:
                closure |= _free(d.expr)
        for d in reversed(plan.element_defs):
            if d.symbol in closure:
                closure |= _free(d.expr)
        return bool(closure & set(red_syms))

    red_outputs = []
    for st in plan.channel_stores + plan.element_stores:
        if depends_on_red(st.expr):
            red_outputs.append(arrays[st.array])
    elem_outputs = [arrays[st.array] for st in plan.element_stores]

    def any_cond(arrs: list[Array]) -> str:
        if not arrs:
            return "0"
        if any(not a.optional for a in arrs):
            return "1"
        seen = []
        for a in arrs:
            if a.name not in seen:
                seen.append(a.name)
        return " || ".join(f"a->{n} != NULL" for n in seen)

    params = []
    for arr in plan.arrays:
        const = "const " if arr.intent == "in" else ""
        params.append(dict(name=arr.name, decl=f"{const}{T} *{arr.name}", kind="array", ctype=f"{const}{T} *"))
    for s in plan.scalars:
        params.append(dict(name=s.name, decl=f"double {s.name}", kind="scalar", ctype="double "))
    if plan.returns_skip_flag:
        params.append(dict(name="skip_nonfinite", decl="int skip_nonfinite", kind="flag", ctype="int "))
    params.append(dict(name="num_threads", decl="int num_threads", kind="threads", ctype="int "))

    # readable formulas for the comment
    describe = plan.describe().splitlines()
    formulas = [_c_comment(f) for f in plan.formulas]

    return dict(
        plan=plan.name,
        fn=f"{prefix}{plan.name}_{sfx}",
        base=f"{prefix}{plan.name}",
        prefix=prefix,
        T=T,
        sfx=sfx,
        summary=_c_comment(plan.summary),
        formulas=formulas,
        describe=[_c_comment(line) for line in describe],
        params=params,
        arrays=[dict(name=a.name, extent=a.extent, intent=a.intent, optional=a.optional,
                     doc=_c_comment(a.doc), ctype=("const " if a.intent == "in" else "") + T)
                for a in plan.arrays],
        scalars=[dict(name=s.name, doc=_c_comment(s.doc)) for s in plan.scalars],
        skip_flag=plan.returns_skip_flag,
        count=names(plan.count),
        # reductions
        has_red=bool(plan.reductions),
        n_sum=len(sums),
        n_mom=len(moments),
        n_acc=len(red_terms),
        n_red=len(red_syms),
        red_results=red_results,
        sums=[dict(name=names(r.symbol), acc=k, slot=red_syms.index(r.symbol)) for k, r in enumerate(sums)],
        moments=[dict(mean=names(r.mean), var=names(r.var), s1=len(sums) + 2 * k, s2=len(sums) + 2 * k + 1,
                      bm=k, lane=len(rin_syms) + k,
                      mean_slot=red_syms.index(r.mean), var_slot=red_syms.index(r.var))
                 for k, r in enumerate(moments)],
        rin=[dict(name=names(s), slot=k, expr=rhs) for k, (s, rhs) in enumerate(zip(rin_syms, rin_res))],
        rin_loads=loads_for(rin_inputs),
        rin_stmts=rin_stmts,
        rin_scalars=[s.name for s in scalar_syms if s in rin_inputs],
        rin_count=plan.count in rin_inputs,
        red_scalars=[s.name for s in scal_in_red],
        red_count=plan.count in red_chan,
        group=max(2, 8 // max(1, len([ld for ld in plan.element_loads if ld.symbol in red_elem]))),
        red_variants=red_variants,
        red_t=red_t,
        lanes_t_rin=lanes_t_rin,
        t_post=t_post,
        lane_t_shift=len(lanes_t_rin),
        n_lanes_t=len(lanes_t_rin) + len(moments),
        red_loads=[dict(name=names(ld.symbol), array=ld.array) for ld in plan.element_loads if ld.symbol in red_elem],
        red_stmts=stmts_a,
        red_terms=red_terms,
        lanes=[names(s) for s in rin_syms] + [sh.name for sh in shift_syms],
        # channel phase
        chan_loads=loads_for(chan_inputs),
        chan_reds=chan_reds,
        chan_scalars=[s.name for s in scalar_syms if s in chan_inputs],
        chan_count=plan.count in chan_inputs,
        chan_stmts=stmts_c,
        chan_stores=chan_stores,
        guards=guards,
        coefs=coefs,
        wide=wide_data,
        # element pass
        e_loads=[dict(name=names(ld.symbol), array=ld.array) for ld in e_loads],
        e_stmts=stmts_e,
        e_vector=_vector_ok([names(ld.symbol) for ld in e_loads], stmts_e, res_e),
        e_stores=[dict(array=st.array, expr=rhs, optional=arrays[st.array].optional)
                  for st, rhs in zip(plan.element_stores, res_e)],
        e_arrays=sorted({ld.array for ld in e_loads} | {st.array for st in plan.element_stores},
                        key=lambda n: [a.name for a in plan.arrays].index(n)),
        need_red=any_cond(red_outputs) if plan.reductions else "0",
        need_elem=any_cond(elem_outputs),
    )


@functools.lru_cache(maxsize=1)
def _stats_helpers() -> dict:
    """The moment arithmetic of the templates' stable reduction, printed from SymPy.

    Mean ``s/n``; a block's mean and M2 from shifted sums (``k + s1/n``, ``s2 - s1**2/n``, with
    a recentering test); Chan's merge of two (count, mean, M2) summaries with
    ``w = nb/(na + nb)``; biased variance ``M2/n``.

    A summary holds its mean in two parts, a shift ``k`` (a value of the data or a block's mean:
    near the mean) and the offset ``o`` of the mean from it, so that the offset ``d`` between two
    means, which the merge weighs with ``d**2``, is formed from differences of nearby values
    (``ka - kb`` exact by Sterbenz's lemma) and small offsets, never from two means rounded to
    the precision of ``|mean|``: at ``|mean|/std`` = 1e12 that rounding alone moved the variance
    by up to 1e-6 relative.
    """
    p = make_printer("double")
    s, n, na, qa, nb, qb, w, d = sympy.symbols("s n na qa nb qb w d")
    ka, oa, kb, ob, h, e, kd = sympy.symbols("ka oa kb ob h e kd")
    k, o, s1, s2, a = sympy.symbols("k o s1 s2 a")
    return dict(
        mean=p.doprint(s / n),
        w=p.doprint(nb / (na + nb)),
        # the mean of a summary (shift k, offset o)
        total=p.doprint(k + o),
        # d: the offset of a second mean (kb + ob, or a block's k + s1/n) from the first
        # (ka + oa), the nearby shifts subtracted first
        kd=p.doprint(kb - ka),
        d=p.doprint(kd + ob - oa),
        block_d=p.doprint(kd + s1 / n - oa),
        oa=p.doprint(oa + d * w),
        # the merge's term d**2*na*w, taken as d*(d*(na*w)): an empty side (na = 0) adds an exact
        # 0 where d*d would overflow (inf*0 is NaN), and with na, nb >= 1 (na*w >= 1/2) it
        # overflows only where the term itself does
        h=p.doprint(na * w),
        e=p.doprint(d * h),
        qa=p.doprint(qa + qb + d * e),
        var=p.doprint(s / n),
        # a block summarized by the sums s1 of d = v - k and s2 of d**2 (the shift k is any
        # value near the mean: the correction term makes the result exact in exact arithmetic)
        block_mean=p.doprint(k + s1 / n),
        # M2 = s2 - s1**2/n taken as s2 - s1*a with a = s1/n, the block's mean offset: s1**2
        # overflows where s1**2/n does not (1e4 deviations of 1e150 from a shift 1e150 off)
        a=p.doprint(s1 / n),
        # where the squares overflowed but not the deviations (s2 inf, s1 finite: deviations
        # beyond sqrt(DBL_MAX) from a recentered shift), M2 is inf too, not s2 - s1*a: s1*a may
        # overflow as well (a sum of deviations of 2e199 that is 1e184, not 0), and inf - inf is
        # NaN. An inf or NaN among the values (s1 not finite) keeps the NaN, as PyTorch's.
        block_m2=p.doprint(sympy.Piecewise((s2, sympy.And(is_finite(s1), sympy.Not(is_finite(s2)))),
                                           (s2 - s1 * a, True))),
        # more than half of s2 would cancel (s1**2/n > s2/2): the shift is too far from the
        # mean, recenter; also
        # when the squares overflowed but not the deviations (a shift one rounding off a
        # constant 1e200: deviations of 1e184 whose squares are inf, where the shift k + s1/n
        # gives deviations of 0)
        recenter=p.doprint(sympy.Or(sympy.StrictGreaterThan(s1 * a, s2 / 2),
                                    sympy.And(is_finite(s1), sympy.Not(is_finite(s2))))),
        # sums taken in float are usable: finite, and not in float's tiny range (a sum of 0 is
        # not trusted either: its terms may have underflowed, e.g. invstd*dy with a tiny dy)
        t_ok_sum=p.doprint(sympy.And(is_finite(s), sympy.StrictGreaterThan(
            sympy.Abs(s), n * sympy.Float(2.0**-100)))),
        t_ok=p.doprint(sympy.And(is_finite(s1), is_finite(s2), sympy.StrictGreaterThan(s2, n * sympy.Float(2.0**-100)))),
    )


# --------------------------------------------------------------------------------------------
# Jinja
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _env():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_paths.templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _header_name(prefix: str) -> str:
    stem = prefix.rstrip("_") or "bnsym"
    return f"{stem}.h"


def _check_prefix(prefix: str) -> None:
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", prefix):
        raise ValueError(f"bnsym: the prefix must be a C identifier, got {prefix!r}")


def render(
    dtypes: Sequence[str] = ("float32", "float64"),
    layouts: Sequence[str] = ("ncs", "nsc"),
    prefix: str = "bnsym_",
    plans: dict[str, KernelPlan] | None = None,
    progress=None,
) -> dict[str, str]:
    """Render the header and one C source per kernel: ``{filename: text}`` (deterministic)."""
    _check_prefix(prefix)
    dtypes = [d for d in DTYPES if d in dtypes]
    layouts = [lay for lay in LAYOUTS if lay in layouts]
    if not dtypes or not layouts:
        raise ValueError("bnsym: need at least one dtype and one layout")
    if plans is None:
        if progress:
            progress("deriving the kernel plans (sympy)")
        plans = load_plans()
    stem = prefix.rstrip("_") or "bnsym"
    header = _header_name(prefix)
    env = _env()
    kernels = []
    for name in KERNELS:
        plan = plans[name]
        if progress:
            progress(f"printing {name}")
        kernels.append(dict(plan=name, variants=[_kernel_data(plan, d, prefix) for d in dtypes]))
    common = dict(prefix=prefix, layouts=layouts, header=header, stats=_stats_helpers(),
                  guard=re.sub(r"\W", "_", header).upper())
    files: dict[str, str] = {}
    files[header] = env.get_template("header.h.j2").render(kernels=kernels, **common)
    for k in kernels:
        fname = f"{stem}_{k['plan']}.c"
        files[fname] = env.get_template("kernel_source.c.j2").render(kernel=k, filename=fname, **common)
    # the C half of the Python API's forward call (bnsym.build includes it in the cffi module)
    fname = python_entry_name(prefix)
    files[fname] = env.get_template("python_entry.h.j2").render(
        kernels=kernels, filename=fname, sfxs=[DTYPES[d][1] for d in dtypes],
        **dict(common, guard=re.sub(r"\W", "_", fname).upper()))
    return files


def python_entry_name(prefix: str = "bnsym_") -> str:
    """The file holding the Python API's C entry point (:file:`templates/python_entry.h.j2`)."""
    return f"{prefix.rstrip('_') or 'bnsym'}_python.h"


def write(out_dir, files: dict[str, str]) -> list[Path]:
    """Write ``files`` into ``out_dir`` (created if needed); only changed files are rewritten."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in sorted(files.items()):
        path = out / name
        data = text.encode("utf-8")
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
        written.append(path)
    return written


def check(reference_dir=None, files: dict[str, str] | None = None) -> list[str]:
    """Names of the files that differ between a fresh generation and ``reference_dir``.

    ``reference_dir`` defaults to the committed ``generated/``. Stale files present in the
    folder but not generated any more are reported too.
    """
    ref = Path(reference_dir) if reference_dir is not None else _paths.generated_dir()
    if files is None:
        files = render()
    differ = []
    for name, text in sorted(files.items()):
        path = ref / name
        if not path.is_file() or path.read_bytes() != text.encode("utf-8"):
            differ.append(name)
    for path in sorted(ref.glob("*")):
        if path.suffix in (".c", ".h") and path.name not in files:
            differ.append(path.name)
    return differ


def _diff_head(ref: Path, name: str, text: str, lines: int = 20) -> str:
    path = ref / name
    old = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.is_file() else []
    new = text.splitlines(keepends=True)
    diff = list(difflib.unified_diff(old, new, f"committed/{name}", f"fresh/{name}", n=1))
    head = "".join(diff[:lines])
    if len(diff) > lines:
        head += f"... ({len(diff) - lines} more diff lines)\n"
    return head


def cli_generate(args) -> int:
    """``bnsym generate [--check | --update | --out DIR]``."""

    def status(msg: str) -> None:
        print(f"bnsym generate: {msg} ...", file=sys.stderr, flush=True)

    dtypes = list(getattr(args, "dtypes", None) or DTYPES)
    layouts = list(getattr(args, "layouts", None) or LAYOUTS)
    prefix = getattr(args, "prefix", None) or "bnsym_"
    custom = (sorted(dtypes) != sorted(DTYPES)) or (sorted(layouts) != sorted(LAYOUTS)) or prefix != "bnsym_"
    try:
        _check_prefix(prefix)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if (args.check or args.update) and custom:
        print("bnsym: --check and --update use the default set (all dtypes, layouts, prefix bnsym_); "
              "use --out DIR for a custom set", file=sys.stderr)
        return 2
    if args.out:  # a path that cannot be a folder fails now, not after the derivation
        existing = Path(args.out)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing.exists() and not existing.is_dir():
            print(f"bnsym: error: cannot write the kernels into {args.out}: {existing} is not a folder",
                  file=sys.stderr)
            return 2
    files = render(dtypes, layouts, prefix, progress=status)
    if args.check:
        ref = _paths.generated_dir()
        differ = check(ref, files)
        if differ:
            print(f"bnsym generate --check: {len(differ)} file(s) differ from {ref}:")
            for name in differ:
                print(f"  {name}")
                if name in files:
                    print(_diff_head(ref, name, files[name]), end="")
            print("run 'bnsym generate --update' and commit generated/")
            return 1
        print(f"bnsym generate --check: {len(files)} files in {ref} are up to date")
        return 0
    if args.update:
        root = _paths.source_checkout()
        if root is None:
            print("bnsym: --update needs a source checkout (templates/ and pyproject.toml beside bnsym/)",
                  file=sys.stderr)
            return 1
        out = root / "generated"
        before = {n: (out / n).read_bytes() if (out / n).is_file() else None for n in files}
        write(out, files)
        stale = [p for p in sorted(out.glob("*")) if p.suffix in (".c", ".h") and p.name not in files]
        for p in stale:
            p.unlink()
        changed = [n for n in sorted(files) if before[n] != files[n].encode("utf-8")]
        print(f"bnsym generate --update: {len(files)} files in {out}; "
              f"{len(changed)} changed{': ' + ', '.join(changed) if changed else ''}"
              f"{'; removed ' + ', '.join(p.name for p in stale) if stale else ''}")
        return 0
    if args.out:
        try:
            paths = write(args.out, files)
        except OSError as exc:
            print(f"bnsym: error: cannot write the kernels into {args.out}: "
                  f"{exc.strerror or exc}{' (' + exc.filename + ')' if exc.filename else ''}", file=sys.stderr)
            return 2
        for p in paths:
            print(f"wrote {p} ({len(files[p.name])} bytes)")
        print("compile with: cc -std=c99 -O3 -march=native -fno-math-errno -fopenmp -c *.c (OpenMP "
              "optional: without it, -fopenmp-simd -DBNSYM_OPENMP_SIMD keeps the loops "
              "vectorized; -march=native for the CPU's vectors and, on x86-64 with AVX, streaming "
              "stores)")
        print(f"check that GCC vectorizes every marked loop: bnsym vectorized {args.out}")
        return 0
    print("bnsym generate: would write (use --update, --out DIR or --check):")
    for name, text in sorted(files.items()):
        print(f"  {name}  {len(text.encode('utf-8'))} bytes, {text.count(chr(10))} lines")
    return 0


def _render_to_temp() -> Path:  # pragma: no cover - debugging helper
    tmp = Path(tempfile.mkdtemp(prefix="bnsym-gen-"))
    write(tmp, render())
    return tmp
