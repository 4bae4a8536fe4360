"""Bad input: a clear TypeError/ValueError before any C runs, and nothing changed after it."""

import numpy as np
import pytest

import bnsym

F32, F64 = np.float32, np.float64
C = 3


@pytest.fixture(params=["c", "numpy"])
def backend(request):
    if request.param == "c":
        request.getfixturevalue("kernels")
    return request.param


def _args(dtype=F32, shape=(4, C, 5)):
    rng = np.random.default_rng(0)
    return dict(
        input=rng.standard_normal(shape).astype(dtype),
        running_mean=rng.standard_normal(C).astype(dtype),
        running_var=(rng.random(C) + 0.5).astype(dtype),
        weight=rng.standard_normal(C).astype(dtype),
        bias=rng.standard_normal(C).astype(dtype),
    )


def _snapshot(values):
    return {k: (v.copy(), v.strides) if isinstance(v, np.ndarray) else v for k, v in values.items()}


def _unchanged(before, values):
    for k, v in values.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, before[k][0], err_msg=k)
            assert v.strides == before[k][1]


def _call_fails(exc, match, backend, **changes):
    """batch_norm with ``changes`` applied raises ``exc`` matching ``match``; nothing changed."""
    kw = _args()
    kw.update(dict(training=True))
    kw.update(changes)
    arrays = {k: v for k, v in kw.items() if isinstance(v, np.ndarray)}
    out = kw.get("out")
    if isinstance(out, np.ndarray):
        arrays["out"] = out
    before = _snapshot(arrays)
    with pytest.raises(exc, match=match):
        bnsym.batch_norm(backend=backend, **kw)
    _unchanged(before, arrays)


# --------------------------------------------------------------------------- input


@pytest.mark.parametrize("value,exc,match", [
    ([[1.0, 2.0, 3.0]] * 4, TypeError, "input must be a numpy.ndarray.*got list"),
    (3.0, TypeError, "input must be a numpy.ndarray"),
    (None, TypeError, "input must be a numpy.ndarray.*NoneType"),
    (np.ones((4, C), dtype=object), TypeError, "input has dtype object"),
    (np.ones((4, C), dtype=np.int32), TypeError, "input has dtype int32"),
    (np.ones((4, C), dtype=np.float16), TypeError, "input has dtype float16"),
    (np.ones((4, C), dtype=np.complex64), TypeError, "input has dtype complex64"),
    (np.ones((4, C), dtype=">f4"), TypeError, "non-native byte order"),
    (np.ones((C,), dtype=F32), ValueError, "at least 2 dimensions.*\\(3,\\)"),
    (np.float32(1.0), TypeError, "numpy.ndarray"),
    (np.ma.masked_array(np.ones((4, C), F32), mask=np.eye(4, C, dtype=bool)), TypeError,
     "input is a numpy.ma.MaskedArray, whose mask bnsym would ignore"),
])
def test_bad_input_array(value, exc, match, backend):
    _call_fails(exc, match, backend, input=value)


@pytest.mark.parametrize("shape", [(1, C), (1, C, 1), (1, C, 1, 1), (1, C, 1, 1, 1)])
def test_one_value_per_channel_when_training(shape, backend):
    msg = (r"Expected more than 1 value per channel when training, got input size "
           + r"\(" + ", ".join(str(s) for s in shape) + r"\)")
    _call_fails(ValueError, msg, backend, input=np.ones(shape, F32))
    # Evaluation mode is fine with one value per channel.
    bnsym.batch_norm(np.ones(shape, F32), np.zeros(C, F32), np.ones(C, F32), backend=backend)


# --------------------------------------------------------------------------- per-channel arrays


@pytest.mark.parametrize("name", ["weight", "bias", "running_mean", "running_var"])
def test_mixed_dtypes(name, backend):
    _call_fails(TypeError, f"{name} has dtype float64 but input has dtype float32", backend,
                **{name: np.ones(C, F64)})


@pytest.mark.parametrize("name", ["weight", "bias", "running_mean", "running_var"])
@pytest.mark.parametrize("bad_shape", [(C + 1,), (C, 1), (1, C), ()])
def test_per_channel_shape(name, bad_shape, backend):
    _call_fails(ValueError, f"{name} must have shape \\({C},\\)", backend,
                **{name: np.ones(bad_shape, F32)})


