"""The graphs ``onmt_lma_export`` writes: OpenNMT-py 3.5.1's pre-norm Transformer (Vaswani et al. 2017)
restated as functions of the trained modules' weights, the encoder and one decoder step with its key/value cache.

:class:`EncoderGraph` and :class:`DecoderStepGraph` read the trained modules' weights; every activation is
exported through its PyTorch path, LMA through :class:`LMAGraph` (standard ONNX operations: its segment
index ``clamp(floor((x - mean) / (6 std / k) + k / 2), 0, k - 1)`` from the running statistics,
``Clip``/``Cast``/``GatherElements``; Xu et al. 2020, method section), so no custom operator is needed.

* ``encoder.onnx``: ``src`` (batch, src_len) int64, ``src_len`` (batch,) int64 ->
  ``memory_bias`` (batch, 1, 1, src_len) float (0, or OpenNMT-py's -1e18 where the source is padding:
  added to the attention scores), and per decoder layer ``i`` its cross-attention keys and values of the
  encoder output, ``cross_keys_i``/``cross_values_i`` (batch, heads, src_len, head_dim), computed once per
  sentence.
* ``decoder_step.onnx``: ``token`` (n,) int64, ``step`` (1,) int64, ``memory_bias`` and the cross keys and
  values (rows of the encoder's, one per hypothesis), per layer the self-attention cache
  ``self_keys_i``/``self_values_i`` (n, heads, step, head_dim) -> ``log_probs`` (n, vocab), the caches one
  position longer (``new_self_keys_i``/``new_self_values_i``), and each row's ``k`` best
  (``top_log_probs``, ``top_ids``; ``k`` (1,) int64 an input of the graph).  :func:`cache_names` lists
  the per-layer names.

The decoder step works on (n, dim) rows, one position per hypothesis, with one matrix product for the
self-attention's query, key and value projections and constant reshapes: ONNX Runtime's time per step on
a small model is mostly per operator, not arithmetic (onmt_lma/study/probes/profile_onnx_step.py), so the
graph keeps them few.
"""

import onmt_lma.base.onmt_import  # noqa: F401, I001  (first: before onmt)
import argparse
import math

import onmt.model_builder
import torch
import torch.nn as nn
from onmt.modules.position_ffn import PositionwiseFeedForward

from onmt_lma.deploy.manifest import ExportError
from onmt_lma.model.lma import LMA

OPSET = 17
NEG_INF = -1e18  # OpenNMT-py's mask value
LOW_BIT_POSITIONS = 1024  # positions a low-bit export's sinusoidal tables keep (longer sources are refused)


#: options whose other values this exporter does not restate, and the value it needs
SUPPORTED = {
    "encoder_type": "transformer", "decoder_type": "transformer", "position_encoding": True,
    "max_relative_positions": 0, "copy_attn": False, "parallel_residual": False, "lambda_align": 0.0,
}


def check_exportable(model_opt):
    problems = [f"-{name} {getattr(model_opt, name, None)!r} (needs {value!r})" for name, value in SUPPORTED.items()
                if getattr(model_opt, name, value) != value]
    if getattr(model_opt, "num_kv", 0) not in (0, None, getattr(model_opt, "heads", None)):
        problems.append(f"-num_kv {model_opt.num_kv} (grouped keys/values)")
    if getattr(model_opt, "position_encoding_type", "SinusoidalInterleaved") != "SinusoidalInterleaved":
        problems.append(f"-position_encoding_type {model_opt.position_encoding_type}")
    if problems:
        raise ExportError("the exporter restates OpenNMT-py's standard Transformer; this model has "
                          + ", ".join(problems))


# --------------------------------------------------------------------------- #
# The graphs
# --------------------------------------------------------------------------- #
def _heads(x, attention):
    """(batch, length, model_dim) -> (batch, heads, length, head_dim)."""
    return x.reshape(x.shape[0], x.shape[1], attention.head_count, attention.dim_per_head).transpose(1, 2)


def _attend(attention, query, keys, values, bias):
    """Scaled dot-product attention of ``query`` (batch, q_len, dim) over cached heads; ``bias``: (batch, 1, 1,
    k_len), -1e18 where a key is padding (as OpenNMT-py's mask: the same scores), or None."""
    q = _heads(attention.linear_query(query), attention) / math.sqrt(attention.dim_per_head)
    return _unheads(_attention_context(q, keys, values, bias), query.shape[0], query.shape[1], attention)


