"""The NumPy reference checked on its own: hand-made examples, finite differences, PyTorch."""

import numpy as np
import pytest

from bnsym import reference as R

SHAPES = [(2, 1), (5, 3), (3, 2, 7), (2, 3, 4, 5), (2, 2, 3, 2, 3)]


def _torch():
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken install raises OSError, not ImportError
        pytest.skip(f"torch not importable: {type(exc).__name__}")
    return torch


def test_batch_stats_match_numpy_per_channel(make_input):
    x = make_input((4, 3, 5, 6), seed=1, loc=3.0)
    mean, var = R.batch_stats(x)
    flat = np.moveaxis(x, 1, 0).reshape(3, -1)
    np.testing.assert_allclose(mean, flat.mean(axis=1), rtol=1e-14)
    np.testing.assert_allclose(var, flat.var(axis=1), rtol=1e-13)


def test_large_offset_variance_is_stable():
    # E[x^2] - E[x]^2 would lose everything here; two passes keep it.
    x = (1e4 + np.array([[0.0], [1.0], [2.0], [3.0]])).astype(np.float32)
    mean, var = R.batch_stats(x)
    assert mean[0] == pytest.approx(10001.5)
    assert var[0] == pytest.approx(1.25, rel=1e-12)


def test_forward_train_hand_example():
    x = np.array([[1.0, 10.0], [3.0, 30.0]])
    w, b = np.array([2.0, 1.0]), np.array([0.5, -1.0])
    y, mean, var, invstd = R.forward_train(x, w, b, eps=0.0 + 1e-12)
    np.testing.assert_allclose(mean, [2.0, 20.0])
    np.testing.assert_allclose(var, [1.0, 100.0])
    np.testing.assert_allclose(y, [[-1.5, -2.0], [2.5, 0.0]], atol=1e-9)


def test_update_running_hand_example():
    rm, rv = np.array([1.0]), np.array([2.0])
    nm, nv = R.update_running(rm, rv, np.array([3.0]), np.array([4.0]), m=5, momentum=0.25)
    assert nm[0] == pytest.approx(0.75 * 1.0 + 0.25 * 3.0)
    assert nv[0] == pytest.approx(0.75 * 2.0 + 0.25 * 4.0 * 5 / 4)  # unbiased batch variance


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_train_is_normalized(shape, make_input):
    x = make_input(shape, seed=2, loc=-1.0, scale=3.0)
    y, mean, var, invstd = R.forward_train(x, None, None, eps=1e-5)
    ym, yv = R.batch_stats(y)
    np.testing.assert_allclose(ym, 0.0, atol=1e-12)
    np.testing.assert_allclose(yv, var / (var + 1e-5), rtol=1e-12)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(var + 1e-5), rtol=1e-15)


def test_invstd_zero_when_var_and_eps_zero():
    assert R.invstd_of(np.array([0.0]), 0.0)[0] == 0.0


def _fd(f, x, direction, h=1e-6):
    return (f(x + h * direction) - f(x - h * direction)) / (2 * h)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_backward_train_matches_finite_differences(shape, affine, rng):
    x = rng.standard_normal(shape)
    C = shape[1]
    w = rng.standard_normal(C) if affine else None
    b = rng.standard_normal(C) if affine else None
    r = rng.standard_normal(shape)
    eps = 1e-3

    def loss(x_, w_=w, b_=b):
        return float(np.sum(r * R.forward_train(x_, w_, b_, eps)[0]))

    _, mean, var, invstd = R.forward_train(x, w, b, eps)
    dx, dw, db = R.backward_train(r, x, w, mean, invstd)
    d = rng.standard_normal(shape)
    assert np.sum(dx * d) == pytest.approx(_fd(loss, x, d), rel=1e-6, abs=1e-8)
    if affine:
        dc = rng.standard_normal(C)
        assert np.sum(dw * dc) == pytest.approx(_fd(lambda w_: loss(x, w_, b), w, dc), rel=1e-7, abs=1e-8)
        assert np.sum(db * dc) == pytest.approx(_fd(lambda b_: loss(x, w, b_), b, dc), rel=1e-7, abs=1e-8)


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_eval_matches_finite_differences(shape, rng):
    x = rng.standard_normal(shape)
    C = shape[1]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.random(C) + 0.5
    r = rng.standard_normal(shape)

    def loss(x_, w_=w, b_=b):
        return float(np.sum(r * R.forward_eval(x_, w_, b_, rm, rv, 1e-5)))

    dx, dw, db = R.backward_eval(r, x, w, rm, rv, 1e-5)
    d, dc = rng.standard_normal(shape), rng.standard_normal(C)
    assert np.sum(dx * d) == pytest.approx(_fd(loss, x, d), rel=1e-7)
    assert np.sum(dw * dc) == pytest.approx(_fd(lambda w_: loss(x, w_, b), w, dc), rel=1e-7)
    assert np.sum(db * dc) == pytest.approx(_fd(lambda b_: loss(x, w, b_), b, dc), rel=1e-7)


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (2, 3, 4, 4)])
def test_reference_matches_torch(shape, rng):
    torch = _torch()
    x = rng.standard_normal(shape)
    C = shape[1]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.random(C) + 0.5
    tx = torch.tensor(x, requires_grad=True)
    tw, tb = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    ty = torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, True, 0.1, 1e-5)
    r = rng.standard_normal(shape)
    ty.backward(torch.tensor(r))
    y, mean, var, invstd = R.forward_train(x, w, b, 1e-5)
    nm, nv = R.update_running(rm, rv, mean, var, x.size // C, 0.1)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(nm, trm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(nv, trv.numpy(), rtol=1e-12)
    dx, dw, db = R.backward_train(r, x, w, mean, invstd)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-9, atol=1e-12)
