#!/usr/bin/env python
"""Post-training int8 on this CPU: which library, how fast, how small, how exact.

One checkpoint (a 64-dim student of our recipes), the first ``--sentences`` lines of a prepared
corpus's test set, beam 5, one sentence at a time, every configuration timed in turn, each in a fresh
process (after loading and 5 sentences of warm-up), repeat after repeat (``--repeats``, median): in one
process, the worker threads one engine leaves spinning slow down the next (scripts/bench_deploy.py):

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

from onmt_lma.training import plugin  # noqa: F401  (installs)
from onmt_lma.bin import quantize
from onmt_lma.deploy import export
from onmt_lma.base.checkpoint import save
from onmt_lma.training import average
from onmt_lma.evaluation.scoring import postprocess
from onmt_lma.study.benchmark import in_fresh_process, machine, onnx_translate, pytorch_translate

REPO = Path(__file__).resolve().parents[1]


def torchao_config(name):
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
    except ImportError:
        return None
    return {"dynamic": Int8DynamicActivationInt8WeightConfig, "weight-only": Int8WeightOnlyConfig}[name]()


#: the configurations, in table order: label -> (engine, file in the work folder, torchao config or None)
CONFIGURATIONS = {
    "fp32": ("pytorch", "fp32.pt", None),
    "int8 (onmt-lma, torch.ao dynamic)": ("pytorch", "int8.pt", None),
    "torchao int8 dyn. act. + int8 weights": ("pytorch", "fp32.pt", "dynamic"),
    "torchao int8 weight-only": ("pytorch", "fp32.pt", "weight-only"),
    "ONNX Runtime float32 (onmt_lma_export)": ("onnx", "onnx", None),
    "ONNX Runtime int8 (onmt_lma_export -int8)": ("onnx int8", "onnx", None),
}


def worker(label, folder, sources):
    """In a fresh process: load one configuration, translate 5 lines to warm up, time ``sources``."""
    engine, name, torchao = CONFIGURATIONS[label]
    path = Path(folder) / name
    if engine.startswith("onnx"):
        translate = onnx_translate(path, int8=engine.endswith("int8"))
    else:
        transform = None
        if torchao:
            from torchao.quantization import quantize_

            config = torchao_config(torchao)
            transform = lambda model: quantize_(model, config)  # noqa: E731
        translate = pytorch_translate(path, transform=transform)
    translate(sources[:5])
    start = time.perf_counter()
    outputs = translate(sources)
    return {"sent_per_s": len(sources) / (time.perf_counter() - start), "outputs": outputs}


def measured(label, folder, args):
    return in_fresh_process(__file__, [args.checkpoint, "--worker", label, folder, "--data", args.data,
                                       "--sentences", args.sentences], label)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "multi30k", help="prepared corpus")
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "quant")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIGURATION", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sources = (args.data / "test.de").read_text(encoding="utf-8").splitlines()[: args.sentences]
    references = (args.data / "test.ref.detok.en").read_text(encoding="utf-8").splitlines()[: args.sentences]
    if args.worker:
        print(json.dumps(worker(*args.worker, sources)))
        return
    labels = [label for label, (_, _, torchao) in CONFIGURATIONS.items()
              if torchao is None or torchao_config(torchao) is not None]  # torchao's rows when it is installed

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        stripped, int8, int8_all = folder / "fp32.pt", folder / "int8.pt", folder / "int8_all.pt"
        save(average.average([args.checkpoint]), stripped)  # model + options, no optimizer state
        quantize.main(["-model", str(args.checkpoint), "-output", str(int8)])
        quantize.main(["-model", str(args.checkpoint), "-output", str(int8_all), "-embeddings"])
        sizes = {"fp32 (model + options)": stripped.stat().st_size, "int8": int8.stat().st_size,
                 "int8, embeddings too": int8_all.stat().st_size}
        manifest = export.export(args.checkpoint, folder / "onnx", int8=True)  # the deployment engine's int8
        sizes["ONNX Runtime int8 graphs"] = sum((folder / "onnx" / name).stat().st_size
                                                for name in manifest["files"] if name.endswith(".int8.onnx"))
        speeds = {label: [] for label in labels}
        hypotheses = {}
        for repeat in range(args.repeats):
            for label in labels:
                print(f"== {label}, run {repeat + 1}/{args.repeats}", flush=True)
                result = measured(label, folder, args)
                speeds[label].append(result["sent_per_s"])
                hypotheses[label] = result["outputs"]

    rows = {}
    for label in labels:
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
        "at a time, every configuration timed in turn, each in a fresh process (after loading and 5 sentences of "
        f"warm-up), repeat after repeat (median of {args.repeats}); sacreBLEU against the detokenized references "
        "of those sentences.\n\n" + table + f"\nMachine: {result['machine']}\n")
    print(table)


if __name__ == "__main__":
    main()