@pytest.mark.parametrize("name", ["weight", "bias", "running_mean", "running_var"])
def test_per_channel_not_an_array(name, backend):
    _call_fails(TypeError, f"{name} must be a numpy.ndarray", backend, **{name: [1.0, 2.0, 3.0]})


@pytest.mark.parametrize("name", ["running_mean", "running_var"])
def test_running_stats_must_be_updatable_in_training(name, backend):
    strided = np.ones(2 * C, F32)[::2]
    _call_fails(ValueError, f"{name} is not contiguous", backend, **{name: strided})
    ro = np.ones(C, F32)
    ro.flags.writeable = False
    _call_fails(ValueError, f"{name} is read-only", backend, **{name: ro})


def test_readonly_running_stats_fine_in_eval(backend):
    kw = _args()
    for k in ("running_mean", "running_var"):
        kw[k].flags.writeable = False
    bnsym.batch_norm(training=False, backend=backend, **kw)


@pytest.mark.parametrize("missing", ["running_mean", "running_var"])
def test_running_stats_required_in_eval(missing, backend):
    _call_fails(ValueError, "running_mean and running_var must be given in evaluation mode",
                backend, training=False, **{missing: None})


@pytest.mark.parametrize("missing", ["running_mean", "running_var"])
def test_running_stats_both_or_neither_in_training(missing, backend):
    """PyTorch's rule and message: one running statistic alone is refused (it was updated alone)."""
    _call_fails(ValueError, "running_mean and running_var must either both be None or neither be None",
                backend, **{missing: None})


def test_running_stats_overlapping_each_other(backend):
    shared = np.ones(C + 1, F32)
    _call_fails(ValueError, "running_mean overlaps running_var", backend,
                running_mean=shared[:C], running_var=shared[1:])


@pytest.mark.parametrize("stat", ["running_mean", "running_var"])
@pytest.mark.parametrize("other", ["weight", "bias"])
@pytest.mark.parametrize("owner", ["stat", "other"])
def test_running_stat_overlapping_a_view(stat, other, owner, backend):
    # One array owns the memory and the other is a view of it (not the same object): the
    # overlap must still be found (a statistic written in place while the other is read).
    base = np.linspace(0.5, 1.5, C).astype(F32)
    _call_fails(ValueError, f"{stat} overlaps {other}|{other} overlaps {stat}", backend,
                **{stat: base, other: base[:]} if owner == "stat" else {stat: base[:], other: base})


@pytest.mark.parametrize("stat", ["running_mean", "running_var"])
def test_running_stat_overlapping_copied_input(stat, backend):
    # A strided input is copied for the kernel; the statistic lies inside the caller's input.
    big = np.random.default_rng(2).standard_normal(2 * 4 * C * 5).astype(F32)
    x = big.reshape(4, C, 10)[:, :, ::2]
    _call_fails(ValueError, f"{stat} overlaps input", backend, input=x, **{stat: big[2:2 + C]})


# --------------------------------------------------------------------------- scalars


@pytest.mark.parametrize("eps,exc", [(0.0, ValueError), (-1e-5, ValueError), (np.nan, ValueError),
                                     (np.inf, ValueError), ("1e-5", TypeError), (None, TypeError),
                                     (True, TypeError)])
def test_bad_eps(eps, exc, backend):
    _call_fails(exc, "eps must be a finite number > 0", backend, eps=eps)


def test_numpy_scalar_eps_and_momentum_accepted(backend):
    kw = _args()
    bnsym.batch_norm(training=True, eps=np.float32(1e-3), momentum=np.float64(0.2),
                     backend=backend, **kw)


@pytest.mark.parametrize("momentum,exc,match", [
    (-0.1, ValueError, "momentum must be in \\[0, 1\\]"),
    (1.5, ValueError, "momentum must be in \\[0, 1\\]"),
    (np.nan, ValueError, "momentum must be in \\[0, 1\\]"),
    ("0.1", TypeError, "momentum must be a number"),
    (None, ValueError, "momentum=None"),
])
def test_bad_momentum(momentum, exc, match, backend):
    _call_fails(exc, match, backend, momentum=momentum)


