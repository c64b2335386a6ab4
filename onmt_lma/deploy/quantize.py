"""Post-training quantization of a trained model (any activation), for CPU translation: int8 rows, or
B-bit buckets (``-bits``; :func:`low_bit_checkpoint`, which also writes a quantization-aware student's codes).

    onmt_lma_quantize -model CK.pt -output CK.int8.pt [-embeddings]
    onmt_lma_quantize -model CK.pt -output CK.q4.pt -bits 4 [-bucket 64] [-embeddings]

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

import onmt_lma.base.onmt_import  # noqa: F401, I001  (first: before onmt)
import argparse

import onmt.model_builder

from onmt_lma.model.quantization import (FORMAT, PACKING, QuantizeError, bucket_codes, pack_codes, quantize_rows,
                                         symmetric_block_codes)
from onmt_lma.model.quantized_checkpoint import (drop_position_tables, embedding_names, linear_weight_names,
                                                 quantization_of)

#: embedding tables of a low-bit checkpoint (``-embeddings``): symmetric 4-bit blocks of 32 values
EMBEDDING_BITS, EMBEDDING_BLOCK = 4, 32
#: ``onmt_lma_quantize -bits B``'s default bucket for post-training quantization (one per 64 values)
POST_TRAINING_BUCKET = 64


def low_bit_checkpoint(checkpoint, model, bits, bucket, embeddings=False):
    """``checkpoint`` with its linear weights as packed ``bits``-bit codes plus each bucket's minimum and range
    (float32; Polino et al. 2018, section 2.1) and, with ``embeddings``, its embedding tables as symmetric
    4-bit blocks.  For a quantization-aware checkpoint (``-quant_bits``) these are exactly the weights it
    computes with; for any other, round-to-nearest post-training quantization (no calibration data)."""
    result = {**checkpoint, "model": dict(checkpoint["model"]), "generator": dict(checkpoint["generator"]),
              "optim": None}
    stored = {}
    for part, name in linear_weight_names(model):
        weight = checkpoint[part].get(name)
        if weight is None:
            raise QuantizeError(f"the checkpoint has no {part} tensor {name!r} that the model has")
        codes, low, span = bucket_codes(weight, bits, bucket)
        result[part][name] = pack_codes(codes, bits)
        stored[f"{part}/{name}"] = {"shape": list(weight.shape), "low": low, "span": span}
    for name in embedding_names(checkpoint) if embeddings else []:
        codes, scales = symmetric_block_codes(checkpoint["model"][name], EMBEDDING_BITS, EMBEDDING_BLOCK)
        result["model"][name] = pack_codes(codes.reshape(-1), EMBEDDING_BITS)
        stored[f"model/{name}"] = {"shape": list(codes.shape), "scheme": "symmetric", "bits": EMBEDDING_BITS,
                                   "block": EMBEDDING_BLOCK, "scales": scales}
    for part in ("model", "generator"):  # what stays float is stored as float32
        for name, tensor in result[part].items():
            if tensor.is_floating_point():
                result[part][name] = tensor.float()
    quantization_aware = bool(quantization_of(checkpoint).trained_bits)
    result["onmt_lma"] = {**(checkpoint.get("onmt_lma") or {}),
                          "low_bit": {"format": FORMAT, "packing": PACKING, "bits": bits, "bucket": bucket, "weights": stored,
                                      "source": "quantization-aware" if quantization_aware else "post-training",
                                      "embeddings": bool(embeddings),
                                      "position_tables": drop_position_tables(result)}}
    return result


def quantize_checkpoint(checkpoint, model, embeddings=False, bits=None, bucket=None):
    """The quantized checkpoint of ``checkpoint`` (whose built model is ``model``): int8 rows (``bits`` None),
    or ``bits``-bit buckets (:func:`low_bit_checkpoint`).  A quantization-aware checkpoint (``-quant_bits``)
    is always written in its own codes."""
    quantization = quantization_of(checkpoint)
    if quantization.stored:
        raise QuantizeError("the checkpoint is quantized already")
    trained, trained_bucket = quantization.trained_bits, quantization.trained_bucket
    if trained:
        if bits not in (None, trained) or bucket not in (None, trained_bucket):
            raise QuantizeError(f"the checkpoint was trained with -quant_bits {trained} -quant_bucket "
                                f"{trained_bucket}: it is written in those codes (leave out -bits and -bucket, or "
                                "give those)")
        return low_bit_checkpoint(checkpoint, model, trained, trained_bucket, embeddings)
    if bits is not None:
        return low_bit_checkpoint(checkpoint, model, bits, bucket or POST_TRAINING_BUCKET, embeddings)
    if bucket is not None:
        raise QuantizeError("-bucket goes with -bits (int8 has one scale per row)")
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
    result["onmt_lma"] = {**(checkpoint.get("onmt_lma") or {}), "int8": {"format": FORMAT, "scheme": "symmetric per row, scale = max|w| / 127",
                                           "scales": scales, "embeddings": bool(embeddings),
                                           "position_tables": recomputed}}
    return result


def build_float_model(path):
    """The float model of checkpoint ``path`` as translation builds it (names of its linear layers)."""
    opt = argparse.Namespace(models=[str(path)], gpu=-1, gpu_ranks=[], world_size=1,
                             parallel_mode="data_parallel", precision="fp32", quant_type="", quant_layers=[])
    _, model, _ = onmt.model_builder.load_test_model(opt, model_path=str(path))
    return model
