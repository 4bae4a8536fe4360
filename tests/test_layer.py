"""bnsym.BatchNorm: modes, running statistics, momentum=None, gradients, state_dict, buffers."""

import warnings

import numpy as np
import pytest

import bnsym
from bnsym import api
from bnsym import reference as R

F32, F64 = np.float32, np.float64


@pytest.fixture(params=["c", "numpy"])
def backend(request):
    if request.param == "c":
        request.getfixturevalue("kernels")
    return request.param


@pytest.mark.parametrize("shape", [(8, 4), (4, 4, 7), (3, 4, 5, 6), (2, 4, 3, 2, 3)])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_train_then_eval(shape, dtype, backend, make_input, assert_close):
    bn = bnsym.BatchNorm(4, dtype=dtype, backend=backend)
    assert bn.training
    rm, rv = np.zeros(4), np.ones(4)
    for step in range(3):
        x = make_input(shape, dtype, seed=step, loc=step, scale=1 + step)
        y = bn(x)
        yr, mean, var, _ = R.forward_train(x)
        assert_close(y, yr, dtype, "train y")
        rm, rv = R.update_running(rm, rv, mean, var, x.size // 4, 0.1)
        assert_close(bn.running_mean, rm, dtype, "running_mean")
        assert_close(bn.running_var, rv, dtype, "running_var")
        assert bn.num_batches_tracked == step + 1
    assert bn.eval() is bn and not bn.training
    y = bn(x)
    assert_close(y, R.forward_eval(x, None, None, bn.running_mean, bn.running_var), dtype, "eval y")
    assert bn.num_batches_tracked == 3
    bn.train()
    assert bn.training


def test_momentum_none_is_cumulative_average(backend, make_input, assert_close):
    bn = bnsym.BatchNorm(3, momentum=None, dtype=F64, backend=backend)
    means, unbiased = [], []
    for step in range(4):
        x = make_input((5, 3, 4), F64, seed=10 + step, loc=step)
        bn(x)
        m, v = R.batch_stats(x)
        means.append(m)
        unbiased.append(v * 20 / 19)
    # Cumulative average of the batch statistics (initial values weigh 0 after the first step).
    assert_close(bn.running_mean, np.mean(means, axis=0), F64, "running_mean")
    assert_close(bn.running_var, np.mean(unbiased, axis=0), F64, "running_var")
    assert bn.num_batches_tracked == 4


@pytest.mark.parametrize("layout", ["ncs", "nsc"])
@pytest.mark.parametrize("train", [True, False])
def test_backward(layout, train, backend, make_input, assert_close):
    bn = bnsym.BatchNorm(3, dtype=F64, backend=backend)
    bn.weight[...] = [1.5, -0.5, 2.0]
    bn.bias[...] = [0.1, 0.2, 0.3]
    bn.running_mean[...] = [0.5, -0.5, 0.0]
    bn.running_var[...] = [2.0, 0.5, 1.0]
    bn.train(train)
    rm0, rv0 = bn.running_mean.copy(), bn.running_var.copy()
    x = make_input((4, 3, 5, 2), F64, layout, seed=1)
    dy = make_input((4, 3, 5, 2), F64, layout, seed=2)
    bn(x)
    dx = bn.backward(dy)
    if train:
        _, mean, _, invstd = R.forward_train(x, bn.weight, bn.bias)
        ri, rw, rb = R.backward_train(dy, x, bn.weight, mean, invstd)
    else:
        ri, rw, rb = R.backward_eval(dy, x, bn.weight, rm0, rv0, 1e-5)
    assert_close(dx, ri, F64, "dx")
    assert_close(bn.grad_weight, rw, F64, "grad_weight")
    assert_close(bn.grad_bias, rb, F64, "grad_bias")
    # Gradients are overwritten, not accumulated.
    bn(x)
    bn.backward(dy)
    assert_close(bn.grad_weight, rw, F64, "grad_weight again")
    with pytest.raises(RuntimeError, match="forward\\(\\) first"):
        bn.backward(dy)


def test_no_affine_no_tracking(backend, make_input, assert_close):
    bn = bnsym.BatchNorm(3, affine=False, track_running_stats=False, backend=backend)
    assert bn.weight is None and bn.running_mean is None and bn.num_batches_tracked is None
    x = make_input((4, 3, 5), F32)
    bn.eval()  # without running statistics, evaluation uses the batch statistics (PyTorch)
    assert_close(bn(x), R.forward_train(x)[0], F32, "y")
    dx = bn.backward(np.ones_like(x))
    assert bn.grad_weight is None and bn.grad_bias is None
    assert dx.shape == x.shape
    assert bn.state_dict() == {}
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(np.ones((1, 3), F32))


def test_state_dict_round_trip(backend, make_input):
    bn = bnsym.BatchNorm(3, backend=backend)
    for s in range(3):
        bn(make_input((4, 3, 2), F32, seed=s))
    bn.weight[...] = [1, 2, 3]
    sd = bn.state_dict()
    assert list(sd) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert sd["num_batches_tracked"].dtype == np.int64 and int(sd["num_batches_tracked"]) == 3
    sd["weight"][0] = 99  # a copy
    assert bn.weight[0] == 1
    sd["weight"][0] = 1
    other = bnsym.BatchNorm(3, backend=backend)
    other.load_state_dict(sd)
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)
    x = make_input((4, 3, 2), F32, seed=9)
    bn.eval(), other.eval()
    np.testing.assert_array_equal(bn(x), other(x))