def test_momentum_none_where_unused(backend):
    kw = _args()
    bnsym.batch_norm(training=False, momentum=None, backend=backend, **kw)
    kw.update(running_mean=None, running_var=None)
    bnsym.batch_norm(training=True, momentum=None, backend=backend, **kw)


@pytest.mark.parametrize("name,value", [("training", 1), ("training", "yes"), ("skip_nonfinite", None)])
def test_bad_flags(name, value, backend):
    _call_fails(TypeError, f"{name} must be a bool", backend, **{name: value})


def test_bad_backend():
    _call_fails(ValueError, "backend must be 'c' or 'numpy'", "torch")
    # not a str (an array would compare element by element): a TypeError naming it
    _call_fails(TypeError, "backend must be a str", np.array(["c", "numpy"]))
    _call_fails(TypeError, "backend must be a str", 3)
    with pytest.raises(TypeError, match="backend must be a str"):
        bnsym.batch_norm_backward(np.ones((2, 3)), np.ones((2, 3)), None, None, None,
                                  np.zeros(3), np.ones(3), True, 1e-5, backend=np.array(["c", "d"]))


# --------------------------------------------------------------------------- out=


@pytest.mark.parametrize("make_out,exc,match", [
    (lambda x: np.empty(x.shape, F64), TypeError, "out has dtype float64"),
    (lambda x: np.empty(x.shape[:2], F32), ValueError, "out has shape"),
    (lambda x: np.empty(x.shape, F32, order="F"), ValueError, "out must be C-contiguous"),
    (lambda x: [0.0], TypeError, "out must be a numpy.ndarray"),
    (lambda x: np.ma.masked_array(np.empty_like(x)), TypeError, "out is a numpy.ma.MaskedArray"),
])
def test_bad_out(make_out, exc, match, backend):
    x = _args()["input"]
    _call_fails(exc, match, backend, input=x, out=make_out(x))


def test_readonly_out(backend):
    x = _args()["input"]
    out = np.zeros_like(x)
    out.flags.writeable = False
    _call_fails(ValueError, "out is read-only", backend, input=x, out=out)


def test_out_overlapping_input(backend):
    big = np.random.default_rng(1).standard_normal(4 * C * 5 + 1).astype(F32)
    x = big[:-1].reshape(4, C, 5)
    out = big[1:].reshape(4, C, 5)
    _call_fails(ValueError, "out overlaps input.*may be exactly input", backend, input=x, out=out)


@pytest.mark.parametrize("name", ["weight", "bias", "running_mean", "running_var"])
def test_out_overlapping_parameter(name, backend):
    kw = _args()
    out = np.zeros_like(kw["input"])
    _call_fails(ValueError, f"out overlaps {name}", backend, out=out,
                **{name: out.reshape(-1)[:C]})


def test_channels_last_input_needs_channels_last_out(backend, make_input):
    x = make_input((4, C, 5, 2), F32, "nsc")
    _call_fails(ValueError, "out must be channels-last", backend, input=x,
                out=np.empty(x.shape, F32))


def test_forward_save_outputs_checked(backend):
    kw = _args()
    rm0 = kw["running_mean"].copy()
    with pytest.raises(ValueError, match="save_mean has shape"):
        bnsym.batch_norm_forward(kw["input"], kw["weight"], kw["bias"], kw["running_mean"],
                                 kw["running_var"], True, 0.1, 1e-5, save_mean=np.empty(C + 1, F32),
                                 backend=backend)
    with pytest.raises(ValueError, match="save_invstd overlaps running_mean"):
        bnsym.batch_norm_forward(kw["input"], kw["weight"], kw["bias"], kw["running_mean"],
                                 kw["running_var"], True, 0.1, 1e-5,
                                 save_invstd=kw["running_mean"], backend=backend)
    np.testing.assert_array_equal(kw["running_mean"], rm0)


def test_forward_save_outputs_one_array(backend):
    kw = _args()
    shared = np.zeros(C, F32)
    with pytest.raises(ValueError, match="save_mean overlaps save_invstd|save_invstd overlaps "
                                         "save_mean"):
        bnsym.batch_norm_forward(kw["input"], kw["weight"], kw["bias"], kw["running_mean"],
                                 kw["running_var"], True, 0.1, 1e-5, backend=backend,
                                 save_mean=shared, save_invstd=shared)
    np.testing.assert_array_equal(shared, 0.0)


