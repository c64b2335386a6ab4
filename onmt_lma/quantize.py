"""Post-training int8 quantization of a trained model (any activation), for CPU translation.

    onmt_lma_quantize -model CK.pt -output CK.int8.pt [-embeddings]

Every ``nn.Linear`` weight of the encoder, decoder and generator is stored as
int8 with one float32 scale per output row (symmetric: ``scale = max|w| / 127``,
``q = round(w / scale)``); with ``-embeddings`` the embedding tables too (rows
of the table, dequantized when loaded: smaller on disk only).  Biases, layer
norms, LMA's alpha/beta and running statistics stay float32; the sinusoidal
position tables are left out and rebuilt when loaded.  The checkpoint says so in
``checkpoint["onmt_lma"]["int8"]``.

``onmt_lma_translate`` (and ``onmt_lma_evaluate``) load such a checkpoint
safely (plain tensors, ``weights_only``) and run its linear layers as PyTorch's
dynamically quantized int8 ``Linear`` (int8 weights, activations quantized per
batch), rebuilt from exactly the stored int8 values.  OpenNMT-py's own
``-precision int8`` gives a float checkpoint the same treatment at load time
(OpenNMT-py 3.5.1 compares the string ``"int8"`` with ``torch.int8`` and so
silently translated in float32).

Library choice, measured (``scripts/bench_quantize.py``): PyTorch's dynamic
quantization (``torch.ao``), torchao's ``Int8DynamicActivationInt8WeightConfig``
and ``Int8WeightOnlyConfig`` on a 64-dim student; see ``results/quant/``.
"""

import argparse
import warnings
from pathlib import Path

import torch
import torch.nn as nn

FORMAT = 1
INT8_MAX = 127


class QuantizeError(ValueError):
    """A checkpoint or option that cannot be quantized as asked."""


# --------------------------------------------------------------------------- #
# The math
# --------------------------------------------------------------------------- #
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


def pack_codes(codes, bits):
    """Codes of ``bits`` in {1, 2, 4} packed ``8 // bits`` to a byte (little end first); others one per byte."""
    if bits not in (1, 2, 4):
        return codes
    per_byte = 8 // bits
    pad = (-codes.numel()) % per_byte
    grouped = torch.cat([codes, codes.new_zeros(pad)]).reshape(-1, per_byte).to(torch.int32)
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits
    return (grouped << shifts).sum(dim=1).to(torch.uint8)


def unpack_codes(packed, bits, count):
    if bits not in (1, 2, 4):
        return packed[:count]
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits
    codes = (packed.to(torch.int32)[:, None] >> shifts) & (2 ** bits - 1)
    return codes.reshape(-1)[:count].to(torch.uint8)


def add_quant_opts(parser):
    """Quantization-aware training options (model options: saved in checkpoints, used again at translation)."""
    from onmt_lma.opts import int_type

    group = parser.add_argument_group("Quantization-aware training (onmt-lma)")
    group.add("--quant_bits", "-quant_bits", type=int_type("an integer from 2 to 8", lambda b: 2 <= b <= 8),
              default=None, help="Train with every linear weight uniformly quantized to 2**B levels per bucket in "
              "the forward pass (straight-through gradients to the full-precision weights; Polino et al. 2018). "
              "Translation of such a checkpoint uses the quantized weights.")
    group.add("--quant_bucket", "-quant_bucket", type=int_type("an integer >= 2", lambda n: n >= 2), default=256,
              help="Weights per quantization bucket (each with its own minimum and range). Polino et al.: 256.")
    return group


# --------------------------------------------------------------------------- #
# Checkpoints
# --------------------------------------------------------------------------- #
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


def export_quantization_aware(checkpoint, model):
    """A quantization-aware checkpoint (``-quant_bits``) with its linear weights stored as packed B-bit codes
    plus each bucket's minimum and range (float32): exactly the weights it computes with."""
    opt = checkpoint["opt"]
    bits, bucket = opt.quant_bits, opt.quant_bucket
    result = {**checkpoint, "model": dict(checkpoint["model"]), "generator": dict(checkpoint["generator"]),
              "optim": None}
    stored = {}
    for part, name in linear_weight_names(model):
        weight = checkpoint[part][name]
        codes, low, span = bucket_codes(weight, bits, bucket)
        result[part][name] = pack_codes(codes, bits)
        stored[f"{part}/{name}"] = {"shape": list(weight.shape), "low": low, "span": span}
    result["onmt_lma"] = {**(checkpoint.get("onmt_lma") or {}),
                          "low_bit": {"format": FORMAT, "bits": bits, "bucket": bucket, "weights": stored,
                                      "position_tables": drop_position_tables(result)}}
    return result


def refuse_quantized_training_start(path):
    """A clear error, before any training, when ``-train_from`` names an ``onmt_lma_quantize`` export (int8
    or packed low-bit codes): its weights are rounded for deployment; training goes on from the float
    checkpoint it was made from (or, for quantization-aware training, that checkpoint with ``-quant_bits``)."""
    from onmt_lma.checkpoint import checkpoint_loading

    with checkpoint_loading(path):
        info = torch.load(path, map_location="cpu", mmap=True).get("onmt_lma") or {}
    if "int8" in info or "low_bit" in info:
        raise QuantizeError(f"-train_from {path}: an onmt_lma_quantize export (quantized for deployment); train "
                            "from the float checkpoint it was made from")


