"""CTranslate2 conversion of a ReLU, GELU or SiLU checkpoint, safely, for comparison with onmt-lma's engine.

    onmt_lma_convert_ct2 -model CK.pt -output DIR [-quantization int8]

CTranslate2's OpenNMT-py converter refuses OpenNMT-py 3.5's default ``-self_attn_type
scaled-dot-flash`` (the same attention, computed by PyTorch's fused kernel) and, under
today's torch, reads the checkpoint only with its unsafe-deserialization flag.  Here the
checkpoint is loaded with :mod:`onmt_lma.base.checkpoint`'s allow-list, given
``self_attn_type: scaled-dot`` (onmt-lma's int8 checkpoints dequantized first), written as a
plain checkpoint, and converted under the same allow-list.  Its runtime has no LMA, PReLU,
Swish or APLU: for those, ``onmt_lma_export`` and ``onmt_lma_translate -engine native``.
"""

import tempfile
from pathlib import Path

import torch

from onmt_lma.base.checkpoint import checkpoint_loading
from onmt_lma.base.checkpoint import load as load_checkpoint
from onmt_lma.base.files import building_folder, check_folder_output, refuse_overwriting
from onmt_lma.deploy.manifest import ExportError
from onmt_lma.model.quantized_checkpoint import dequantize_checkpoint

#: what CTranslate2's converter (4.x) accepts as -pos_ffn_activation_fn
CT2_ACTIVATIONS = ("relu", "gelu", "fast_gelu", "silu")


def is_ct2_folder(folder):
    """Whether ``folder`` is a CTranslate2 model (``model.bin`` and ``config.json``): what ``-force`` replaces."""
    return (Path(folder) / "model.bin").is_file() and (Path(folder) / "config.json").is_file()


def convert(checkpoint, output, quantization=None, force=False):
    """Convert ``checkpoint`` into the CTranslate2 model folder ``output``, built under a temporary name and
    renamed when complete; an existing CTranslate2 model there is replaced only with ``force``."""
    from ctranslate2.converters import OpenNMTPyConverter  # here: only this conversion needs CTranslate2

    refuse_overwriting(output, {"-model": checkpoint})
    check_folder_output(output, "a CTranslate2 model", is_ct2_folder, force)
    model = load_checkpoint(checkpoint)
    activation = getattr(model["opt"], "pos_ffn_activation_fn", "relu")
    if activation not in CT2_ACTIVATIONS:
        raise ExportError(f"{checkpoint}: -pos_ffn_activation_fn {activation}; CTranslate2 runs only "
                          f"{', '.join(CT2_ACTIVATIONS)} (for {activation}: onmt_lma_export, then "
                          "onmt_lma_translate -engine native)")
    dequantize_checkpoint(model)
    model["opt"].self_attn_type = "scaled-dot"  # the same attention; the converter knows only this name
    model["optim"] = None
    for part in ("model", "generator"):
        model[part] = {name: tensor.float() if tensor.is_floating_point() else tensor
                       for name, tensor in model[part].items()}
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain.pt"
        torch.save(model, plain)
        with checkpoint_loading(str(plain)), building_folder(output, "a CTranslate2 model", is_ct2_folder,
                                                             force) as built:
            OpenNMTPyConverter(str(plain)).convert(str(built), quantization=quantization, force=True)
    return str(output)