@pytest.mark.parametrize("view", [False, True])
@pytest.mark.parametrize("save", ["save_mean", "save_invstd"])
@pytest.mark.parametrize("other", ["weight", "bias", "running_mean", "running_var"])
def test_forward_save_output_is_an_operand(save, other, view, backend):
    """A per-channel operand passed as save_mean or save_invstd is refused by name and nothing
    is written: the operand itself (every array owning its memory, where identity alone decides)
    or a view of it (no owner of its own: compared by address)."""
    kw = _args()
    before = _snapshot({k: v for k, v in kw.items() if isinstance(v, np.ndarray)})
    with pytest.raises(ValueError, match=f"{save} overlaps {other}"):
        bnsym.batch_norm_forward(kw["input"], kw["weight"], kw["bias"], kw["running_mean"],
                                 kw["running_var"], True, 0.1, 1e-5, backend=backend,
                                 **{save: kw[other][::-1][::-1] if view else kw[other]})
    _unchanged(before, {k: v for k, v in kw.items() if isinstance(v, np.ndarray)})


# --------------------------------------------------------------------------- backward


def _bwd_args():
    kw = _args(F64)
    x = kw["input"]
    mean = x.mean(axis=(0, 2))
    invstd = 1 / np.sqrt(x.var(axis=(0, 2)) + 1e-5)
    return dict(grad_output=np.ones_like(x), input=x, weight=kw["weight"],
                running_mean=kw["running_mean"], running_var=kw["running_var"],
                save_mean=mean, save_invstd=invstd, training=True, eps=1e-5)


def _bwd_fails(exc, match, backend, **changes):
    kw = _bwd_args()
    kw.update(changes)
    arrays = {k: v for k, v in kw.items() if isinstance(v, np.ndarray)}
    for i, o in enumerate(kw["out"] if isinstance(kw.get("out"), tuple) else ()):
        if isinstance(o, np.ndarray):
            arrays[f"out{i}"] = o
    before = _snapshot(arrays)
    with pytest.raises(exc, match=match):
        bnsym.batch_norm_backward(backend=backend, **kw)
    _unchanged(before, arrays)


@pytest.mark.parametrize("mask,exc,match", [
    ((True, True), ValueError, "output_mask must have 3 entries"),
    ((True, True, True, True), ValueError, "output_mask must have 3 entries"),
    ("yes", TypeError, "output_mask must be a sequence of 3 bools"),
    (None, TypeError, "output_mask must be a sequence of 3 bools"),
    ((1, 0, 1), TypeError, "output_mask\\[0\\] must be a bool"),
    ((True, None, True), TypeError, "output_mask\\[1\\] must be a bool"),
])
def test_bad_output_mask(mask, exc, match, backend):
    _bwd_fails(exc, match, backend, output_mask=mask)


def test_backward_bad_grad_output(backend):
    x = _bwd_args()["input"]
    _bwd_fails(ValueError, "grad_output must have the shape of input", backend,
               grad_output=np.ones(x.shape[:2]))
    _bwd_fails(TypeError, "grad_output has dtype float32 but input has dtype float64", backend,
               grad_output=np.ones(x.shape, F32))
    _bwd_fails(TypeError, "grad_output must be a numpy.ndarray", backend, grad_output=1.0)


def test_backward_requires_saved_or_running_stats(backend):
    _bwd_fails(ValueError, "save_mean and save_invstd .* are required", backend, save_mean=None)
    _bwd_fails(ValueError, "running_mean and running_var must be given", backend,
               training=False, running_var=None)


def test_backward_bad_outs(backend):
    x = _bwd_args()["input"]
    _bwd_fails(TypeError, "out must be a tuple of 3", backend, out=np.empty_like(x))
    _bwd_fails(ValueError, "out\\[1\\] \\(grad_weight\\) is given but output_mask\\[1\\] is False",
               backend, out=(None, np.empty(C), None), output_mask=(True, False, True))
    _bwd_fails(ValueError, "grad_input.*has shape", backend, out=(np.empty(x.shape[:2]), None, None))
    _bwd_fails(TypeError, "grad_weight.*has dtype float32", backend,
               out=(None, np.empty(C, F32), None))
    gw = np.empty(C)
    gw.flags.writeable = False
    _bwd_fails(ValueError, "grad_weight.*is read-only", backend, out=(None, gw, None))


