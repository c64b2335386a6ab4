"""Feed-forward activations: LMA and the baselines it is compared with.

References:
  * Xu, Ke, Zhang, Bian, Liu. Light Multi-segment Activation for Model
    Compression. AAAI 2020 (arXiv 1907.06870) -- LMA.
  * He et al. 2015 -- PReLU; Ramachandran et al. 2017 -- Swish;
    Agostinelli et al. 2014 -- APLU.

Every activation here is an ``nn.Module`` built fresh for each feed-forward
block by :func:`build_activation`; the per-unit baselines act on the last
dimension (the feed-forward inner size), as in ``(batch, time, d_ff)``.
"""

from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from onmt_lma.kernels import cpu_kernel

__all__ = [
    "LMA",
    "PReLU",
    "Swish",
    "APLU",
    "lma",
    "segment_index",
    "continuous_intercepts",
    "register_activation",
    "build_activation",
    "activation_names",
    "registered_activations",
    "DEFAULT_SEGMENTS",
    "DEFAULT_MOMENTUM",
]

#: the paper's defaults: k = 8 segments, running statistics with momentum 0.99 (Xu et al. 2020, method section)
DEFAULT_SEGMENTS = 8
DEFAULT_MOMENTUM = 0.99


# --------------------------------------------------------------------------- #
# LMA: the math as pure functions
# --------------------------------------------------------------------------- #
def segment_index(x, mean, std, segments):
    """Segment of every element of ``x`` (int64, same shape), the paper's batch segmentation (Xu et al. 2020, method section).

    ``j = clamp(floor((x - b_0) / (6 std / k)), 0, k - 1)`` with
    ``b_0 = mean - 3 std``, written as ``(x - mean) / width + k / 2`` so that a
    zero spread (constant input) lands in the middle segment instead of
    dividing zero by zero.
    """
    width = std.clamp_min(torch.finfo(std.dtype).tiny) * (6.0 / segments)
    position = (x - mean) / width + segments / 2
    return position.floor_().clamp_(0, segments - 1).long()


def continuous_intercepts(alpha, mean, std):
    """Intercepts that make ``alpha[j] * x + beta[j]`` continuous at every cut point.

    The variant ``-lma_continuous``: with cut points ``b_j = b_0 + j * 6 std / k``
    (``b_0 = mean - 3 std``, as in the paper), the lines of segments
    ``j - 1`` and ``j`` meet at ``b_j`` when
    ``beta[j] = beta[j-1] + (alpha[j-1] - alpha[j]) * b_j``; ``beta[0] = 0``
    anchors the first line at the origin.  At LMA's start (slopes 0 then 1)
    this is ``relu(x - mean)``.  Differentiable in ``alpha``; ``mean`` and
    ``std`` are constants, as in the paper.
    """
    k = alpha.numel()
    dtype = torch.promote_types(alpha.dtype, mean.dtype)
    width = std.reshape(()).to(dtype) * (6.0 / k)
    cuts = mean.reshape(()).to(dtype) - 3 * std.reshape(()).to(dtype) + width * torch.arange(
        1, k, dtype=dtype, device=alpha.device)  # b_1 .. b_{k-1}
    steps = (alpha[:-1] - alpha[1:]).to(dtype) * cuts
    return torch.cat([steps.new_zeros(1), torch.cumsum(steps, 0)]).to(alpha.dtype)


def _compute_dtype(x, alpha):
    """float32 for half inputs, float64 when anything is float64."""
    return torch.promote_types(torch.promote_types(x.dtype, alpha.dtype), torch.float32)


def _lma_forward(x, alpha, beta, mean, std, kernel):
    """``alpha[j] * x + beta[j]`` without autograd: fused kernel, else PyTorch ops."""
    if kernel is not None:  # one pass, no temporaries
        return kernel.forward(x, alpha, beta, mean, std)
    dtype = _compute_dtype(x, alpha)
    xc = x.to(dtype)
    j = segment_index(xc, mean.to(dtype), std.to(dtype), alpha.numel())
    return (alpha.to(dtype)[j] * xc + beta.to(dtype)[j]).to(x.dtype)


