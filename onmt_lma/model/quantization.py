"""Quantized weights: int8 rows (symmetric, one scale per row) and B-bit buckets (Polino et al. 2018, section
2.1), their codes packed to bytes, and PyTorch's dynamically quantized int8 ``Linear`` built from int8 rows.
"""

import warnings

import torch
import torch.nn as nn

from onmt_lma.base.errors import UserError

FORMAT = 1
#: how a low-bit checkpoint's codes are packed (its ``low_bit["packing"]``): :func:`pack_codes`
PACKING = "bit stream"


INT8_MAX = 127


class QuantizeError(UserError, ValueError):
    """A checkpoint or option that cannot be quantized as asked."""


def quantize_rows(weight):
    """``(int8 values, float32 scales)`` of a 2-D weight, one symmetric scale per row.

    A row of zeros gets scale 1 (its values stay 0).
    """
    weight = weight.detach().float()
    peak = weight.abs().amax(dim=1)
    scales = torch.where(peak > 0, peak / INT8_MAX, torch.ones_like(peak))
    values = torch.round(weight / scales[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return values, scales


def dequantize_rows(values, scales):
    return values.float() * scales[:, None]


def bucket_quantize(weight, bits, bucket):
    """Uniform quantization with bucketing (Polino et al. 2018, "Model compression via distillation and
    quantization", section 2.1), deterministic rounding.

    The weight, flattened in row-major order, is cut into buckets of ``bucket`` values (the last may be
    shorter); each bucket is scaled to [0, 1] by its own minimum and range, rounded to one of the
    ``2**bits`` levels ``i / (2**bits - 1)`` and scaled back.  A bucket whose values are all equal is
    left as it is.
    """
    codes, low, span = bucket_codes(weight, bits, bucket)
    return values_of_codes(codes, low, span, bits, bucket, weight.shape).to(weight.dtype)


def fake_quantize(weight, bits, bucket):
    """:func:`bucket_quantize` in the forward pass, the identity in the backward (straight-through estimator):
    the gradient reaches the full-precision weight unchanged."""
    return weight + (bucket_quantize(weight.detach(), bits, bucket) - weight).detach()


def bucket_codes(weight, bits, bucket):
    """``(codes uint8, low float32, span float32)`` of :func:`bucket_quantize`: per bucket its minimum and
    range, per value its level in ``0 .. 2**bits - 1`` (a bucket of equal values: span 0, codes 0)."""
    flat = weight.detach().float().reshape(-1)
    pad = (-flat.numel()) % bucket
    rows = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, bucket) if pad else flat.reshape(-1, bucket).clone()
    if pad:
        rows[-1, bucket - pad:] = rows[-1, 0]
    low = rows.amin(dim=1, keepdim=True)
    span = rows.amax(dim=1, keepdim=True) - low
    levels = 2 ** bits - 1
    safe = torch.where(span > 0, span, torch.ones_like(span))
    codes = torch.where(span > 0, torch.round((rows - low) / safe * levels), torch.zeros_like(rows))
    return codes.to(torch.uint8).reshape(-1)[: flat.numel()], low.reshape(-1), span.reshape(-1)


def values_of_codes(codes, low, span, bits, bucket, shape):
    """The weight that :func:`bucket_codes` encoded: exactly :func:`bucket_quantize`'s values."""
    count = codes.numel()
    pad = (-count) % bucket
    rows = torch.cat([codes, codes.new_zeros(pad)]).reshape(-1, bucket).float()
    levels = 2 ** bits - 1
    safe = torch.where(span > 0, span, torch.ones_like(span))[:, None]
    values = torch.where(span[:, None] > 0, rows / levels * safe + low[:, None], low[:, None].expand_as(rows))
    return values.reshape(-1)[:count].reshape(shape)


def symmetric_block_codes(table, bits, block):
    """``(codes uint8, scales float32)`` of a 2-D table, each row cut in blocks of ``block`` values, each block
    symmetric about 0: ``value = (code - 2**(bits-1)) * scale`` with ``scale = max|w| / (2**(bits-1) - 1)``
    (codes ``1 .. 2**bits - 1``; the layout of ONNX Runtime's ``GatherBlockQuantized`` without zero points).
    A block of zeros gets scale 1.  ``table``'s row length must be a multiple of ``block``."""
    rows, width = table.shape
    if width % block:
        raise QuantizeError(f"a table of rows of {width} values cannot be cut in blocks of {block}")
    blocks = table.detach().float().reshape(rows, width // block, block)
    middle, peak = 2 ** (bits - 1), blocks.abs().amax(dim=2)
    scales = torch.where(peak > 0, peak / (middle - 1), torch.ones_like(peak))
    codes = (torch.round(blocks / scales[..., None]) + middle).clamp_(1, 2 ** bits - 1).to(torch.uint8)
    return codes.reshape(rows, width), scales.reshape(-1)


def values_of_symmetric_blocks(codes, scales, bits, block):
    """The table :func:`symmetric_block_codes` encoded."""
    rows, width = codes.shape
    blocks = codes.reshape(rows, width // block, block).float() - 2 ** (bits - 1)
    return (blocks * scales.reshape(rows, width // block, 1)).reshape(rows, width)


def pack_codes(codes, bits):
    """Codes of 1 to 7 ``bits`` as one little-endian bit stream (code i in bits [i * bits, (i + 1) * bits),
    the first bit of a byte its lowest; for 1, 2 and 4 bits ``8 // bits`` codes to a byte, as ONNX Runtime
    packs them); 8-bit codes one per byte."""
    if bits >= 8:
        return codes
    shifts = torch.arange(bits, dtype=torch.uint8)
    stream = ((codes.reshape(-1, 1) >> shifts) & 1).reshape(-1)
    stream = torch.cat([stream, stream.new_zeros((-stream.numel()) % 8)]).reshape(-1, 8)
    return (stream << torch.arange(8, dtype=torch.uint8)).sum(dim=1, dtype=torch.uint8)


def unpack_codes(packed, bits, count, packing=PACKING):
    """The ``count`` codes :func:`pack_codes` packed; ``packing``: the low-bit checkpoint's (None: written by an
    onmt-lma that kept 3-, 5-, 6- and 7-bit codes one per byte)."""
    if bits >= 8 or (bits not in (1, 2, 4) and packing != PACKING):
        return packed[:count]
    stream = ((packed.reshape(-1, 1) >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1)[:count * bits]
    return (stream.reshape(count, bits) << torch.arange(bits, dtype=torch.uint8)).sum(dim=1, dtype=torch.uint8)


def quantize_linears(model):
    """Replace every ``nn.Linear`` of ``model`` by PyTorch's dynamically quantized int8 ``Linear``; returns how many.

    The int8 values are :func:`quantize_rows`'s; for a model loaded from an int8
    checkpoint they are exactly the stored ones (its float weights are
    ``q * scale`` with ``max |q| = 127`` per row, so the scales come out again).
    """
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear  # here: torch.ao warns as it loads

    replaced = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is not nn.Linear:
                continue
            values, scales = quantize_rows(child.weight)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao's deprecation notice
                qweight = torch.quantize_per_channel(dequantize_rows(values, scales), scales.double(),
                                                     torch.zeros(len(scales), dtype=torch.long), 0, torch.qint8)
                quantized = DynamicLinear(child.in_features, child.out_features, bias_=child.bias is not None,
                                          dtype=torch.qint8)
                quantized.set_weight_bias(qweight, None if child.bias is None else child.bias.detach().float())
            setattr(module, child_name, quantized)
            replaced += 1
    return replaced
