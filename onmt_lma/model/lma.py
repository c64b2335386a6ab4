"""LMA, Light Multi-segment Activation (Xu, Ke, Zhang, Bian, Liu. Light Multi-segment Activation for Model
Compression. AAAI 2020, arXiv 1907.06870): the math as pure functions and the ``nn.Module``.

The k segments are cut by batch statistics in training and by running statistics in evaluation (the
paper's method section, Eq. 1-3); the fused CPU kernel (:mod:`onmt_lma.model.kernels`) computes the same.
"""

import torch
import torch.nn as nn

from onmt_lma.model.kernels import cpu_kernel

#: the paper's defaults: k = 8 segments, running statistics with momentum 0.99 (Xu et al. 2020, method section)
DEFAULT_SEGMENTS = 8


DEFAULT_MOMENTUM = 0.99


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
    the fused kernel of :mod:`onmt_lma.model.kernels` runs when available; otherwise
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
    is available (``scripts/bench_activations.py`` compares it with ``torch.std_mean``).
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