class _LMAFunction(torch.autograd.Function):
    """``h(x) = alpha[j] * x + beta[j]``, the paper's per-segment line (Xu et al. 2020, method section).

    Keeps only the input for backward (the segment ids are recomputed from it
    and the two statistics), so training stores one tensor of the input's size,
    as ReLU does.  ``mean`` and ``std`` are constants for the gradient.  On CPU
    the fused kernel of :mod:`onmt_lma.kernels` runs when available; otherwise
    (and on other devices) the same math in PyTorch operations.
    """

    @staticmethod
    def forward(ctx, x, alpha, beta, mean, std):
        ctx.save_for_backward(x, alpha, mean, std)
        ctx.kernel = cpu_kernel() if x.device.type == "cpu" else None
        return _lma_forward(x, alpha, beta, mean, std, ctx.kernel)

    @staticmethod
    def backward(ctx, grad_out):
        x, alpha, mean, std = ctx.saved_tensors
        if ctx.kernel is not None:
            need_x, need_alpha, need_beta = ctx.needs_input_grad[:3]
            grad_x, grad_alpha, grad_beta = ctx.kernel.backward(
                grad_out, x, alpha, mean, std, need_x, need_alpha or need_beta,
            )
            return (
                grad_x if need_x else None,
                grad_alpha if need_alpha else None,
                grad_beta if need_beta else None,
                None,
                None,
            )
        dtype = _compute_dtype(x, alpha)
        xc = x.to(dtype)
        grad = grad_out.to(dtype)
        j = segment_index(xc, mean.to(dtype), std.to(dtype), alpha.numel())
        grad_x = grad_alpha = grad_beta = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad * alpha.to(dtype)[j]).to(x.dtype)
        flat_j = j.reshape(-1)
        if ctx.needs_input_grad[1]:
            grad_alpha = torch.zeros(alpha.shape, dtype=dtype, device=alpha.device)
            grad_alpha.index_add_(0, flat_j, (grad * xc).reshape(-1))
            grad_alpha = grad_alpha.to(alpha.dtype)
        if ctx.needs_input_grad[2]:
            grad_beta = torch.zeros(alpha.shape, dtype=dtype, device=alpha.device)
            grad_beta.index_add_(0, flat_j, grad.reshape(-1))
            grad_beta = grad_beta.to(alpha.dtype)
        return grad_x, grad_alpha, grad_beta, None, None


def batch_statistics(x):
    """Mean and population standard deviation over all elements (0-dim tensors).

    float32 (float64 for float64 input); on CPU one fused pass when the kernel
    is available, which is ~10x faster than ``torch.std_mean``.
    """
    stat_dtype = torch.promote_types(x.dtype, torch.float32)
    kernel = cpu_kernel() if x.device.type == "cpu" else None
    if kernel is not None:
        mean, std = kernel.stats(x)
        return torch.tensor(mean, dtype=stat_dtype), torch.tensor(std, dtype=stat_dtype)
    std, mean = torch.std_mean(x.to(stat_dtype), correction=0)
    return mean, std


def lma(x, alpha, beta, mean, std):
    """Functional LMA with given statistics (0-dim or 1-element tensors)."""
    if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad or beta.requires_grad):
        return _LMAFunction.apply(x, alpha, beta, mean.detach().reshape(()), std.detach().reshape(()))
    # inference (e.g. each decoding step): no autograd bookkeeping, and on CPU
    # straight into the kernel, which reads the one-element statistics itself
    kernel = cpu_kernel() if x.is_cpu else None
    if kernel is not None:
        return kernel.forward(x, alpha, beta, mean, std)
    return _lma_forward(x, alpha, beta, mean.reshape(()), std.reshape(()), None)


