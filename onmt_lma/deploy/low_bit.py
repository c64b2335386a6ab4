"""Low-bit ONNX graphs: a low-bit checkpoint's packed codes run by ONNX Runtime's CPU kernels.

A checkpoint from ``onmt_lma_quantize -bits B`` (post-training) or of a ``-quant_bits B`` student keeps each
linear weight as B-bit codes with one minimum and range per bucket of values (:mod:`onmt_lma.deploy.quantize`).
After ``onmt_lma_export`` has traced the float graphs (from exactly those weights, dequantized), every matrix
product whose weight is a linear layer's (or rows of several, as the fused query-key-value product) becomes
``com.microsoft.MatMulNBits``: the codes packed ``8 // B`` to a byte, blocks along the input dimension, each
block's scale ``range / (2**B - 1)`` and floating-point zero point ``-minimum / scale``, so that
``(code - zero point) * scale`` is the checkpoint's value.  Embedding tables quantized in symmetric 4-bit
blocks become ``com.microsoft.GatherBlockQuantized``.  Weights are found by their values (each row of a
graph's weight is looked up among the checkpoint's dequantized rows), so the graphs' own layout (transposed,
fused) needs no naming.  ONNX Runtime runs 2 and 4 bits this way (:data:`DEPLOYABLE_BITS`); other widths (3
bits) and buckets its blocks cannot follow export for the native engine alone (:attr:`LowBitWeights.onnx_refused`),
the codes packed on disk as the checkpoint packs them and unpacked as the engine loads them.
"""

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from onmt_lma.base.checkpoint import load
from onmt_lma.model.quantization import QuantizeError, pack_codes, unpack_codes
from onmt_lma.model.quantized_checkpoint import low_bit_values, quantization_of

#: bit widths ONNX Runtime's CPU ``MatMulNBits`` runs with floating-point zero points
DEPLOYABLE_BITS = (2, 4)
MICROSOFT = "com.microsoft"


def block_size(inputs, bucket):
    """``MatMulNBits``' block for a layer of ``inputs`` input values and buckets of ``bucket`` flattened
    values: a block must lie in one bucket and be a power of 2 >= 16."""
    block = inputs if bucket % inputs == 0 else bucket if inputs % bucket == 0 else None
    if block is None or block < 16 or block & (block - 1):
        raise QuantizeError(f"buckets of {bucket} values on a layer of {inputs} inputs: ONNX Runtime's low-bit "
                            "blocks need a power of 2 >= 16 that divides the input size or is a multiple of it "
                            "(onmt_lma_quantize -bits B -bucket 64, or a -quant_bucket like it)")
    return block


