#!/usr/bin/env python
"""Where a decoding step of the ONNX engine spends its time, per operator type and per node.

Translates the first ``--sentences`` lines of a prepared corpus's test set with an ``onmt_lma_export``
folder (beam 5, ``--batch`` sentences at a time) while ONNX Runtime's profiler records every node of
the decoder-step graph, then prints microseconds per decoding step by operator type and the slowest
nodes.  The profiler adds its own overhead: compare shares, not totals, with bench_deploy.py.

    python -m onmt_lma.study.probes.profile_onnx_step EXPORT_DIR [--data data/multi30k] [--sentences 30] [--batch 1]
"""

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "multi30k", help="prepared corpus")
    parser.add_argument("--sentences", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--int8", action="store_true", help="profile the int8 graphs")
    parser.add_argument("--top", type=int, default=12, help="operator types and nodes listed")
    args = parser.parse_args(argv)
    import onnxruntime

    from onmt_lma.deploy.decoding import Decoding
    from onmt_lma.deploy.runtime import OnnxTranslator

    translator = OnnxTranslator(args.export_dir, int8=args.int8)  # checks the folder
    lines = (args.data / "test.de").read_text(encoding="utf-8").splitlines()[: args.sentences]
    with tempfile.TemporaryDirectory() as tmp:
        options = onnxruntime.SessionOptions()
        options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp) / "decoder_step")
        graph = args.export_dir / ("decoder_step.int8.onnx" if args.int8 else "decoder_step.onnx")
        translator.decoder = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        translator.translate(lines, Decoding(), args.batch)
        events = json.loads(Path(translator.decoder.end_profiling()).read_text())
    steps = translator.profile["steps"]
    by_type, by_node = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_type[event["args"]["op_name"]] += event["dur"]
            by_node[event["name"].removesuffix("_kernel_time")] += event["dur"]
    total = sum(by_type.values())
    print(f"{graph.name}: {steps} decoder calls, {total / steps:.0f} us of kernels per call (profiler on)")
    print("\n| operator type | us per call | share |\n| --- | --- | --- |")
    for name, spent in by_type.most_common(args.top):
        print(f"| {name} | {spent / steps:.1f} | {100 * spent / total:.1f}% |")
    print("\n| node | us per call |\n| --- | --- |")
    for name, spent in by_node.most_common(args.top):
        print(f"| {name} | {spent / steps:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