# --------------------------------------------------------------------------- #
# Modules
# --------------------------------------------------------------------------- #
class LMA(nn.Module):
    """Light Multi-segment Activation with ``segments`` learnable lines.

    Args:
        segments: number of segments ``k`` (>= 2; the paper's default is 8).
        momentum: weight of the old value in the running statistics,
            ``running = momentum * running + (1 - momentum) * batch``, in [0, 1).
        continuous: not the paper's LMA but a variant: only the slopes learn,
            and the intercepts follow from them (:func:`continuous_intercepts`)
            so that the function has no jump at any cut point.

    Parameters ``alpha`` (slopes) and ``beta`` (intercepts), each ``(k,)``, are
    shared by every unit of the layer and start as ReLU: slope 0 on the left
    ``k // 2`` segments, 1 on the rest, intercept 0 (the paper's initialization as ReLU, Xu et al. 2020, method section).
    In training mode the cut points come from the mean and (population)
    standard deviation of all elements of the input; in evaluation mode from
    the buffers ``running_mean`` and ``running_std`` (the paper's test-time statistics, Xu et al. 2020).  The
    buffers have shape ``(1,)`` because OpenNMT-py's checkpoint loader slices
    every tensor along dimension 0.  A continuous LMA has no ``beta`` parameter.
    """

    def __init__(self, segments: int = DEFAULT_SEGMENTS, momentum: float = DEFAULT_MOMENTUM, continuous: bool = False):
        super().__init__()
        if isinstance(segments, bool) or not isinstance(segments, int) or segments < 2:
            raise ValueError(f"LMA: segments must be an integer >= 2, got {segments!r}")
        if not (isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0):
            raise ValueError(f"LMA: momentum must be in [0, 1), got {momentum!r}")
        self.segments = segments
        self.momentum = float(momentum)
        self.continuous = bool(continuous)
        self.alpha = nn.Parameter(torch.empty(segments))
        self.beta = None if self.continuous else nn.Parameter(torch.empty(segments))
        self.register_buffer("running_mean", torch.zeros(1))
        self.register_buffer("running_std", torch.ones(1))
        self.reset_parameters()

    def reset_parameters(self):
        """ReLU pattern: alpha = 0 on the first k // 2 segments, 1 on the rest."""
        with torch.no_grad():
            self.alpha.fill_(1.0)
            self.alpha[: self.segments // 2] = 0.0
            if self.beta is not None:
                self.beta.zero_()

    def intercepts(self, mean, std):
        """``beta``: the learned one, or the continuous variant's from the slopes and cut points."""
        return continuous_intercepts(self.alpha, mean, std) if self.continuous else self.beta

    def forward(self, x):
        if self.training and x.numel() > 0:
            with torch.no_grad():
                mean, std = batch_statistics(x.detach())
                keep = self.momentum
                self.running_mean.mul_(keep).add_((1 - keep) * mean.to(self.running_mean.dtype))
                self.running_std.mul_(keep).add_((1 - keep) * std.to(self.running_std.dtype))
            return lma(x, self.alpha, self.intercepts(mean, std), mean, std)
        if self.continuous:
            mean, std = self.running_mean, self.running_std
            return lma(x, self.alpha, self.intercepts(mean, std), mean, std)
        # evaluation, once per decoding step: read parameters and buffers from their
        # dicts (nn.Module.__getattr__ costs more than the kernel on a few thousand elements)
        parameters, buffers = self._parameters, self._buffers
        return lma(x, parameters["alpha"], parameters["beta"], buffers["running_mean"], buffers["running_std"])

    def extra_repr(self):
        return f"segments={self.segments}, momentum={self.momentum}" + (", continuous" if self.continuous else "")


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
register_activation("aplu")(
    lambda units, segments, momentum: APLU(_need_units("aplu", units), segments)
)
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