def quantize_checkpoint(checkpoint, model, embeddings=False):
    """The int8 checkpoint of ``checkpoint`` (whose built model is ``model``); a quantization-aware one
    (``-quant_bits``) is exported in its own B-bit codes instead (:func:`export_quantization_aware`)."""
    info = checkpoint.get("onmt_lma") or {}
    if "int8" in info or "low_bit" in info:
        raise QuantizeError("the checkpoint is quantized already")
    if getattr(checkpoint["opt"], "quant_bits", None):
        if embeddings:
            raise QuantizeError("-embeddings: a quantization-aware checkpoint is exported in its own "
                                f"{checkpoint['opt'].quant_bits}-bit codes, linear layers only")
        return export_quantization_aware(checkpoint, model)
    result = {**checkpoint, "model": dict(checkpoint["model"]), "generator": dict(checkpoint["generator"]),
              "optim": None}
    scales = {}
    names = linear_weight_names(model) + ([("model", n) for n in embedding_names(checkpoint)] if embeddings else [])
    for part, name in names:
        weight = checkpoint[part].get(name)
        if weight is None:
            raise QuantizeError(f"the checkpoint has no {part} tensor {name!r} that the model has")
        result[part][name], scales[f"{part}/{name}"] = quantize_rows(weight)
    for part in ("model", "generator"):  # what stays float is stored as float32 (a float16 checkpoint: too)
        for name, tensor in result[part].items():
            if tensor.is_floating_point():
                result[part][name] = tensor.float()
    recomputed = drop_position_tables(result)
    result["onmt_lma"] = {**info, "int8": {"format": FORMAT, "scheme": "symmetric per row, scale = max|w| / 127",
                                           "scales": scales, "embeddings": bool(embeddings),
                                           "position_tables": recomputed}}
    return result


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
    from onmt.modules.embeddings import PositionalEncoding

    return PositionalEncoding(shape[2], encoding_type, max_len=shape[0]).pe


def dequantize_checkpoint(checkpoint):
    """Float weights in place of an int8 checkpoint's (OpenNMT-py then builds the model as usual), and
    ``opt.lma_int8`` set so that translation quantizes the built model again; no-op for a float one."""
    low_bit = (checkpoint.get("onmt_lma") or {}).get("low_bit")
    if low_bit is not None:  # the codes of a quantization-aware checkpoint: its exact weights, nothing to redo
        for key, entry in low_bit["weights"].items():
            part, name = key.split("/", 1)
            count = 1
            for size in entry["shape"]:
                count *= size
            codes = unpack_codes(checkpoint[part][name], low_bit["bits"], count)
            checkpoint[part][name] = values_of_codes(codes, entry["low"], entry["span"], low_bit["bits"],
                                                     low_bit["bucket"], entry["shape"])
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


def quantize_linears(model):
    """Replace every ``nn.Linear`` of ``model`` by PyTorch's dynamically quantized int8 ``Linear``; returns how many.

    The int8 values are :func:`quantize_rows`'s; for a model loaded from an int8
    checkpoint they are exactly the stored ones (its float weights are
    ``q * scale`` with ``max |q| = 127`` per row, so the scales come out again).
    """
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

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


# --------------------------------------------------------------------------- #
# The command
# --------------------------------------------------------------------------- #
def get_parser():
    import onmt.opts

    from onmt_lma.opts import CommandParser

    parser = CommandParser(prog="onmt_lma_quantize", description="onmt_lma_quantize: int8 weights for CPU translation")
    onmt.opts.config_opts(parser)
    parser.add("--model", "-model", required=True, help="checkpoint to quantize (float32 or float16)")
    parser.add("--output", "-output", required=True, help="the int8 checkpoint to write")
    parser.add("--embeddings", "-embeddings", action="store_true",
               help="embedding tables in int8 too (smaller on disk; dequantized when loaded)")
    return parser


def main(argv=None):
    from onmt_lma import plugin  # noqa: F401  (installs: safe loading, LMA modules)
    from onmt_lma.average import load, save
    from onmt_lma.bin import user_errors_exit

    parser = get_parser()
    args = parser.parse_args(argv)
    with user_errors_exit(parser):
        if Path(args.output).resolve() == Path(args.model).resolve():
            raise QuantizeError(f"-output {args.output} is the input checkpoint; give another file")
        checkpoint = load(args.model)
        model = build_float_model(args.model)
        save(quantize_checkpoint(checkpoint, model, args.embeddings), args.output)
    size_in, size_out = Path(args.model).stat().st_size, Path(args.output).stat().st_size
    print(f"{args.output}: int8 ({size_out / 1e6:.1f} MB, {size_in / size_out:.2f}x smaller than {args.model})")


def build_float_model(path):
    """The float model of checkpoint ``path`` as translation builds it (names of its linear layers)."""
    import onmt.model_builder

    opt = argparse.Namespace(models=[str(path)], gpu=-1, gpu_ranks=[], world_size=1,
                             parallel_mode="data_parallel", precision="fp32", quant_type="", quant_layers=[])
    _, model, _ = onmt.model_builder.load_test_model(opt, model_path=str(path))
    return model


if __name__ == "__main__":
    main()
