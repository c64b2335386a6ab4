"""Why the low-bit graphs are slower than int8 on this CPU: ONNX Runtime's ``MatMulNBits`` against a float32
``MatMul`` on the 64-dim students' shapes, one thread, per call.

    python -m onmt_lma.study.probes.matmul_nbits_kernels [--out results/quant]

Shapes (K inputs, N outputs): a feed-forward block's two products (64 x 2048, 2048 x 64) and the output
projection (64 x 10848); M rows: 5 (one sentence, beam 5) and 160 (32 sentences).  Variants: 4 and 2 bits,
blocks of 64, zero points as float (what ``onmt_lma_export`` writes: exact for a QAT student's grid), as
packed uint8, or none (the default middle code), and ``accuracy_level`` 0 (float compute) or 4 (int8
compute).  Random weights; microseconds per call, median of 5 timings of 300 calls.  Writes
``matmul_nbits.md`` and ``.json``.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onmt_lma.deploy.low_bit import _pack

REPO = Path(__file__).resolve().parents[3]
SHAPES = ((64, 2048), (2048, 64), (64, 10848))
ROWS = (5, 160)


def _session(graph, opsets):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _graph(node, inputs, outputs, initializers):
    return helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", inputs])],
                             [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", outputs])], initializers)


def nbits_session(bits, inputs, outputs, block, zero_points, accuracy_level):
    """One ``MatMulNBits`` of random codes (``zero_points``: "float", "uint8" packed, or "none")."""
    rng = np.random.default_rng(0)
    blocks = inputs // block
    codes = rng.integers(0, 2 ** bits, size=(outputs, blocks, block)).astype(np.uint8)
    initializers = [numpy_helper.from_array(_pack(codes, bits), "B"),
                    numpy_helper.from_array(rng.uniform(0.01, 0.1, outputs * blocks).astype(np.float32), "S")]
    if zero_points == "float":
        values = rng.uniform(0, 2 ** bits - 1, outputs * blocks).astype(np.float32)
        initializers.append(numpy_helper.from_array(values, "Z"))
    elif zero_points == "uint8":  # packed like the codes, each row padded to whole bytes
        per_byte = 8 // bits
        padded = np.zeros((outputs, -(-blocks // per_byte) * per_byte), np.uint8)
        padded[:, :blocks] = rng.integers(0, 2 ** bits, size=(outputs, blocks))
        initializers.append(numpy_helper.from_array(_pack(padded, bits).reshape(-1), "Z"))
    node = helper.make_node("MatMulNBits", ["A", "B", "S"] + ["Z"] * (zero_points != "none"), ["Y"],
                            domain="com.microsoft", K=inputs, N=outputs, bits=bits, block_size=block,
                            accuracy_level=accuracy_level)
    return _session(_graph(node, inputs, outputs, initializers), [("", 17), ("com.microsoft", 1)])


def float_session(inputs, outputs):
    weight = np.random.default_rng(0).random((inputs, outputs), dtype=np.float32)
    node = helper.make_node("MatMul", ["A", "W"], ["Y"])
    return _session(_graph(node, inputs, outputs, [numpy_helper.from_array(weight, "W")]), [("", 17)])


def microseconds(session, rows, inputs):
    a = np.random.rand(rows, inputs).astype(np.float32)
    for _ in range(50):
        session.run(None, {"A": a})
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(300):
            session.run(None, {"A": a})
        timings.append((time.perf_counter() - started) / 300 * 1e6)
    return statistics.median(timings)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "quant")
    args = parser.parse_args(argv)
    variants = [(bits, zp, acc) for bits in (4, 2) for zp in ("float", "uint8", "none") for acc in (0, 4)]
    rows = []
    for inputs, outputs in SHAPES:
        for m in ROWS:
            row = {"K": inputs, "N": outputs, "M": m,
                   "float32": microseconds(float_session(inputs, outputs), m, inputs)}
            for bits, zp, acc in variants:
                row[f"{bits}-bit zp {zp} acc {acc}"] = microseconds(nbits_session(bits, inputs, outputs, 64, zp, acc),
                                                                   m, inputs)
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "matmul_nbits.json").write_text(json.dumps({"onnxruntime": ort.__version__, "rows": rows}, indent=1)
                                                + "\n")
    names = [k for k in rows[0] if k not in ("K", "N", "M")]
    lines = ["# MatMulNBits against float32 MatMul on the students' shapes", "",
             f"`python -m onmt_lma.study.runs study studies/quant.yaml --step matmul_nbits_kernels` (onnxruntime "
             f"{ort.__version__}, one thread): microseconds per call, and in brackets the ratio to float32.", "",
             "| K x N, M rows | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for r in rows:
        cells = [f"{r['float32']:.0f}"] + [f"{r[n]:.0f} ({r[n] / r['float32']:.1f}x)" for n in names[1:]]
        lines.append(f"| {r['K']} x {r['N']}, {r['M']} | " + " | ".join(cells) + " |")
    (args.out / "matmul_nbits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