@pytest.mark.parametrize("training,operand", [
    (True, "weight"), (True, "save_mean"), (True, "save_invstd"),
    (False, "weight"), (False, "running_mean"), (False, "running_var")])
@pytest.mark.parametrize("slot,name", [(1, "grad_weight"), (2, "grad_bias")])
def test_backward_out_is_a_per_channel_operand(training, operand, slot, name, backend):
    """A per-channel operand passed as grad_weight or grad_bias (every array owning its memory,
    where identity alone decides) is refused by name, and nothing is written."""
    kw = _bwd_args()
    out = [None, None, None]
    out[slot] = kw[operand]
    _bwd_fails(ValueError, f"{name} overlaps {operand}", backend,
               **dict(kw, training=training, out=tuple(out)))


def test_backward_grad_input_overlapping_a_broadcast_grad_output(backend):
    """grad_output a read-only broadcast view (stride 0) of grad_input's first sample: they
    overlap without being the same array, and grad_input owns its memory; refused."""
    kw = _bwd_args()
    gi = np.zeros_like(kw["input"])
    dy = np.broadcast_to(gi[:1], gi.shape)
    _bwd_fails(ValueError, "grad_input overlaps grad_output", backend, grad_output=dy,
               out=(gi, None, None))


def test_backward_out_overlaps(backend):
    kw = _bwd_args()
    x, w = kw["input"], kw["weight"]
    before = _snapshot({"x": x, "w": w})
    with pytest.raises(ValueError, match="grad_input overlaps input"):
        bnsym.batch_norm_backward(backend=backend, out=(x, None, None), **kw)
    shared = np.zeros(C)
    with pytest.raises(ValueError, match="grad_weight overlaps grad_bias|grad_bias overlaps grad_weight"):
        bnsym.batch_norm_backward(backend=backend, out=(None, shared, shared), **kw)
    with pytest.raises(ValueError, match="grad_bias overlaps weight"):
        bnsym.batch_norm_backward(backend=backend, out=(None, None, w), **kw)
    _unchanged(before, {"x": x, "w": w})
    np.testing.assert_array_equal(shared, 0.0)


@pytest.mark.parametrize("slot,name", [(1, "grad_weight"), (2, "grad_bias")])
@pytest.mark.parametrize("other", ["weight", "save_mean", "save_invstd"])
def test_backward_out_a_view_of_an_operand(slot, name, other, backend):
    # an output that is a view of an operand (it does not own its memory) is compared by address
    kw = _bwd_args()
    before = _snapshot({k: v for k, v in kw.items() if isinstance(v, np.ndarray)})
    out = [None, None, None]
    out[slot] = kw[other][:]
    with pytest.raises(ValueError, match=f"{name} overlaps {other}"):
        bnsym.batch_norm_backward(backend=backend, out=tuple(out), **kw)
    _unchanged(before, {k: v for k, v in kw.items() if isinstance(v, np.ndarray)})


def test_bad_eps_backward(backend):
    _bwd_fails(ValueError, "eps must be a finite number > 0", backend, eps=0.0)


# --------------------------------------------------------------------------- channels-last views
# A channels-last array is a view (a transpose of an NHWC buffer): it does not own its memory.
# Overlap is decided by the arrays' owners (an array, or the base it is a view of) when every
# operand has one, by addresses otherwise; these cases share owners, so addresses decide.


def _nhwc(samples, dtype=F32, seed=5, h=3, w=2):
    """An NHWC buffer of ``samples`` samples and C channels."""
    return np.random.default_rng(seed).standard_normal((samples, h, w, C)).astype(dtype)


def _cl(buf):
    """The channels-last (N, C, H, W) view of an NHWC buffer."""
    return buf.transpose(0, 3, 1, 2)


def test_channels_last_out_overlapping_the_input_view(backend):
    X = _nhwc(5)
    _call_fails(ValueError, "out overlaps input", backend, input=_cl(X[:4]), out=_cl(X[1:5]))


@pytest.mark.parametrize("stat", ["running_mean", "running_var"])
def test_channels_last_running_stat_inside_the_input_buffer(stat, backend):
    X = _nhwc(4)
    _call_fails(ValueError, f"{stat} overlaps input|input overlaps {stat}", backend,
                input=_cl(X), **{stat: X.reshape(-1)[:C]})


