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

The weights' formats are :mod:`onmt_lma.model.quantization` and :mod:`onmt_lma.model.quantized_checkpoint`.
"""

import argparse

from onmt_lma.model.quantization import FORMAT, QuantizeError, bucket_codes, pack_codes, quantize_rows
from onmt_lma.model.quantized_checkpoint import drop_position_tables, embedding_names, linear_weight_names


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


def build_float_model(path):
    """The float model of checkpoint ``path`` as translation builds it (names of its linear layers)."""
    import onmt.model_builder

    opt = argparse.Namespace(models=[str(path)], gpu=-1, gpu_ranks=[], world_size=1,
                             parallel_mode="data_parallel", precision="fp32", quant_type="", quant_layers=[])
    _, model, _ = onmt.model_builder.load_test_model(opt, model_path=str(path))
    return model
