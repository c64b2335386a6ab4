"""Feed-forward activations: the baselines LMA is compared with, and the one list of activations.

References:
  * Xu, Ke, Zhang, Bian, Liu. Light Multi-segment Activation for Model
    Compression. AAAI 2020 (arXiv 1907.06870) -- LMA.
  * He et al. 2015 -- PReLU; Ramachandran et al. 2017 -- Swish;
    Agostinelli et al. 2014 -- APLU.

Every activation here is an ``nn.Module`` built fresh for each feed-forward
block by :func:`build_activation`; the per-unit baselines act on the last
dimension (the feed-forward inner size), as in ``(batch, time, d_ff)``.

LMA itself is :mod:`onmt_lma.model.lma`.
"""

from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from onmt_lma.model.lma import DEFAULT_MOMENTUM, DEFAULT_SEGMENTS, LMA


class PReLU(nn.Module):
    """Per-unit parametric ReLU on the last dimension, slope 0.25 at start.

    ``torch.nn.PReLU`` puts channels on dimension 1; a Transformer's
    feed-forward units are on the last one.
    """

    def __init__(self, units: int, init: float = 0.25):
        super().__init__()
        self.init = init
        self.weight = nn.Parameter(torch.empty(units))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.constant_(self.weight, self.init)

    def forward(self, x):
        return torch.where(x >= 0, x, self.weight * x)

    def extra_repr(self):
        return f"units={self.weight.numel()}"


class Swish(nn.Module):
    """``x * sigmoid(b * x)`` with a trainable per-unit ``b``, 1 at start."""

    def __init__(self, units: int):
        super().__init__()
        self.beta = nn.Parameter(torch.empty(units))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.ones_(self.beta)

    def forward(self, x):
        return x * torch.sigmoid(self.beta * x)

    def extra_repr(self):
        return f"units={self.beta.numel()}"


class APLU(nn.Module):
    """Adaptive piecewise linear unit (Agostinelli et al. 2014), per unit.

    ``h(x) = relu(x) + sum_s a_s * max(0, -x + c_s)`` with ``segments - 2``
    hinges, so that APLU-k has as many linear pieces (k) as LMA-k.  Slopes
    ``a_s`` start uniform in ``[-SLOPE_INIT, SLOPE_INIT]``, hinge points ``c_s``
    normal with standard deviation ``HINGE_INIT_STD``.  Memory grows with k:
    autograd keeps one input-sized tensor per hinge.
    """

    SLOPE_INIT = 0.2
    HINGE_INIT_STD = 0.5

    def __init__(self, units: int, segments: int = DEFAULT_SEGMENTS):
        super().__init__()
        if isinstance(segments, bool) or not isinstance(segments, int) or segments < 2:
            raise ValueError(f"APLU: segments must be an integer >= 2, got {segments!r}")
        self.segments = segments
        self.hinge_slope = nn.Parameter(torch.empty(segments - 2, units))
        self.hinge_point = nn.Parameter(torch.empty(segments - 2, units))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.uniform_(self.hinge_slope, -self.SLOPE_INIT, self.SLOPE_INIT)
        nn.init.normal_(self.hinge_point, 0.0, self.HINGE_INIT_STD)

    def forward(self, x):
        out = F.relu(x)
        for slope, point in zip(self.hinge_slope, self.hinge_point):
            out = out + slope * F.relu(point - x)
        return out

    def extra_repr(self):
        return f"units={self.hinge_slope.shape[1]}, segments={self.segments}"


# --------------------------------------------------------------------------- #
# Registry
# --------------------------------------------------------------------------- #
# name -> factory(units, segments, momentum) returning a fresh module, in registration order: the one
# list of activations (the plugin, the report's columns, the scripts' usage and the benchmarks read it)
_ACTIVATIONS: Dict[str, Callable[..., nn.Module]] = {}


# called with each name registered from now on (the installed plugin exposes it to OpenNMT-py)
_ON_REGISTER: List[Callable[[str], None]] = []


def register_activation(name: str):
    """Decorator registering ``factory(units, segments, momentum) -> nn.Module`` under ``name``.

    Registered after :func:`onmt_lma.install` too, the name becomes a choice of
    ``-pos_ffn_activation_fn`` at once, built per feed-forward block.
    """

    def decorator(factory):
        if name in _ACTIVATIONS:
            raise ValueError(f"activation {name!r} is already registered")
        if not callable(factory):
            raise TypeError(f"activation {name!r}: factory must be callable")
        _ACTIVATIONS[name] = factory
        for listener in _ON_REGISTER:
            listener(name)
        return factory

    return decorator


def on_register(listener):
    """Call ``listener(name)`` for every activation registered so far and from now on."""
    _ON_REGISTER.append(listener)
    for name in _ACTIVATIONS:
        listener(name)


def activation_names():
    """Registered names, sorted."""
    return sorted(_ACTIVATIONS)


def registered_activations():
    """Registered names in registration order: the paper's Table 3 order first (ReLU, PReLU, Swish, APLU, LMA)."""
    return list(_ACTIVATIONS)


def _need_units(name, units):
    if units is None or units < 1:
        raise ValueError(f"activation {name!r} is per unit: pass units (the feed-forward size)")
    return units


register_activation("relu")(lambda units, segments, momentum: nn.ReLU())
register_activation("prelu")(lambda units, segments, momentum: PReLU(_need_units("prelu", units)))
register_activation("swish")(lambda units, segments, momentum: Swish(_need_units("swish", units)))
register_activation("aplu")(lambda units, segments, momentum: APLU(_need_units("aplu", units), segments))
register_activation("lma")(
    lambda units, segments, momentum, continuous=False: LMA(segments, momentum, continuous)
)
register_activation("gelu")(lambda units, segments, momentum: nn.GELU())
register_activation("silu")(lambda units, segments, momentum: nn.SiLU())


def build_activation(
    name: str,
    units: Optional[int] = None,
    segments: int = DEFAULT_SEGMENTS,
    momentum: float = DEFAULT_MOMENTUM,
    continuous: bool = False,
) -> nn.Module:
    """A fresh activation module for one feed-forward block.

    Args:
        name: one of :func:`activation_names`.
        units: feed-forward inner size (needed by the per-unit prelu, swish, aplu).
        segments: segments of LMA and APLU.
        momentum: running-statistics momentum of LMA.
        continuous: LMA's continuous variant (only for ``lma``).
    """
    try:
        factory = _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; valid names: {', '.join(activation_names())}"
        ) from None
    if continuous:
        if name != "lma":
            raise ValueError(f"continuous applies to lma only, not {name!r}")
        return factory(units, segments, momentum, continuous=True)
    return factory(units, segments, momentum)
