"""PReLU, Swish and APLU against float64 formulas, and the activation registry."""

import numpy as np
import pytest
import torch

from onmt_lma.model.activations import activation_names, APLU, build_activation, PReLU, register_activation, Swish
from onmt_lma.model.lma import LMA

UNITS = 12


def test_prelu_shape_init_and_formula():
    module = PReLU(UNITS)
    assert module.weight.shape == (UNITS,)
    assert torch.all(module.weight == 0.25)
    with torch.no_grad():
        module.weight.uniform_(-1, 1)
    x = torch.randn(3, 5, UNITS)
    a = module.weight.detach().double().numpy()
    xd = x.double().numpy()
    expected = np.where(xd >= 0, xd, a * xd)  # slope per unit, on the last dimension
    np.testing.assert_allclose(module(x).detach().numpy(), expected, rtol=1e-6, atol=1e-6)


def test_swish_shape_init_and_formula():
    module = Swish(UNITS)
    assert module.beta.shape == (UNITS,)
    x = torch.randn(4, UNITS)
    torch.testing.assert_close(module(x), torch.nn.functional.silu(x))  # b = 1 at start
    with torch.no_grad():
        module.beta.uniform_(0, 3)
    b = module.beta.detach().double().numpy()
    xd = x.double().numpy()
    expected = xd / (1 + np.exp(-b * xd))
    np.testing.assert_allclose(module(x).detach().numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("segments", [2, 4, 8])
def test_aplu_shape_and_formula(segments):
    torch.manual_seed(0)
    module = APLU(UNITS, segments)
    hinges = segments - 2
    assert module.hinge_slope.shape == (hinges, UNITS)
    assert module.hinge_point.shape == (hinges, UNITS)
    assert (module.hinge_slope.abs() <= APLU.SLOPE_INIT).all()
    x = torch.randn(2, 7, UNITS) * 2
    xd = x.double().numpy()
    a = module.hinge_slope.detach().double().numpy()
    c = module.hinge_point.detach().double().numpy()
    expected = np.maximum(xd, 0)
    for s in range(hinges):
        expected = expected + a[s] * np.maximum(0, -xd + c[s])
    np.testing.assert_allclose(module(x).detach().numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("segments", [4, 8])
def test_aplu_k_has_k_linear_pieces_per_unit(segments):
    torch.manual_seed(1)
    module = APLU(1, segments).double()
    with torch.no_grad():
        module.hinge_slope.copy_(torch.linspace(0.3, 0.9, segments - 2)[:, None])
        module.hinge_point.copy_(torch.linspace(-2.5, -0.5, segments - 2)[:, None])
    grid = torch.linspace(-4, 4, 80001, dtype=torch.double)[:, None].requires_grad_()
    (slopes,) = torch.autograd.grad(module(grid).sum(), grid)  # exact piecewise slope
    kinks = (torch.diff(slopes.squeeze()).abs() > 1e-9).sum().item()
    assert kinks == segments - 1  # k - 1 breakpoints: k pieces


def test_registry_builds_fresh_modules_for_every_name():
    names = activation_names()
    assert {"relu", "gelu", "silu", "lma", "prelu", "swish", "aplu"} <= set(names)
    x = torch.randn(3, UNITS)
    for name in names:
        first = build_activation(name, units=UNITS, segments=6)
        second = build_activation(name, units=UNITS, segments=6)
        assert isinstance(first, torch.nn.Module) and first is not second
        assert first(x).shape == x.shape
        for p, q in zip(first.parameters(), second.parameters()):
            assert p is not q and p.data_ptr() != q.data_ptr()
    assert isinstance(build_activation("lma", segments=6, momentum=0.5), LMA)
    lma = build_activation("lma", segments=6, momentum=0.5)
    assert lma.segments == 6 and lma.momentum == 0.5
    assert build_activation("aplu", units=UNITS, segments=6).hinge_slope.shape == (4, UNITS)
    torch.testing.assert_close(build_activation("relu")(x), torch.relu(x))
    torch.testing.assert_close(build_activation("gelu")(x), torch.nn.functional.gelu(x))


def test_registry_errors():
    with pytest.raises(ValueError, match=r"unknown activation 'lmaa'; valid names: .*lma.*relu"):
        build_activation("lmaa")
    with pytest.raises(ValueError, match="units"):
        build_activation("prelu")
    with pytest.raises(ValueError, match="already registered"):
        register_activation("lma")(lambda units, segments, momentum: LMA())
    with pytest.raises(ValueError, match="segments"):
        build_activation("aplu", units=4, segments=1)