def _attention_context(q, keys, values, bias):
    """softmax(q keys^T (+ bias)) values for (batch, heads, q_len, head_dim) queries already scaled."""
    scores = torch.matmul(q, keys.transpose(2, 3)).float()
    if bias is not None:
        scores = scores + bias
    return torch.matmul(torch.softmax(scores, dim=-1).to(q.dtype), values)


def _unheads(context, batch, length, attention):
    return attention.final_linear(context.transpose(1, 2).reshape(batch, length, -1))


def _row_heads(rows, attention):
    """(n, heads x head_dim) -> (n, heads, 1, head_dim): one position per row, a constant reshape."""
    return rows.reshape(-1, attention.head_count, 1, attention.dim_per_head)


def _row_attend(attention, query, keys, values, bias):
    """:func:`_attend` for one position per row: ``query`` (n, dim) -> (n, dim), no transposes."""
    q = _row_heads(attention.linear_query(query), attention) / math.sqrt(attention.dim_per_head)
    context = _attention_context(q, keys, values, bias)
    return attention.final_linear(context.reshape(-1, attention.head_count * attention.dim_per_head))


def _embed(embeddings, tokens, start):
    """OpenNMT-py's word embedding times sqrt(dim) plus the sinusoidal position ``start`` onwards."""
    table = embeddings.make_embedding.emb_luts[0]
    position = embeddings.make_embedding.pe
    emb = table(tokens) * math.sqrt(position.dim)
    positions = start + torch.arange(tokens.shape[1], dtype=torch.long)
    return emb + position.pe[positions, 0, :].unsqueeze(0)


class EncoderGraph(nn.Module):
    """Source ids -> the additive padding mask and every decoder layer's cross-attention keys and values."""

    def __init__(self, model):
        super().__init__()
        self.encoder, self.decoder = model.encoder, model.decoder

    def forward(self, src, src_len):
        positions = torch.arange(src.shape[1], dtype=torch.long).unsqueeze(0)
        memory_pad = positions >= src_len.unsqueeze(1)  # (batch, src_len)
        bias = torch.zeros(memory_pad.shape).masked_fill(memory_pad, NEG_INF)[:, None, None, :]
        x = _embed(self.encoder.embeddings, src, 0)
        for layer in self.encoder.transformer:
            normed = layer.layer_norm(x)
            attention = layer.self_attn
            keys = _heads(attention.linear_keys(normed), attention)
            values = _heads(attention.linear_values(normed), attention)
            x = layer.feed_forward(_attend(attention, normed, keys, values, bias) + x)
        memory = self.encoder.layer_norm(x)
        cross = []
        for layer in self.decoder.transformer_layers:
            attention = layer.context_attn
            cross += [_heads(attention.linear_keys(memory), attention),
                      _heads(attention.linear_values(memory), attention)]
        return (bias, *cross)


class DecoderStepGraph(nn.Module):
    """One decoding step of ``n`` hypotheses: next-token log-probabilities and the grown self-attention caches.

    ``caches``: every layer's cross keys and values, then every layer's self keys and values
    (:func:`cache_names`' order).  Rows of (n, dim), one position each; the self-attention's query, key
    and value projections in one matrix product (their weights stacked here; the same products)."""

    def __init__(self, model):
        super().__init__()
        self.decoder, self.generator = model.decoder, model.generator
        self.layers = len(self.decoder.transformer_layers)
        for index, layer in enumerate(self.decoder.transformer_layers):
            attention = layer.self_attn
            projections = (attention.linear_query, attention.linear_keys, attention.linear_values)
            self.register_buffer(f"qkv_weight_{index}", torch.cat([p.weight.detach() for p in projections]))
            if all(p.bias is not None for p in projections):
                self.register_buffer(f"qkv_bias_{index}", torch.cat([p.bias.detach() for p in projections]))
            else:
                setattr(self, f"qkv_bias_{index}", None)

    def forward(self, token, step, memory_bias, *caches):
        layers = self.layers
        cross, own = caches[: 2 * layers], caches[2 * layers:]
        make = self.decoder.embeddings.make_embedding
        x = make.emb_luts[0](token) * math.sqrt(make.pe.dim) + make.pe.pe[step, 0, :]  # (n, dim)
        grown = []
        for index, layer in enumerate(self.decoder.transformer_layers):
            normed = layer.layer_norm_1(x)
            attention = layer.self_attn
            qkv = nn.functional.linear(normed, getattr(self, f"qkv_weight_{index}"), getattr(self, f"qkv_bias_{index}"))
            heads = attention.head_count
            q, key, value = qkv.reshape(-1, 3 * heads, 1, attention.dim_per_head).split(heads, dim=1)
            keys = torch.cat([own[2 * index], key], dim=2)
            values = torch.cat([own[2 * index + 1], value], dim=2)
            grown += [keys, values]
            context = _attention_context(q / math.sqrt(attention.dim_per_head), keys, values, None)
            query = attention.final_linear(context.reshape(-1, heads * attention.dim_per_head)) + x
            context = _row_attend(layer.context_attn, layer.layer_norm_2(query), cross[2 * index],
                                  cross[2 * index + 1], memory_bias)
            x = layer.feed_forward(context + query)
        out = self.decoder.layer_norm(x)
        return (torch.log_softmax(self.generator(out).float(), dim=-1), *grown)