def test_load_state_dict_validates_before_changing(backend):
    bn = bnsym.BatchNorm(3, backend=backend)
    before = bn.state_dict()
    bad = dict(before, running_var=np.ones(4, F32))
    with pytest.raises(ValueError, match="running_var.*shape"):
        bn.load_state_dict(bad)
    with pytest.raises(KeyError, match="unexpected keys \\['extra'\\]"):
        bn.load_state_dict(dict(before, extra=np.zeros(3)))
    with pytest.raises(KeyError, match="missing keys \\['bias'\\]"):
        bn.load_state_dict({k: v for k, v in before.items() if k != "bias"})
    for count in (np.inf, np.nan, 2.5, -1):  # named, not a bare OverflowError from int(inf)
        with pytest.raises(ValueError, match="num_batches_tracked"):
            bn.load_state_dict(dict(before, num_batches_tracked=np.array(count)))
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    bn.load_state_dict({k: v for k, v in before.items() if k != "num_batches_tracked"})


def test_load_state_dict_from_torch(kernels):
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"torch not importable: {type(exc).__name__}")
    tbn = torch.nn.BatchNorm2d(3)
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(F32)
    for _ in range(2):
        ty = tbn(torch.tensor(x))
    bn = bnsym.BatchNorm(3)
    bn.load_state_dict(tbn.state_dict())
    assert bn.num_batches_tracked == 2
    bn.eval(), tbn.eval()
    np.testing.assert_allclose(bn(x), tbn(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-5)
    # and a bnsym training step matches torch's
    bn.train(), tbn.train()
    y = bn(x)
    ty = tbn(torch.tensor(x))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.running_var, tbn.running_var.numpy(), rtol=1e-6)
    assert bn.num_batches_tracked == int(tbn.num_batches_tracked)


