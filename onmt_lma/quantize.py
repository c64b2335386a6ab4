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


def quantize_checkpoint(checkpoint, model, embeddings=False):
    """The int8 checkpoint of ``checkpoint`` (whose built model is ``model``)."""
    info = checkpoint.get("onmt_lma") or {}
    if "int8" in info:
        raise QuantizeError("the checkpoint is quantized already")
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
    # the sinusoidal position tables (a third of a 64-dim student's file) are a formula: rebuilt when loaded
    recomputed = {name: list(result["model"].pop(name).shape) for name in list(result["model"])
                  if name.endswith(".pe.pe")}
    result["onmt_lma"] = {**info, "int8": {"format": FORMAT, "scheme": "symmetric per row, scale = max|w| / 127",
                                           "scales": scales, "embeddings": bool(embeddings),
                                           "position_tables": recomputed}}
    return result


def position_table(shape, encoding_type):
    """OpenNMT-py's sinusoidal position buffer of ``shape`` (max_len, 1, dim)."""
    from onmt.modules.embeddings import PositionalEncoding

    return PositionalEncoding(shape[2], encoding_type, max_len=shape[0]).pe


def dequantize_checkpoint(checkpoint):
    """Float weights in place of an int8 checkpoint's (OpenNMT-py then builds the model as usual), and
    ``opt.lma_int8`` set so that translation quantizes the built model again; no-op for a float one."""
    info = (checkpoint.get("onmt_lma") or {}).get("int8")
    if info is None:
        return checkpoint
    if info.get("format") != FORMAT:
        raise QuantizeError(f"int8 checkpoint format {info.get('format')!r}; this onmt-lma reads {FORMAT}")
    for key, scales in info["scales"].items():
        part, name = key.split("/", 1)
        checkpoint[part][name] = dequantize_rows(checkpoint[part][name], scales)
    encoding_type = getattr(checkpoint["opt"], "position_encoding_type", "SinusoidalInterleaved")
    for name, shape in info.get("position_tables", {}).items():
        checkpoint["model"][name] = position_table(shape, encoding_type)
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
