"""Where a quantized checkpoint keeps its weights, and how it becomes a float one again.

``onmt_lma_quantize`` writes int8 checkpoints (``checkpoint["onmt_lma"]["int8"]``: int8 rows and their scales)
and, for a quantization-aware student, its packed B-bit codes (``checkpoint["onmt_lma"]["low_bit"]``); the
sinusoidal position tables are left out and rebuilt.  :func:`dequantize_checkpoint` gives OpenNMT-py float
weights to build the model from.
"""

import onmt_lma.base.onmt_import  # noqa: F401, I001  (first: before onmt)
import dataclasses

import torch.nn as nn
from onmt.modules.embeddings import PositionalEncoding

from onmt_lma.model.quantization import (FORMAT, QuantizeError, dequantize_rows, unpack_codes, values_of_codes,
                                         values_of_symmetric_blocks)


def trained_bits(opt):
    """``-quant_bits`` of training options (a command's, or a checkpoint's ``opt``): the bits a
    quantization-aware model computes its linear weights in; None for float training."""
    return getattr(opt, "quant_bits", None) or None


@dataclasses.dataclass(frozen=True)
class Quantization:
    """What a checkpoint holds of quantization, read in one place (:func:`quantization_of`)."""

    trained_bits: int = None  # a quantization-aware student's -quant_bits (its weights float, computed in codes)
    trained_bucket: int = None
    int8: dict = None  # onmt_lma_quantize's int8 rows: their scales (checkpoint["onmt_lma"]["int8"])
    low_bit: dict = None  # packed B-bit codes (checkpoint["onmt_lma"]["low_bit"])

    @property
    def stored(self):
        """Whether the weights are stored quantized (int8 rows or packed codes)."""
        return self.int8 is not None or self.low_bit is not None

    @property
    def label(self):
        """``int8``, ``B-bit`` (stored codes, or a quantization-aware student's bits), or None (float)."""
        if self.int8 is not None:
            return "int8"
        bits = self.low_bit["bits"] if self.low_bit is not None else self.trained_bits
        return f"{bits}-bit" if bits else None


def quantization_of(checkpoint):
    """The :class:`Quantization` of a loaded checkpoint."""
    info, opt = checkpoint.get("onmt_lma") or {}, checkpoint["opt"]
    bits = trained_bits(opt)
    return Quantization(bits, getattr(opt, "quant_bucket", None) if bits else None, info.get("int8"),
                        info.get("low_bit"))


def checkpoint_key(module_name):
    """``(part, name)`` under which an OpenNMT-py checkpoint keeps the weight of module ``module_name``."""
    if module_name == "generator":
        return "generator", "weight"
    if module_name.startswith("generator."):
        return "generator", module_name[len("generator."):] + ".weight"
    return "model", module_name + ".weight"


def linear_weight_names(model):
    """``(part, name)`` of every ``nn.Linear`` weight of a built OpenNMT-py model."""
    return [checkpoint_key(name) for name, module in model.named_modules() if type(module) is nn.Linear]


def embedding_names(checkpoint):
    return [name for name in checkpoint["model"] if ".emb_luts." in name and name.endswith(".weight")]


def drop_position_tables(checkpoint):
    """Take the sinusoidal position tables (a third of a 64-dim student's file) out of ``checkpoint``:
    they are a formula, rebuilt when loaded (:func:`restore_position_tables`).  Returns their shapes."""
    return {name: list(checkpoint["model"].pop(name).shape) for name in list(checkpoint["model"])
            if name.endswith(".pe.pe")}


def restore_position_tables(checkpoint, shapes):
    encoding_type = getattr(checkpoint["opt"], "position_encoding_type", "SinusoidalInterleaved")
    for name, shape in shapes.items():
        checkpoint["model"][name] = position_table(shape, encoding_type)


def position_table(shape, encoding_type):
    """OpenNMT-py's sinusoidal position buffer of ``shape`` (max_len, 1, dim)."""
    return PositionalEncoding(shape[2], encoding_type, max_len=shape[0]).pe


def low_bit_values(packed, entry, low_bit):
    """The float weight of one ``low_bit["weights"]`` entry: bucketed codes (linear layers; ``low``, ``span``)
    or, with ``"scheme": "symmetric"``, symmetric blocks (embedding tables; ``scales``, ``block``, ``bits``)."""
    count = 1
    for size in entry["shape"]:
        count *= size
    bits = entry.get("bits", low_bit["bits"])
    codes = unpack_codes(packed, bits, count, low_bit.get("packing"))
    if entry.get("scheme") == "symmetric":
        return values_of_symmetric_blocks(codes.reshape(entry["shape"]), entry["scales"], bits, entry["block"])
    return values_of_codes(codes, entry["low"], entry["span"], bits, low_bit["bucket"], entry["shape"])


def dequantize_checkpoint(checkpoint):
    """Float weights in place of an int8 checkpoint's (OpenNMT-py then builds the model as usual), and
    ``opt.lma_int8`` set so that translation quantizes the built model again; no-op for a float one."""
    low_bit = (checkpoint.get("onmt_lma") or {}).get("low_bit")
    if low_bit is not None:  # the codes of a quantization-aware checkpoint: its exact weights, nothing to redo
        for key, entry in low_bit["weights"].items():
            part, name = key.split("/", 1)
            checkpoint[part][name] = low_bit_values(checkpoint[part][name], entry, low_bit)
        restore_position_tables(checkpoint, low_bit.get("position_tables", {}))
        checkpoint["opt"].quant_bits = None
        return checkpoint
    info = (checkpoint.get("onmt_lma") or {}).get("int8")
    if info is None:
        return checkpoint
    if info.get("format") != FORMAT:
        raise QuantizeError(f"int8 checkpoint format {info.get('format')!r}; this onmt-lma reads {FORMAT}")
    for key, scales in info["scales"].items():
        part, name = key.split("/", 1)
        checkpoint[part][name] = dequantize_rows(checkpoint[part][name], scales)
    restore_position_tables(checkpoint, info.get("position_tables", {}))
    checkpoint["opt"].lma_int8 = True
    return checkpoint