def test_skip_nonfinite_layer(backend, make_input):
    bn = bnsym.BatchNorm(3, skip_nonfinite=True, backend=backend)
    x = make_input((4, 3, 5), F32)
    bad = x.copy()
    bad[0, 1, 0] = np.inf
    with pytest.warns(api.NonFiniteBatchWarning):
        bn(bad)
    assert bn.last_batch_skipped
    assert bn.num_batches_tracked == 0
    np.testing.assert_array_equal(bn.running_mean, 0)
    np.testing.assert_array_equal(bn.running_var, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bn(x)
    assert not bn.last_batch_skipped and bn.num_batches_tracked == 1


def test_bad_input_changes_nothing(backend, make_input):
    bn = bnsym.BatchNorm(3, backend=backend)
    bn(make_input((4, 3), F32))
    before = bn.state_dict()
    for bad, exc in [(make_input((4, 5), F32), ValueError), (make_input((4, 3), F64), TypeError),
                     (np.ones((1, 3), F32), ValueError), (np.ones(3, F32), ValueError),
                     (np.ones((2, 3, 1, 1, 1, 2), F32), ValueError), ([1, 2, 3], TypeError)]:
        with pytest.raises(exc):
            bn(bad)
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_constructor_validation():
    with pytest.raises(ValueError):
        bnsym.BatchNorm(0)
    with pytest.raises(TypeError):
        bnsym.BatchNorm(3.0)
    with pytest.raises(ValueError):
        bnsym.BatchNorm(3, eps=0)
    with pytest.raises(ValueError):
        bnsym.BatchNorm(3, momentum=2)
    with pytest.raises(TypeError):
        bnsym.BatchNorm(3, dtype=np.int32)
    with pytest.raises(ValueError):
        bnsym.BatchNorm(3, backend="cuda")
    assert "BatchNorm(3, eps=1e-05" in repr(bnsym.BatchNorm(3))


@pytest.mark.parametrize("layout", ["ncs", "nsc"])
def test_reuse_buffers(layout, backend, make_input, assert_close):
    bn = bnsym.BatchNorm(3, reuse_buffers=True, backend=backend)
    ref = bnsym.BatchNorm(3, backend=backend)
    x1 = make_input((4, 3, 5, 2), F32, layout, seed=1)
    x2 = make_input((4, 3, 5, 2), F32, layout, seed=2)
    y1 = bn(x1)
    dx1 = bn.backward(x1)
    gw1 = bn.grad_weight
    y2 = bn(x2)
    dx2 = bn.backward(x2)
    assert y2 is y1 and dx2 is dx1 and bn.grad_weight is gw1  # the same arrays, overwritten
    ref(x1), ref.backward(x1)
    assert_close(y2, ref(x2), F32, "y")
    assert_close(dx2, ref.backward(x2), F32, "dx")
    # Applied to its own output: no aliasing of the saved input.
    y3 = bn(y2)
    assert y3 is not y2
    x3 = y2.copy()
    assert_close(bn.backward(x3), (ref(x3), ref.backward(x3))[1], F32, "own output")
    # A different shape gets a new buffer.
    assert bn(make_input((2, 3, 5, 2), F32, layout)).shape == (2, 3, 5, 2)


def test_parameters_reset(backend, make_input):
    bn = bnsym.BatchNorm(3, backend=backend)
    assert len(bn.parameters()) == 2
    bn(make_input((4, 3), F32))
    bn.weight[...] = 5
    bn.reset_parameters()
    np.testing.assert_array_equal(bn.weight, 1)
    np.testing.assert_array_equal(bn.running_mean, 0)
    assert bn.num_batches_tracked == 0


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("track", [True, False])
def test_layer_matches_torch_over_steps(momentum, track, kernels):
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"torch not importable: {type(exc).__name__}")
    rng = np.random.default_rng(3)
    tbn = torch.nn.BatchNorm2d(3, momentum=momentum, track_running_stats=track).double()
    bn = bnsym.BatchNorm(3, momentum=momentum, track_running_stats=track, dtype=F64)
    with torch.no_grad():
        tbn.weight.copy_(torch.tensor([1.5, 0.5, -1.0], dtype=torch.float64))
        tbn.bias.copy_(torch.tensor([0.1, 0.0, 0.3], dtype=torch.float64))
    bn.weight[...] = [1.5, 0.5, -1.0]
    bn.bias[...] = [0.1, 0.0, 0.3]
    for step in range(4):
        x = rng.standard_normal((4, 3, 3, 2)) * (step + 1) + step
        dy = rng.standard_normal(x.shape)
        tx = torch.tensor(x, requires_grad=True)
        tbn.zero_grad()
        ty = tbn(tx)
        ty.backward(torch.tensor(dy))
        y = bn(x)
        dx = bn.backward(dy)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(bn.grad_weight, tbn.weight.grad.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(bn.grad_bias, tbn.bias.grad.numpy(), rtol=1e-9, atol=1e-12)
        if track:
            np.testing.assert_allclose(bn.running_mean, tbn.running_mean.numpy(), rtol=1e-12)
            np.testing.assert_allclose(bn.running_var, tbn.running_var.numpy(), rtol=1e-12)
            assert bn.num_batches_tracked == int(tbn.num_batches_tracked)
    bn.eval(), tbn.eval()
    x = rng.standard_normal((2, 3, 3, 2))
    np.testing.assert_allclose(bn(x), tbn(torch.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype,hint", [
    (np.float64, "create the layer with dtype=numpy.float64"),
    (np.float16, "convert it with x.astype\\(numpy.float32\\)"),
    (">f4", "non-native byte order.*convert it with x.astype\\(numpy.float32\\)"),
])
def test_input_dtype_error_hints_what_works(dtype, hint):
    """The hint names a layer dtype only where the layer takes it (float16 and big-endian input
    once suggested ``dtype=numpy.float16`` / ``dtype=numpy.>f4``)."""
    with pytest.raises(TypeError, match=hint):
        bnsym.BatchNorm(3)(np.zeros((2, 3), dtype))
