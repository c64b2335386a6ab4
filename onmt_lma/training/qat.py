"""Quantization-aware training (``-quant_bits``, ``-quant_bucket``; Polino et al. 2018): every linear layer
computes with its weight quantized per bucket, straight-through gradients to the full-precision weights.
"""

import torch
import torch.nn as nn

from onmt_lma.base.checkpoint import load as load_checkpoint
from onmt_lma.base.opts import int_type
from onmt_lma.model.quantization import QuantizeError, bucket_quantize, fake_quantize
from onmt_lma.model.quantized_checkpoint import quantization_of


def add_quant_opts(parser):
    """Quantization-aware training options (model options: saved in checkpoints, used again at translation)."""

    group = parser.add_argument_group("Quantization-aware training (onmt-lma)")
    group.add("--quant_bits", "-quant_bits", type=int_type("an integer from 2 to 8", lambda b: 2 <= b <= 8),
              default=None, help="Train with every linear weight uniformly quantized to 2**B levels per bucket in "
              "the forward pass (straight-through gradients to the full-precision weights; Polino et al. 2018). "
              "Translation of such a checkpoint uses the quantized weights.")
    group.add("--quant_bucket", "-quant_bucket", type=int_type("an integer >= 2", lambda n: n >= 2), default=256,
              help="Weights per quantization bucket (each with its own minimum and range). Polino et al.: 256.")
    return group


def _quantization_aware_forward(module, bits, bucket):
    def forward(x):
        return torch.nn.functional.linear(x, fake_quantize(module.weight, bits, bucket), module.bias)
    return forward


def quantization_aware(model, bits, bucket):
    """Every ``nn.Linear`` of ``model`` computes with its weight :func:`fake_quantize`-d (training); the
    stored parameters stay full precision, so checkpoints keep them.  Returns how many layers."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.forward = _quantization_aware_forward(module, bits, bucket)
            count += 1
    return count


def quantize_weights_in_place(model, bits, bucket):
    """Replace every ``nn.Linear`` weight by its :func:`bucket_quantize`-d value (translation of a
    quantization-aware checkpoint: the model it was trained to be)."""
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if type(module) is nn.Linear:
                module.weight.copy_(bucket_quantize(module.weight.float(), bits, bucket).to(module.weight.dtype))
                count += 1
    return count


def refuse_quantized_training_start(path):
    """A clear error, before any training, when ``-train_from`` names an ``onmt_lma_quantize`` export (int8
    or packed low-bit codes): its weights are rounded for deployment; training goes on from the float
    checkpoint it was made from (or, for quantization-aware training, that checkpoint with ``-quant_bits``)."""

    if quantization_of(load_checkpoint(path, mmap=True)).stored:
        raise QuantizeError(f"-train_from {path}: an onmt_lma_quantize export (quantized for deployment); train "
                            "from the float checkpoint it was made from")