@pytest.mark.parametrize("save", ["save_mean", "save_invstd"])
def test_channels_last_save_inside_the_output_buffer(save, backend):
    kw = _args()
    Y = _nhwc(5)
    x = _cl(_nhwc(4, seed=6))
    arrays = {"Y": Y, "x": x, "rm": kw["running_mean"], "rv": kw["running_var"]}
    before = _snapshot(arrays)
    with pytest.raises(ValueError, match=f"{save} overlaps out|out overlaps {save}"):
        bnsym.batch_norm_forward(x, kw["weight"], kw["bias"], kw["running_mean"], kw["running_var"],
                                 True, 0.1, 1e-5, out=_cl(Y[:4]), backend=backend,
                                 **{save: Y.reshape(-1)[:C] if save == "save_mean" else Y[1, 0, 0]})
    _unchanged(before, arrays)


@pytest.mark.parametrize("where", ["in_place", "same_buffer_apart", "other_buffer"])
def test_channels_last_outputs_that_do_not_overlap(where, backend):
    """Allowed: out exactly the input, out beside it in the same buffer, out in another buffer;
    each gives what a fresh output gives, and the running statistics move the same way."""
    kw = _args()
    X = _nhwc(8)
    x = _cl(X[:4])
    ref_stats = kw["running_mean"].copy(), kw["running_var"].copy()
    want = bnsym.batch_norm(x.copy(order="K"), *ref_stats, kw["weight"], kw["bias"], True,
                            backend=backend)
    assert not want.flags.c_contiguous  # the same (channels-last) kernel as the calls below
    out = {"in_place": x, "same_buffer_apart": _cl(X[4:]),
           "other_buffer": _cl(np.empty_like(X[:4]))}[where]
    got = bnsym.batch_norm(x, kw["running_mean"], kw["running_var"], kw["weight"], kw["bias"],
                           True, out=out, backend=backend)
    assert got is out
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(kw["running_mean"], ref_stats[0])
    np.testing.assert_array_equal(kw["running_var"], ref_stats[1])


def _bwd_channels_last(dy_buf, x_buf):
    kw = _bwd_args()
    x, dy = _cl(x_buf), _cl(dy_buf)
    axes = (0, 2, 3)
    kw.update(input=x, grad_output=dy, save_mean=x.mean(axis=axes),
              save_invstd=1 / np.sqrt(x.var(axis=axes) + 1e-5))
    return kw


def test_channels_last_backward_overlaps_and_in_place(backend):
    D = _nhwc(5, F64, seed=7)
    kw = _bwd_channels_last(D[:4], _nhwc(4, F64, seed=8))
    dy = kw["grad_output"]
    before = _snapshot({"D": D, "x": kw["input"]})
    with pytest.raises(ValueError, match="grad_input overlaps grad_output"):
        bnsym.batch_norm_backward(backend=backend, out=(_cl(D[1:5]), None, None), **kw)
    with pytest.raises(ValueError, match="grad_input overlaps input"):
        bnsym.batch_norm_backward(backend=backend, out=(kw["input"], None, None), **kw)
    _unchanged(before, {"D": D, "x": kw["input"]})
    want = bnsym.batch_norm_backward(backend=backend, **dict(kw, grad_output=dy.copy(order="K")))
    gi, gw, gb = bnsym.batch_norm_backward(backend=backend, out=(dy, None, None), **kw)  # in place
    assert gi is dy
    for a, b in zip((gi, gw, gb), want):
        np.testing.assert_array_equal(a, b)


