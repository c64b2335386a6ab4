#!/usr/bin/env python
"""Post-training int8 on this CPU: which library, how fast, how small, how exact.

One checkpoint (a 64-dim student of our recipes), the first ``--sentences`` lines of a prepared
corpus's test set, beam 5, one sentence at a time, each configuration loaded in this process and timed
in alternation (``--repeats``):

* fp32 -- the checkpoint as trained;
* int8 (onmt-lma) -- ``onmt_lma_quantize``'s checkpoint: PyTorch's dynamically quantized ``Linear``
  (``torch.ao``), int8 weights per row;
* torchao int8 dyn. act. + int8 weights -- ``quantize_(model, Int8DynamicActivationInt8WeightConfig())``;
* torchao int8 weight-only -- ``quantize_(model, Int8WeightOnlyConfig())`` (torchao: ``pip install torchao``;
  its rows are left out when it is not installed);
* ONNX Runtime float32 and int8 -- ``onmt_lma_export -int8`` (ONNX Runtime's dynamic quantization of the
  matrix products) translated by onmt-lma's ONNX engine (``onmt_lma_translate -engine onnx``).

sacreBLEU of each configuration's translations of those sentences against the detokenized references,
sizes on disk of the fp32, int8 and int8-with-embeddings checkpoints.  Writes
``results/quant/ptq.{json,md}``.

    python scripts/bench_quantize.py CHECKPOINT [--data data/multi30k] [--sentences 200] [--repeats 2]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import sacrebleu
import torch

from onmt_lma import plugin  # noqa: F401  (installs)
from onmt_lma import average, export, quantize
from onmt_lma.evaluate import postprocess
from onmt_lma.study.benchmark import machine, onnx_translate, pytorch_translate

REPO = Path(__file__).resolve().parents[1]


def torchao_config(name):
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
    except ImportError:
        return None
    return {"dynamic": Int8DynamicActivationInt8WeightConfig, "weight-only": Int8WeightOnlyConfig}[name]()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "multi30k", help="prepared corpus")
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "quant")
    args = parser.parse_args()
    sources = (args.data / "test.de").read_text(encoding="utf-8").splitlines()[: args.sentences]
    references = (args.data / "test.ref.detok.en").read_text(encoding="utf-8").splitlines()[: args.sentences]
    torch.set_num_threads(torch.get_num_threads())

    with tempfile.TemporaryDirectory() as tmp:
        stripped, int8, int8_all = Path(tmp) / "fp32.pt", Path(tmp) / "int8.pt", Path(tmp) / "int8_all.pt"
        average.save(average.average([args.checkpoint]), stripped)  # model + options, no optimizer state
        quantize.main(["-model", str(args.checkpoint), "-output", str(int8)])
        quantize.main(["-model", str(args.checkpoint), "-output", str(int8_all), "-embeddings"])
        sizes = {"fp32 (model + options)": stripped.stat().st_size, "int8": int8.stat().st_size,
                 "int8, embeddings too": int8_all.stat().st_size}
        configurations = {"fp32": (args.checkpoint, None), "int8 (onmt-lma, torch.ao dynamic)": (int8, None)}
        for label, name in (("torchao int8 dyn. act. + int8 weights", "dynamic"),
                            ("torchao int8 weight-only", "weight-only")):
            if torchao_config(name) is not None:
                from torchao.quantization import quantize_

                configurations[label] = (args.checkpoint, lambda model, n=name: quantize_(model, torchao_config(n)))
        engines = {label: pytorch_translate(path, transform=transform)
                   for label, (path, transform) in configurations.items()}
        manifest = export.export(args.checkpoint, Path(tmp) / "onnx", int8=True)  # the deployment engine's int8
        sizes["ONNX Runtime int8 graphs"] = sum((Path(tmp) / "onnx" / name).stat().st_size
                                                for name in manifest["files"] if name.endswith(".int8.onnx"))
        engines["ONNX Runtime float32 (onmt_lma_export)"] = onnx_translate(Path(tmp) / "onnx")
        engines["ONNX Runtime int8 (onmt_lma_export -int8)"] = onnx_translate(Path(tmp) / "onnx", int8=True)
        speeds = {label: [] for label in engines}
        hypotheses = {}
        for label, translate in engines.items():  # warm-up
            translate(sources[:5])
        for repeat in range(args.repeats):
            for label, translate in engines.items():
                print(f"== {label}, run {repeat + 1}/{args.repeats}", flush=True)
                start = time.perf_counter()
                hypotheses[label] = translate(sources)
                speeds[label].append(len(sources) / (time.perf_counter() - start))

    rows = {}
    for label in engines:
        _, detok = postprocess(hypotheses[label], args.data)
        rows[label] = {"sentences_per_s": statistics.median(speeds[label]), "runs": speeds[label],
                       "bleu": sacrebleu.corpus_bleu(detok, [references]).score}
    base = rows["fp32"]
    table = "| configuration | sent/s (median) | speed vs fp32 | BLEU | BLEU vs fp32 |\n| --- | --- | --- | --- | --- |\n"
    for label, row in rows.items():
        table += (f"| {label} | {row['sentences_per_s']:.1f} | {row['sentences_per_s'] / base['sentences_per_s']:.2f}x"
                  f" | {row['bleu']:.2f} | {row['bleu'] - base['bleu']:+.2f} |\n")
    table += "\n| checkpoint | size (MB) | smaller than fp32 |\n| --- | --- | --- |\n" + "".join(
        f"| {label} | {size / 1e6:.2f} | {sizes['fp32 (model + options)'] / size:.2f}x |\n" for label, size in sizes.items())
    result = {"checkpoint": args.checkpoint.name, "sentences": len(sources), "beam": 5, "batch": 1,
              "repeats": args.repeats, "rows": rows, "sizes_bytes": sizes, "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ptq.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "ptq.md").write_text(
        "# Post-training int8 on this CPU\n\n"
        f"`python scripts/bench_quantize.py {args.checkpoint.name} --sentences {len(sources)} --repeats "
        f"{args.repeats}`: the first {len(sources)} sentences of {args.data.name}'s test set, beam 5, one sentence "
        "at a time, every configuration loaded in one process and timed in alternation; sacreBLEU against the "
        "detokenized references of those sentences.\n\n" + table + f"\nMachine: {result['machine']}\n")
    print(table)


if __name__ == "__main__":
    main()