class LMAGraph(nn.Module):
    """An LMA of a trained model as the exported graph computes it: ``alpha[j] * x + beta[j]`` with ``j`` from
    the running statistics (the learned or the continuous variant's intercepts).

    The segment is found as the fused CPU kernel that ``onmt_lma_translate`` runs finds it
    (``onmt_lma/csrc/lma_cpu.cpp``: position ``(x - mean) * inv + k / 2`` with ``inv = 1 / (6 std / k)`` from
    float64, clipped to ``[0, k - 1]``, truncated), so that an element on a cut point falls in the same
    segment as in PyTorch; ``floor`` is not needed, truncation on ``[0, k - 1]`` is the floor.  The slope and
    intercept of every element are read with ``GatherElements`` from (k, units) tables (each line repeated
    over the feed-forward units), which ONNX Runtime runs faster than ``Gather`` from a k-vector.
    """

    def __init__(self, lma, units):
        super().__init__()
        k = lma.segments
        mean, std = lma.running_mean.detach().reshape(()), lma.running_std.detach().reshape(())
        width = std.double().clamp_min(torch.finfo(std.dtype).tiny) * 6.0 / k
        self.segments, self.units = k, units
        self.register_buffer("mean", mean.clone())
        self.register_buffer("inv", (1.0 / width).to(std.dtype))
        self.register_buffer("slopes", lma.alpha.detach()[:, None].expand(k, units).contiguous())
        self.register_buffer("intercepts", lma.intercepts(mean, std).detach()[:, None].expand(k, units).contiguous())

    def forward(self, x):
        flat = x if x.dim() == 2 else x.reshape(-1, self.units)  # a constant shape: no shape arithmetic
        position = (flat - self.mean) * self.inv + self.segments / 2
        j = position.clamp(0, self.segments - 1).to(torch.int64)
        out = torch.gather(self.slopes, 0, j) * flat + torch.gather(self.intercepts, 0, j)
        return out if x.dim() == 2 else out.reshape_as(x)  # Shape + Reshape (x.shape: element by element)


def graph_activations(model):
    """Every LMA of ``model``'s feed-forward blocks replaced by its :class:`LMAGraph` (the model is changed)."""
    for block in model.modules():
        if isinstance(block, PositionwiseFeedForward) and isinstance(block.activation, LMA):
            block.activation = LMAGraph(block.activation, block.w_1.out_features)
    return model


def empty_cache(model, rows):
    """The decoder's self-attention caches before the first step: per layer, keys and values of
    (rows, heads, 0, head_dim) zeros (:func:`cache_names`' order)."""
    attention = model.decoder.transformer_layers[0].self_attn
    shape = (rows, attention.head_count, 0, attention.dim_per_head)
    return [torch.zeros(shape) for _ in range(2 * len(model.decoder.transformer_layers))]


def load_model(checkpoint):
    """``(vocabs, model in evaluation mode, options)`` of a checkpoint, as OpenNMT-py's translator builds it
    (a quantized checkpoint's codes dequantized: exactly the weights it computes with); refused by
    :func:`check_exportable` where the graphs could not restate it."""
    from onmt_lma.training import plugin  # noqa: F401  (installs: safe loading, the activations)

    opt = argparse.Namespace(models=[str(checkpoint)], gpu=-1, gpu_ranks=[], world_size=1,
                             parallel_mode="data_parallel", precision="fp32", quant_type="", quant_layers=[])
    vocabs, model, model_opt = onmt.model_builder.load_test_model(opt, model_path=str(checkpoint))
    check_exportable(model_opt)
    return vocabs, model.eval(), model_opt