def test_channels_last_distinct_owners_skip_the_address_checks(kernels, monkeypatch):
    """Channels-last views of different buffers (the usual case) are decided by their owners:
    no address comparison runs (they cost more than the kernel on small inputs)."""
    from bnsym import _checks, api

    def boom(*a, **k):
        raise AssertionError("address comparison ran")

    kw = _args()
    x, y = _cl(_nhwc(4)), _cl(np.empty((4, 3, 2, C), F32))
    sm, si = np.empty(C, F32), np.empty(C, F32)
    want = bnsym.batch_norm_forward(x, kw["weight"], kw["bias"], kw["running_mean"].copy(),
                                    kw["running_var"].copy(), True, 0.1, 1e-5)
    monkeypatch.setattr(api, "_overlap", boom)
    monkeypatch.setattr(_checks, "no_overlap", boom)
    got = bnsym.batch_norm_forward(x, kw["weight"], kw["bias"], kw["running_mean"], kw["running_var"],
                                   True, 0.1, 1e-5, out=y, save_mean=sm, save_invstd=si)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    bkw = _bwd_channels_last(_nhwc(4, F64, seed=7), _nhwc(4, F64, seed=8))
    gi = _cl(np.empty((4, 3, 2, C)))
    gw, gb = np.empty(C), np.empty(C)
    assert bnsym.batch_norm_backward(out=(gi, gw, gb), **bkw)[0] is gi
    # and where two operands share a buffer, the addresses are compared
    with pytest.raises(AssertionError, match="address comparison ran"):
        X = _nhwc(8)
        bnsym.batch_norm(_cl(X[:4]), kw["running_mean"], kw["running_var"], training=True,
                         out=_cl(X[4:]))


def test_batch_sliced_from_a_larger_array(kernels, monkeypatch):
    """A contiguous batch sliced from a larger array (a view) is decided by its owner too: out
    beside it in the same array is checked by address (and allowed), out overlapping it refused,
    an unrelated out needs no address comparison."""
    from bnsym import _checks, api

    kw = _args()
    data = np.random.default_rng(9).standard_normal((12, C, 5)).astype(F32)
    x = data[:4]
    assert x.flags.c_contiguous and not x.flags.owndata
    stats = kw["running_mean"].copy(), kw["running_var"].copy()
    want = bnsym.batch_norm(x.copy(), *stats, kw["weight"], kw["bias"], True)
    _call_fails(ValueError, "out overlaps input", "c", input=x, out=data[2:6])
    got = bnsym.batch_norm(x, kw["running_mean"].copy(), kw["running_var"].copy(), kw["weight"],
                           kw["bias"], True, out=data[4:8])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(data[8:], np.random.default_rng(9).standard_normal((12, C, 5))
                                  .astype(F32)[8:])  # nothing written beyond out

    def boom(*a, **k):
        raise AssertionError("address comparison ran")

    monkeypatch.setattr(api, "_overlap", boom)
    monkeypatch.setattr(_checks, "no_overlap", boom)
    rm, rv = kw["running_mean"].copy(), kw["running_var"].copy()
    got = bnsym.batch_norm(x, rm, rv, kw["weight"], kw["bias"], True, out=np.empty_like(x))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(rm, stats[0])  # updated as by the reference call
    np.testing.assert_array_equal(rv, stats[1])


def test_backward_operands_sliced_from_one_array(kernels, monkeypatch):
    """grad_output and input sliced from one array share an owner, but nothing writes them: no
    address comparison; a grad_input in that array is compared by address (refused when it
    overlaps either, allowed beside them)."""
    from bnsym import _checks, api

    data = np.random.default_rng(11).standard_normal((16, C, 5))
    x, dy = data[:4], data[4:8]
    axes = (0, 2)
    kw = dict(save_mean=x.mean(axis=axes), save_invstd=1 / np.sqrt(x.var(axis=axes) + 1e-5),
              weight=np.linspace(0.5, 1.5, C), running_mean=None, running_var=None, training=True,
              eps=1e-5)
    want = bnsym.batch_norm_backward(dy.copy(), x.copy(), **kw)
    before = _snapshot({"data": data})
    for bad, other in ((data[3:7], "input"), (data[5:9], "grad_output")):
        with pytest.raises(ValueError, match=f"grad_input overlaps {other}"):
            bnsym.batch_norm_backward(dy, x, out=(bad, None, None), **kw)
    _unchanged(before, {"data": data})
    got = bnsym.batch_norm_backward(dy, x, out=(data[8:12], None, None), **kw)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)

    def boom(*a, **k):
        raise AssertionError("address comparison ran")

    monkeypatch.setattr(api, "_overlap", boom)
    monkeypatch.setattr(_checks, "no_overlap", boom)
    got = bnsym.batch_norm_backward(dy, x, out=(np.empty_like(x), np.empty(C), np.empty(C)), **kw)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