def _pack(codes, bits):
    """uint8 codes (..., n) packed ``8 // bits`` to a byte along the last axis: :func:`pack_codes` row by row."""
    flat = pack_codes(torch.from_numpy(np.ascontiguousarray(codes)).reshape(-1), bits)
    return flat.numpy().reshape(*codes.shape[:-1], codes.shape[-1] * bits // 8)


class LowBitWeights:
    """A low-bit checkpoint's weights, findable by the float values of their rows; ``onnx_refused``: why ONNX
    Runtime's kernels cannot run its codes (a bit width or bucket they lack; None where they can): the export
    is then for the native engine alone, which runs any width and bucket."""

    def __init__(self, checkpoint):
        self.info = quantization_of(checkpoint).low_bit
        self.bits, self.bucket = self.info["bits"], self.info["bucket"]
        self.onnx_refused = None
        if self.bits not in DEPLOYABLE_BITS:
            self.onnx_refused = (f"{self.bits}-bit codes: ONNX Runtime's CPU kernels run "
                                 f"{' and '.join(map(str, DEPLOYABLE_BITS))} bits")
        self.rows, self.tables = {}, []
        for key, entry in self.info["weights"].items():
            part, name = key.split("/", 1)
            values = low_bit_values(checkpoint[part][name], entry, self.info).numpy()
            bits = entry.get("bits", self.bits)
            codes = unpack_codes(checkpoint[part][name], bits, values.size, self.info.get("packing"))
            codes = codes.numpy().reshape(values.shape)
            if entry.get("scheme") == "symmetric":
                self.tables.append((values, codes, entry["scales"].numpy().reshape(values.shape[0], -1),
                                    entry["block"], bits))
            elif self.onnx_refused is None:
                try:
                    self._add_rows(values, codes, entry)
                except QuantizeError as error:
                    self.onnx_refused, self.rows = str(error), {}

    def _add_rows(self, values, codes, entry):
        rows, inputs = values.shape
        block = block_size(inputs, self.bucket)
        starts = np.arange(rows)[:, None] * inputs + np.arange(inputs // block)[None, :] * block
        low, span = entry["low"].numpy(), entry["span"].numpy()
        which = starts // self.bucket
        scale = np.where(span > 0, span / (2 ** self.bits - 1), 1.0).astype(np.float32)[which]
        zero_point = (-low[which] / scale).astype(np.float32)
        blocks = codes.reshape(rows, inputs // block, block)
        for i, row in enumerate(values):
            self.rows[row.tobytes()] = (blocks[i], scale[i], zero_point[i])

    def matmul(self, weight):
        """``(packed, scales, zero points, block)`` for a graph weight of shape (N outputs, K inputs), or
        None when a row is not one of the checkpoint's."""
        found = [self.rows.get(np.ascontiguousarray(row, dtype=np.float32).tobytes()) for row in weight]
        if not found or any(f is None for f in found):
            return None
        blocks = np.stack([f[0] for f in found])
        return (_pack(blocks, self.bits), np.stack([f[1] for f in found]).reshape(-1),
                np.stack([f[2] for f in found]).reshape(-1), blocks.shape[2])

    def table(self, values):
        """``(packed, scales, block, bits)`` of an embedding table with these values, or None."""
        for table, codes, scales, block, bits in self.tables:
            if table.shape == values.shape and np.array_equal(table, values):
                return _pack(codes, bits), scales, block, bits
        return None


def low_bit_weights(checkpoint, int8, bits):
    """The checkpoint's :class:`~onmt_lma.deploy.low_bit.LowBitWeights` (None for a float checkpoint), after
    the checks of ``-bits`` (the bit width asked for, or None) and ``-int8``."""
    raw = load(checkpoint)
    quantization = quantization_of(raw)
    info, trained = quantization.low_bit, quantization.trained_bits
    if info is None:
        if bits is None and trained:  # its float weights would export 8x larger than the codes it computes with
            raise QuantizeError(f"{checkpoint} is a -quant_bits {trained} student: it stores full-precision weights "
                                f"and computes with their {trained}-bit codes; run onmt_lma_quantize -model "
                                f"{checkpoint} -output CK.q{trained}.pt, then export that")
        if bits is None:
            return None
        run = (f"onmt_lma_quantize -model {checkpoint} -output CK.q{trained}.pt (its {trained}-bit codes)" if trained
               else f"onmt_lma_quantize -model {checkpoint} -bits {bits} -output CK.q{bits}.pt (post-training), "
                    f"or fine-tune it with -quant_bits {bits} (quantization-aware) and quantize that")
        raise QuantizeError(f"-bits {bits}: {checkpoint} holds float weights; run {run}, then export the result")
    if bits not in (None, info["bits"]):
        raise QuantizeError(f"-bits {bits}: {checkpoint} holds {info['bits']}-bit codes")
    if int8:
        raise QuantizeError(f"-int8: {checkpoint} is a {info['bits']}-bit checkpoint; its graphs are low-bit already")
    return LowBitWeights(raw)


def lower_graph(path, weights):
    """Rewrite the ONNX graph at ``path`` in place: its linear weights' products as ``MatMulNBits``, its
    quantized embedding tables' lookups as ``GatherBlockQuantized``.  Returns what it rewrote, by kind."""
    model = onnx.load(str(path))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    counts, nodes, added = {"matmul_nbits": 0, "float_matmuls": 0, "gather_block_quantized": 0}, [], []
    for node in graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = initializers.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type == "Gather" and initializers.get(node.input[0]) is not None and not attributes.get("axis"):
            table = weights.table(numpy_helper.to_array(initializers[node.input[0]]))
            if table is not None:
                packed, scales, block, bits = table
                name = node.output[0]
                added += [numpy_helper.from_array(packed, f"{name}.codes"),
                          numpy_helper.from_array(scales, f"{name}.scales")]
                nodes.append(helper.make_node("GatherBlockQuantized", [f"{name}.codes", node.input[1], f"{name}.scales"],
                                              [name], domain=MICROSOFT, gather_axis=0, quantize_axis=1,
                                              block_size=block, bits=bits))
                counts["gather_block_quantized"] += 1
                continue
        elif node.op_type in ("MatMul", "Gemm") and weight is not None and len(weight.dims) == 2:
            plain_gemm = (attributes.get("transB") == 1 and not attributes.get("transA")
                          and attributes.get("alpha", 1.0) == 1.0 and attributes.get("beta", 1.0) == 1.0)
            if node.op_type == "MatMul" or plain_gemm:
                array = numpy_helper.to_array(weight)
                lowered = weights.matmul(array if node.op_type == "Gemm" else array.T)
                if lowered is None:
                    counts["float_matmuls"] += 1
                else:
                    packed, scales, zero_points, block = lowered
                    outputs, inputs = packed.shape[0], packed.shape[1] * block
                    name = node.output[0]
                    added += [numpy_helper.from_array(packed, f"{name}.codes"),
                              numpy_helper.from_array(scales, f"{name}.scales"),
                              numpy_helper.from_array(zero_points, f"{name}.zero_points")]
                    product = f"{name}.product" if len(node.input) > 2 else name
                    nodes.append(helper.make_node("MatMulNBits", [node.input[0], f"{name}.codes", f"{name}.scales",
                                                                  f"{name}.zero_points"], [product], domain=MICROSOFT,
                                                  K=inputs, N=outputs, bits=weights.bits, block_size=block))
                    if len(node.input) > 2:
                        nodes.append(helper.make_node("Add", [product, node.input[2]], [name]))
                    counts["matmul_nbits"] += 1
                    continue
            else:
                counts["float_matmuls"] += 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used] + added
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == MICROSOFT for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MICROSOFT, 1))
    onnx.save(model, str(path))
    return counts
